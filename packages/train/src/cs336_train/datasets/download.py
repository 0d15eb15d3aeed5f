"""Download the course datasets: TinyStories V2 and the CS336 OpenWebText sample, verified byte for byte.

    >>> from cs336_train.datasets.download import download_dataset
    >>> download_dataset("tinystories", "data")      # doctest: +SKIP
    [PosixPath('data/TinyStoriesV2-GPT4-train.txt'), PosixPath('data/TinyStoriesV2-GPT4-valid.txt')]

Files are multi-gigabyte, networks drop and mirrors can serve other bytes, so each file travels like this:

1. What the file must be is known before any byte moves: its size and SHA-256 are pinned in `PINNED` (copied
   from the dataset's page on Hugging Face), and the server may announce them too (Hugging Face's answer carries
   X-Linked-Size and X-Linked-Etag, the LFS file's SHA-256). Where both are known they must agree; where neither
   gives a SHA-256 the download is refused, because it could not be verified.
2. If the final file already exists, it is checked before we call it "already downloaded": its size always, its
   SHA-256 unless `<file>.sha256` shows this hash was verified after the file's last change (re-runs need not
   rehash gigabytes). A file that fails is left where it is (it may be the user's) and reported.
3. Bytes stream into `<file>.part`. If a `.part` is already there (an earlier download was interrupted), we ask
   the server for the rest only, with an HTTP Range request (`Range: bytes=N-`). A server answering
   206 Partial Content sends just those bytes and we append them; one answering 200 ignored the Range and sends
   the whole file, so we start the `.part` over. A connection lost mid-file is retried the same way.
4. The complete `.part` is checked: its size, then the SHA-256 of every byte on disk (a resumed file's earlier
   bytes too). Bytes that fail are moved to `<file>.rejected`, never deleted and never under the final name.
5. The verified `.part` is flushed to disk and renamed to the final name (atomic: nobody ever sees half a file
   there), and `<file>.sha256` records its hash in sha256sum's format (`sha256sum -c data/*.sha256` works too).
6. A `.gz` is verified as downloaded (the hub publishes the hash of the compressed file), then decompressed the
   same way: into a temporary file renamed when complete (gzip's own CRC-32 guards this step), with a `.sha256`
   record of the text; then the `.gz` goes.

Only the standard library is used (urllib.request, hashlib); click only draws the progress bars.
"""

import contextlib
import errno
import gzip
import hashlib
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlsplit

import click

from cs336_bpe import ensure_writable_directory
from cs336_train.errors import TrainError

USER_AGENT = "cs336-train (python urllib)"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
# For time estimates only: what a download takes is mostly the line's speed, and 10 MB/s is a common one.
TYPICAL_BYTES_PER_S = 10e6
# Seconds to wait before retry k (1, 2, 3 ...) is RETRY_DELAY_S * 2**(k-1); tests set it to 0.
RETRY_DELAY_S = 2.0


class DownloadError(TrainError):
    """A download failed or did not verify. The message says what went wrong and what to do; a partial `.part`
    file is kept whenever running the same command again can resume it, and refused bytes are kept as
    `<file>.rejected`."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it lives and which split it is. Its size and SHA-256 are in `PINNED`."""

    url: str
    split: str  # "train" or "valid"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def compressed(self) -> bool:
        return self.filename.endswith(".gz")

    @property
    def local_name(self) -> str:
        """The name of the finished file on disk (decompressed when the download is a .gz)."""
        return self.filename.removesuffix(".gz")


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    files: tuple[RemoteFile, ...]


_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
_OWT = "https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main"

DATASETS: dict[str, Dataset] = {
    dataset.name: dataset
    for dataset in (
        Dataset(
            "tinystories",
            "TinyStories V2 (GPT-4 stories): about 2.1 GB train, 22 MB validation",
            (
                RemoteFile(f"{_TINYSTORIES}/TinyStoriesV2-GPT4-train.txt", "train"),
                RemoteFile(f"{_TINYSTORIES}/TinyStoriesV2-GPT4-valid.txt", "valid"),
            ),
        ),
        Dataset(
            "owt",
            "the CS336 OpenWebText sample: about 11 GB train, 0.3 GB validation once decompressed",
            (
                RemoteFile(f"{_OWT}/owt_train.txt.gz", "train"),
                RemoteFile(f"{_OWT}/owt_valid.txt.gz", "valid"),
            ),
        ),
    )
}


@dataclass(frozen=True)
class Pin:
    """The published size (bytes) and SHA-256 (hex) of one downloaded file; None where nobody published it, in
    which case the server's X-Linked-Size / X-Linked-Etag are used."""

    size: int | None
    sha256: str | None


# The published size and SHA-256 of every file in DATASETS, keyed by file name. For a .gz they are those of the
# compressed download (what the hub publishes). Hugging Face stores these files with Git LFS, whose pointer
# states the SHA-256 and size; the file pages show it under "Git LFS Details". Sources:
PINNED: dict[str, Pin] = {
    # SHA-256: huggingface.co/datasets/roneneldan/TinyStories/blob/f54c09fd23315a6f9c86f9dc80f725de7d8f9c64/
    # TinyStoriesV2-GPT4-train.txt (uploaded in commit b7f09a3, unchanged since). That page rounds the size to
    # "2.23 GB"; the exact size is the one public CS336 write-ups quote next to this same SHA-256 from their own
    # `sha256sum` of the download. A mirror announcing another size is refused before any byte moves.
    "TinyStoriesV2-GPT4-train.txt": Pin(
        2_227_753_162, "6418d412de72888f52b5142c761ac21a582f7d1166f0bfbdb5f03ccfdec90443"),
    # SHA-256: huggingface.co/datasets/roneneldan/TinyStories/blob/6d02f92396f7e3e60c2251070b6e0b168568074b/
    # TinyStoriesV2-GPT4-valid.txt (same upload, b7f09a3). Size: 22,502,601 bytes, the value this registry
    # already had, which the same write-ups quote next to this SHA-256 (the page shows "22.5 MB").
    "TinyStoriesV2-GPT4-valid.txt": Pin(
        22_502_601, "6874bae9a4c1a4e7edcf0e53b86c17817e9cf881fc75ff2368da457b80c0585d"),
    # Both from the LFS pointers (oid sha256 and size) in the commit that added the files:
    # huggingface.co/datasets/stanford-cs336/owt-sample/commit/86886dcee6d92159ca7538222a8c7ff4c79aa336
    # (a public CS336 write-up's `sha256sum` of its downloaded .gz files printed the same two hashes).
    "owt_train.txt.gz": Pin(
        4_591_240_837, "b19ae88cfbc4016b304c348522455fe38ebac48fffed955adcc7191a89e38ccf"),
    "owt_valid.txt.gz": Pin(
        111_785_382, "bc73db5da2f19c360836b9c8a88094e13346ec83798c2f40060be39135768c80"),
}


@dataclass(frozen=True)
class Expected:
    """What a download must turn out to be. A value is None until known; `sha256_from` says who stated the hash
    (printed when it does not match, so the user knows whom to doubt)."""

    size: int | None = None
    sha256: str | None = None
    sha256_from: str = "pinned in cs336-train"


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def download_dataset(
    name: str,
    dest_dir: str | os.PathLike,
    *,
    splits: Iterable[str] | None = None,
    base_url: str | None = None,
    progress: bool = True,
    retries: int = 3,
    log: Callable[[str], None] = _print_to_stderr,
) -> list[Path]:
    """Download dataset `name` ("tinystories" or "owt") into `dest_dir`; return the paths of its text files.

    splits:   only these splits ("train", "valid"); default all. The OWT train split is 11 GB, so
              `splits=["valid"]` is a quick way to try things.
    base_url: replaces scheme and host of every URL (the path is kept), for a mirror such as
              "https://hf-mirror.com" or a local test server.
    retries:  how many times a dropped connection is resumed automatically before giving up.
    log:      where one-line status messages go (stderr by default).

    Every file is verified against its pinned size and SHA-256 (see `PINNED`). Files already in `dest_dir` are
    verified, not downloaded again, and an interrupted download (a lost connection, Ctrl-C, a full disk)
    continues where it stopped when run again. Raises DownloadError saying what to do.
    """
    files = selected_files(name, splits)
    dest_dir = ensure_writable_directory(dest_dir, DownloadError)
    paths = []
    for file in files:
        url = _with_base_url(file.url, base_url)
        pin = PINNED.get(file.filename, Pin(None, None))
        expected = Expected(pin.size, pin.sha256)
        final = dest_dir / file.local_name
        if file.compressed:
            paths.append(_download_gzip(url, dest_dir / file.filename, final, expected, progress, retries, log))
        else:
            paths.append(_download(url, final, expected, progress, retries, log))
    return paths


def selected_files(name: str, splits: Iterable[str] | None = None) -> tuple[RemoteFile, ...]:
    """The files of dataset `name`, only those of `splits` when given; unknown names are a DownloadError."""
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    files = DATASETS[name].files
    if splits is not None:
        wanted = set(splits)
        known = {file.split for file in files}
        if not wanted or not wanted <= known:
            raise DownloadError(
                f"unknown split(s) {sorted(wanted - known) or '(none given)'} for {name!r}; "
                f"choose from: {', '.join(sorted(known))}"
            )
        files = tuple(file for file in files if file.split in wanted)
    return files


def describe_download(name: str, dest_dir: str | os.PathLike, splits: Iterable[str] | None = None) -> str:
    """One line to say before a download starts: what, how much is left to fetch, and about how long it takes.

    >>> describe_download("tinystories", "data")        # doctest: +SKIP
    'TinyStories V2 (GPT-4 stories) into data/: 2,250.3 MB to fetch, about 4 minutes at 10 MB/s (a 100 Mbit/s line)'
    """
    files = selected_files(name, splits)
    dest_dir = Path(dest_dir)
    remaining = 0
    for file in files:
        if (dest_dir / file.local_name).exists():
            continue  # already there: it is verified, not fetched
        pinned = PINNED.get(file.filename, Pin(None, None)).size or 0
        remaining += max(0, pinned - _size_or_zero(dest_dir / (file.filename + ".part")))
    what = f"{DATASETS[name].description.split(':')[0]} into {dest_dir}/"
    if remaining == 0:
        return f"{what}: already downloaded, to be verified"
    unpack = "; then decompressed" if any(file.compressed for file in files) else ""
    return (f"{what}: {_megabytes(remaining)} to fetch, {_duration(remaining / TYPICAL_BYTES_PER_S)} at "
            f"{TYPICAL_BYTES_PER_S / 1e6:.0f} MB/s (a 100 Mbit/s line){unpack}")


def next_command(name: str, dest_dir: str | os.PathLike) -> str:
    """The command that trains on a downloaded dataset (it checks the files and downloads nothing again)."""
    data_dir = "" if Path(dest_dir) == Path("data") else f" --data-dir {dest_dir}"
    return f"cs336-train pipeline --dataset {name}{data_dir}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} minutes"
    return f"about {seconds / 3600:.1f} hours"


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
    retries: int = 3,
    log: Callable[[str], None] = _print_to_stderr,
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming a `.part` left by an earlier attempt.

    `dest` appears only once all bytes are there and they have `expected_size` bytes and SHA-256
    `expected_sha256`, where given, and what the server announces (X-Linked-Size, X-Linked-Etag). With no
    SHA-256 from either, nothing is downloaded: a file that cannot be verified is refused. An existing `dest` is
    verified, not downloaded again.
    """
    if retries < 0:
        raise DownloadError(f"retries must be 0 or more, got {retries}")
    if expected_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256):
        raise DownloadError(f"expected_sha256 must be 64 hexadecimal digits, got {expected_sha256!r}")
    expected = Expected(expected_size, expected_sha256.lower() if expected_sha256 else None)
    return _download(url, Path(dest), expected, progress, retries, log)


def _download(url: str, dest: Path, expected: Expected, progress: bool, retries: int, log) -> Path:
    """download_file's work: fetch into `dest.part` (retrying lost connections), verify, rename, record."""
    if dest.exists():
        _verify_existing(dest, expected, progress, log)
        return dest
    ensure_writable_directory(dest.parent, DownloadError)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            expected = _fetch_into_part(url, part, expected, progress, log)
            break
        except _ConnectionLost as lost:
            have = _megabytes(_size_or_zero(part))
            if attempt == retries:
                raise DownloadError(
                    f"the connection to {url} was lost after {have} ({lost}); the partial file {part} is kept: "
                    f"run the same command again to resume where it stopped"
                ) from lost
            delay = RETRY_DELAY_S * 2**attempt
            log(f"{dest.name}: connection lost after {have} ({lost}); resuming in {delay:.0f} s "
                f"(retry {attempt + 1} of {retries})")
            time.sleep(delay)

    sha256 = _verify_part(url, part, dest, expected, progress)
    os.replace(part, dest)
    _write_record(dest, sha256)
    log(f"{dest.name}: done ({_megabytes(dest.stat().st_size)}, SHA-256 verified)")
    return dest


def _download_gzip(url: str, archive: Path, final: Path, expected: Expected, progress: bool, retries: int,
                   log) -> Path:
    """A `.gz`: the hub publishes the SHA-256 of the compressed file, so that is what is verified (as it arrives,
    or when it is already there); the text is then decompressed, with a `.sha256` record of its own."""
    if final.exists():
        _verify_existing(final, Expected(), progress, log,
                         advice=f"the published SHA-256 is that of {archive.name}: put {archive.name} there "
                                f"instead of {final.name}, or move {final.name} away, and run again")
        return final
    _download(url, archive, expected, progress, retries, log)
    return decompress_gzip(archive, final, progress=progress, log=log, record_sha256=True)


class _ConnectionLost(Exception):
    """A failure that resuming may fix: dropped connection, timeout, a server error (5xx)."""


class _RedirectRecorder(urllib.request.HTTPRedirectHandler):
    """urllib's usual redirect handling, keeping the headers of every redirect on the way.

    Hugging Face answers `.../resolve/main/FILE` with a redirect to its CDN, and it is that redirect which states
    the LFS file's SHA-256 (X-Linked-Etag) and size (X-Linked-Size); urllib would follow it without a trace."""

    def __init__(self):
        super().__init__()
        self.headers_seen = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers_seen.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_into_part(url: str, part: Path, expected: Expected, progress: bool, log) -> Expected:
    """One HTTP request appending to `part` whatever the file still lacks. Returns `expected` completed with what
    the server announced (size, SHA-256). Raises _ConnectionLost for what a retry may fix, DownloadError
    otherwise: a server contradicting the pinned values, or giving no SHA-256 when none is pinned, is refused
    before a byte is written."""
    offset = _size_or_zero(part)
    if expected.size is not None and offset >= expected.size:
        if offset == expected.size and expected.sha256:
            return expected  # all bytes arrived last time; only the check and the rename were missing
        if offset > expected.size:
            part.unlink()  # longer than the file can be: not ours to trust
            offset = 0

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    redirects = _RedirectRecorder()
    try:
        response = urllib.request.build_opener(redirects).open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # "Range Not Satisfiable": we asked for bytes past the end. Either the .part is already complete,
            # or it is longer than the file (the file changed upstream): keep it, or start over.
            total = _total_from_content_range(error.headers.get("Content-Range", ""))
            if total == offset:
                return _with_server_claims(url, expected, [*redirects.headers_seen, error.headers])
            part.unlink()
            raise _ConnectionLost("the partial file did not match the server's file, starting over") from error
        if error.code in (408, 429) or error.code >= 500:
            raise _ConnectionLost(f"HTTP {error.code} {error.reason}") from error
        raise DownloadError(_http_error_message(url, error)) from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise _ConnectionLost("timed out while connecting") from error
        raise DownloadError(_unreachable_message(url, part, error.reason)) from error
    except (HTTPException, ConnectionError, TimeoutError) as error:
        raise _ConnectionLost(f"{type(error).__name__}: {error}") from error

    with response:
        expected = _with_server_claims(url, expected, [*redirects.headers_seen, response.headers])
        if expected.sha256 is None:
            raise DownloadError(_unverifiable_message(url))
        if offset and response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink()
                raise _ConnectionLost(f"the server resumed at byte {start}, not {offset}; starting over")
            log(f"{part.name}: resuming at {_megabytes(offset)}")
        else:
            if offset:
                log(f"{part.name}: the server ignored the resume request (answered {response.status}, not 206); "
                    f"downloading from the start")
                offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None

        if total is not None:
            _check_size(url, total, expected.size, what="announced by the server")
            _check_free_space(part, total - offset)
        _stream(response, part, offset, total, progress)

    size = part.stat().st_size
    if total is not None and size < total:
        raise _ConnectionLost(f"the server closed the connection at {_megabytes(size)} of {_megabytes(total)}")
    return expected


def _stream(response, part: Path, offset: int, total: int | None, progress: bool) -> None:
    """Copy the response body to `part` (appending after `offset` bytes, or from scratch), with a progress bar."""
    bar = click.progressbar(
        length=total or 1,
        label=part.name.removesuffix(".part"),
        hidden=not progress or total is None,
        file=sys.stderr,
        item_show_func=lambda done: None if done is None else f"{_megabytes(done)} of {_megabytes(total or 0)}",
    )
    done = offset
    with open(part, "ab" if offset else "wb") as sink, bar:
        bar.update(offset, done)
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (HTTPException, ConnectionError, TimeoutError) as error:
                _flush(sink, part)
                raise _ConnectionLost(f"{type(error).__name__}: {error}") from error
            if not chunk:
                break
            try:
                sink.write(chunk)
            except OSError as error:
                raise _disk_error(error, part) from error
            done += len(chunk)
            bar.update(len(chunk), done)
        _flush(sink, part)


def _flush(sink, part: Path) -> None:
    """Push written bytes to the disk, so that a resumed download trusts only bytes that really are there."""
    try:
        sink.flush()
        os.fsync(sink.fileno())
    except OSError as error:
        raise _disk_error(error, part) from error


def decompress_gzip(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    progress: bool = True,
    log: Callable[[str], None] = _print_to_stderr,
    remove_archive: bool = True,
    record_sha256: bool = False,
) -> Path:
    """Decompress `archive` (.gz) to `dest` through a temporary file renamed when complete; then remove the
    archive (unless `remove_archive` is False). On failure the archive is kept and no `dest` appears.

    gzip checks the CRC-32 and length stored at the end of the archive, so a damaged archive fails here. With
    `record_sha256` (for an archive that was verified), the SHA-256 of the text, computed as it is written, is
    recorded in `dest.sha256`: the proof a later run checks instead of the published hash, which covers the .gz.
    """
    archive, dest = Path(archive), Path(dest)
    temporary = dest.with_name(dest.name + ".decompressing")
    digest = hashlib.sha256()
    bar = _file_progress_bar(archive, f"decompressing {archive.name}", progress)
    try:
        with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw) as reader, open(temporary, "wb") as writer, bar:
            position = 0
            while True:
                try:
                    chunk = reader.read(CHUNK_BYTES)
                except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
                    raise DownloadError(
                        f"{archive} is not a valid gzip file ({error}); delete it and run the download again"
                    ) from error
                if not chunk:
                    break
                try:
                    writer.write(chunk)
                except OSError as error:
                    raise _disk_error(error, temporary, keep=f"the downloaded {archive.name} is kept") from error
                digest.update(chunk)
                bar.update(raw.tell() - position)
                position = raw.tell()
            _flush(writer, temporary)
        os.replace(temporary, dest)
    except BaseException:
        # BaseException on purpose: Ctrl-C must not leave a half-decompressed file behind either.
        temporary.unlink(missing_ok=True)
        raise
    if record_sha256:
        _write_record(dest, digest.hexdigest())
    if remove_archive:
        archive.unlink()
        _record_path(archive).unlink(missing_ok=True)
    log(f"{dest.name}: done ({_megabytes(dest.stat().st_size)} decompressed)")
    return dest


# --- verification -------------------------------------------------------------------------------------------


def _with_server_claims(url: str, expected: Expected, headers_seen: list) -> Expected:
    """Complete `expected` with the size and SHA-256 the server announces; where both are known they must agree.

    Hugging Face states an LFS file's SHA-256 in X-Linked-Etag (quoted, "<64 hex digits>") and its size in
    X-Linked-Size, on the redirect that answers a download (see _RedirectRecorder). Other servers may send
    neither: then only the pinned values count.
    """
    server_sha256 = server_size = None
    for headers in headers_seen:
        etag = (headers.get("X-Linked-Etag") or "").removeprefix("W/").strip('" ').lower()
        if re.fullmatch(r"[0-9a-f]{64}", etag):
            server_sha256 = etag
        linked_size = (headers.get("X-Linked-Size") or "").strip()
        if linked_size.isdigit():
            server_size = int(linked_size)
    if server_size is not None:
        _check_size(url, server_size, expected.size, what="announced by the server (X-Linked-Size)")
    if server_sha256 and expected.sha256 and server_sha256 != expected.sha256:
        raise DownloadError(
            f"SHA-256 mismatch for {url}: the server announces {server_sha256} (X-Linked-Etag), but this file's "
            f"is {expected.sha256} ({expected.sha256_from}); nothing was downloaded. The file changed upstream or "
            f"the mirror serves a different file; check the URL (or --base-url) and report it if the upstream "
            f"file really changed"
        )
    if expected.sha256 is None and server_sha256:
        expected = Expected(expected.size, server_sha256, "announced by the server (X-Linked-Etag)")
    if expected.size is None and server_size is not None:
        expected = Expected(server_size, expected.sha256, expected.sha256_from)
    return expected


def _verify_part(url: str, part: Path, dest: Path, expected: Expected, progress: bool) -> str:
    """Check a complete `.part` before it takes the final name: its size, then the SHA-256 of every byte on disk
    (so a resumed download's earlier bytes are checked with the new ones). Returns the SHA-256.

    Bytes that fail are moved to `<dest>.rejected`, never deleted (the user may want to look at them) and never
    left under the final name (nothing downstream should train on them)."""
    if expected.sha256 is None:
        raise DownloadError(_unverifiable_message(url))
    size = part.stat().st_size
    if expected.size is not None and size != expected.size:
        kept = _set_aside(part, dest)
        raise DownloadError(
            f"{dest.name} refused: {size:,} bytes arrived from {url}, but the file has {expected.size:,} bytes; "
            f"the received bytes are kept in {kept}. Run the same command again to download afresh; if it "
            f"happens again, check the URL (or --base-url)"
        )
    actual = _sha256_of(part, progress)
    if actual != expected.sha256:
        kept = _set_aside(part, dest)
        raise DownloadError(
            f"{dest.name} refused: the bytes from {url} have SHA-256 {actual}, but the file's is "
            f"{expected.sha256} ({expected.sha256_from}); the received bytes are kept in {kept}. Run the same "
            f"command again to download afresh; if it happens again, the mirror (--base-url) or the upstream "
            f"file differs: report it"
        )
    return actual


def _verify_existing(path: Path, expected: Expected, progress: bool, log, advice: str | None = None) -> None:
    """Check a file already under its final name before reporting it "already downloaded".

    The size is always checked (cheap). The SHA-256 is checked too, unless `<file>.sha256` records that very
    hash and was written after the file last changed: then the file was verified before and not touched since,
    and a re-run need not read gigabytes again. A file that fails is left where it is (it may be the user's own
    copy) and DownloadError says what to do; `advice` replaces the advice when no hash is known at all.
    """
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise DownloadError(
            f"{path} is already there but has {size:,} bytes, not the {expected.size:,} of the published file; "
            f"move it away (or delete it) and run again to download the original"
        )
    recorded = _read_record(path)
    wanted = expected.sha256 or recorded
    wanted_from = expected.sha256_from if expected.sha256 else f"recorded in {_record_path(path).name}"
    if wanted is None:
        raise DownloadError(
            f"{path} is already there but cannot be verified: no SHA-256 is known for it and no "
            f"{_record_path(path).name} records an earlier verification; "
            + (advice or "move it away (or delete it) and run again to download and verify it")
        )
    if recorded == wanted and _record_is_current(path):
        log(f"{path.name}: already downloaded ({path}, {_megabytes(size)}, verified before), skipping")
        return
    actual = _sha256_of(path, progress)
    if actual != wanted:
        raise DownloadError(
            f"{path} is already there but is not the published file: its SHA-256 is {actual}, not {wanted} "
            f"({wanted_from}); move it away (or delete it) and run again to download the original"
        )
    _write_record(path, actual)
    log(f"{path.name}: already downloaded ({path}, {_megabytes(size)}, SHA-256 verified), skipping")


def _file_progress_bar(path: Path, label: str, progress: bool):
    """A progress bar over the bytes of `path` (on stderr; hidden when `progress` is off)."""
    return click.progressbar(length=max(path.stat().st_size, 1), label=label, hidden=not progress, file=sys.stderr)


def _sha256_of(path: Path, progress: bool) -> str:
    """The SHA-256 of a file, read back from disk in chunks, with a progress bar (4.6 GB take a while)."""
    digest = hashlib.sha256()
    bar = _file_progress_bar(path, f"verifying {path.name.removesuffix('.part')}", progress)
    with open(path, "rb") as source, bar:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _set_aside(path: Path, final: Path) -> Path:
    """Move refused bytes to `<final>.rejected` (or `.rejected-2`, `-3` ... when taken) and return that path."""
    kept = final.with_name(final.name + ".rejected")
    number = 1
    while kept.exists():
        number += 1
        kept = final.with_name(f"{final.name}.rejected-{number}")
    os.replace(path, kept)
    return kept


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_record(path: Path, sha256: str) -> None:
    """Write `<path>.sha256`: "<hash>  <name>", the format of sha256sum, so `sha256sum -c` can check it too."""
    with contextlib.suppress(OSError):  # the record only spares a later run the rehashing; that is all
        _record_path(path).write_text(f"{sha256}  {path.name}\n")


def _read_record(path: Path) -> str | None:
    """The SHA-256 recorded for `path` in `<path>.sha256`, or None if there is no well-formed record for it."""
    try:
        text = _record_path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    match = re.fullmatch(r"([0-9a-f]{64})  (.+)\n?", text)
    return match.group(1) if match and match.group(2) == path.name else None


def _record_is_current(path: Path) -> bool:
    """Whether `<path>.sha256` was written after `path` last changed. The file's ctime (inode change time) moves
    on every write, truncation or rename onto it and cannot be set back by hand, unlike its mtime."""
    try:
        return _record_path(path).stat().st_mtime_ns >= path.stat().st_ctime_ns
    except OSError:
        return False


def _unverifiable_message(url: str) -> str:
    return (
        f"cannot verify {url}: no SHA-256 is pinned for it and the server announced none (Hugging Face sends "
        f"X-Linked-Etag for its large files; this server did not), so nothing was downloaded. Pass the file's "
        f"SHA-256 (download_file(..., expected_sha256=...)) or download from a server that states it"
    )


# --- small helpers --------------------------------------------------------------------------------------------


def _with_base_url(url: str, base_url: str | None) -> str:
    """Swap the scheme and host of `url` for `base_url` (which may carry a path prefix); keep the path."""
    if base_url is None:
        return url
    original = urlsplit(url)
    query = f"?{original.query}" if original.query else ""
    return base_url.rstrip("/") + original.path + query


def _parse_content_range(header: str) -> tuple[int, int | None]:
    """'bytes 100-999/1000' -> (100, 1000); the total may be '*' (unknown) -> None."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", header)
    if not match:
        raise _ConnectionLost(f"the server sent a malformed Content-Range {header!r}")
    start, total = match.groups()
    return int(start), None if total == "*" else int(total)


def _total_from_content_range(header: str) -> int | None:
    """'bytes */1000' (how a 416 answer states the size) -> 1000."""
    match = re.search(r"/(\d+)\s*$", header)
    return int(match.group(1)) if match else None


def _check_size(url: str, size: int, expected_size: int | None, what: str) -> None:
    """Refuse a file whose announced size is not the expected one, before any of its bytes are written."""
    if expected_size is not None and size != expected_size:
        raise DownloadError(
            f"size mismatch for {url}: {size:,} bytes {what}, but this file should have {expected_size:,} bytes; "
            f"nothing was downloaded. The file changed upstream or the mirror serves a different file; check the "
            f"URL (or --base-url) and report it if the upstream file really changed"
        )


def _check_free_space(part: Path, needed: int) -> None:
    free = shutil.disk_usage(part.parent).free
    if needed > free:
        raise DownloadError(
            f"not enough disk space for {part.name.removesuffix('.part')}: it needs {_megabytes(needed)} more "
            f"but {part.parent} has {_megabytes(free)} free; free some space or choose another directory"
        )


def _disk_error(error: OSError, path: Path, keep: str | None = None) -> DownloadError:
    keep = keep or f"the partial file {path} is kept"
    if error.errno == errno.ENOSPC:
        return DownloadError(
            f"the disk is full while writing {path} ({_megabytes(_size_or_zero(path))} written); {keep}: "
            f"free some space and run the same command again to continue"
        )
    return DownloadError(f"cannot write {path}: {error.strerror or error}; {keep}")


def _http_error_message(url: str, error: urllib.error.HTTPError) -> str:
    if error.code == 404:
        advice = "the file is not there (HTTP 404 Not Found): check the URL, or the mirror given as --base-url"
    elif error.code in (401, 403):
        advice = (f"access was refused (HTTP {error.code}); these datasets are public, so a proxy or firewall "
                  f"may be blocking huggingface.co")
    else:
        advice = f"the server answered HTTP {error.code} {error.reason}"
    return f"cannot download {url}: {advice}"


def _unreachable_message(url: str, part: Path, reason: object) -> str:
    host = urlsplit(url).netloc
    final = part.with_name(part.name.removesuffix(".part"))
    decompressed = f" (or its decompressed {final.name.removesuffix('.gz')})" if final.suffix == ".gz" else ""
    return (
        f"cannot reach {host} to download {url} ({reason}). This machine may be offline or need a proxy "
        f"(set HTTPS_PROXY). Alternatively download the file on another machine and place it by hand at "
        f"{final}{decompressed}: files already there are not downloaded again"
    )


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"
