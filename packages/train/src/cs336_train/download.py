"""Download the course datasets: TinyStories V2 and the CS336 OpenWebText sample.

    >>> from cs336_train.download import download_dataset
    >>> download_dataset("tinystories", "data")      # doctest: +SKIP
    [PosixPath('data/TinyStoriesV2-GPT4-train.txt'), PosixPath('data/TinyStoriesV2-GPT4-valid.txt')]

Files are multi-gigabyte and networks drop, so each file travels like this:

1. If the final file already exists, we are done ("already downloaded"): files only ever appear complete
   (step 4), so existing means complete.
2. Bytes stream into `<file>.part`. If a `.part` is already there (an earlier download was interrupted), we ask
   the server for the rest only, with an HTTP Range request (`Range: bytes=N-`). A server answering
   206 Partial Content sends just those bytes and we append them; one answering 200 ignored the Range and sends
   the whole file, so we start the `.part` over. A connection lost mid-file is retried the same way.
3. The size is checked against what the server announced (Content-Length, or the total in Content-Range) and
   against the size our registry expects, when we know it.
4. The `.part` is flushed to disk and renamed to the final name. A rename is atomic, so nobody ever sees half
   a file under the final name.
5. A `.gz` is decompressed the same way (into a temporary file, renamed when complete); then the `.gz` goes.

Only the standard library is used (urllib.request); click only draws the progress bars.
"""

import errno
import gzip
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

from cs336_train.errors import TrainError

USER_AGENT = "cs336-train (python urllib)"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
# Seconds to wait before retry k (1, 2, 3 ...) is RETRY_DELAY_S * 2**(k-1); tests set it to 0.
RETRY_DELAY_S = 2.0


class DownloadError(TrainError):
    """A download failed. The message says what went wrong and what to do; a partial `.part` file is kept
    whenever running the same command again can resume it."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it lives and, when known, how many bytes it has there."""

    url: str
    split: str  # "train" or "valid"
    size: int | None = None  # bytes of the file at `url`; None: trust the server's Content-Length

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
                RemoteFile(f"{_TINYSTORIES}/TinyStoriesV2-GPT4-valid.txt", "valid", size=22_502_601),
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

    Files already in `dest_dir` are not downloaded again, and an interrupted download (a lost connection,
    Ctrl-C, a full disk) continues where it stopped when run again. Raises DownloadError saying what to do.
    """
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

    dest_dir = _writable_directory(dest_dir)
    paths = []
    for file in files:
        final = dest_dir / file.local_name
        if final.exists():
            size = final.stat().st_size
            log(f"{final.name}: already downloaded ({final}, {_megabytes(size)}), skipping")
            if file.size is not None and not file.compressed and size != file.size:
                log(f"{final.name}: warning: it has {size:,} bytes, not the {file.size:,} of the original; "
                    f"if it was not meant to differ, delete it and run again to download it afresh")
            paths.append(final)
            continue
        url = _with_base_url(file.url, base_url)
        if file.compressed:
            archive = dest_dir / file.filename
            if archive.exists():
                log(f"{archive.name}: already downloaded, decompressing")
            else:
                download_file(url, archive, expected_size=file.size, progress=progress, retries=retries, log=log)
            paths.append(decompress_gzip(archive, final, progress=progress, log=log))
        else:
            paths.append(
                download_file(url, final, expected_size=file.size, progress=progress, retries=retries, log=log)
            )
    return paths


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    progress: bool = True,
    retries: int = 3,
    log: Callable[[str], None] = _print_to_stderr,
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming a `.part` left by an earlier attempt.

    `dest` appears only once all bytes are there and the size matches the server's and `expected_size`.
    An existing `dest` is returned as it is.
    """
    if retries < 0:
        raise DownloadError(f"retries must be 0 or more, got {retries}")
    dest = Path(dest)
    if dest.exists():
        log(f"{dest.name}: already downloaded ({dest}), skipping")
        return dest
    _writable_directory(dest.parent)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            total = _fetch_into_part(url, part, expected_size, progress, log)
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

    size = part.stat().st_size
    if total is None:
        log(f"{dest.name}: the server did not say how big the file is; got {_megabytes(size)}, size not verified")
    _check_size(url, part, size, expected_size, what="downloaded")
    os.replace(part, dest)
    log(f"{dest.name}: done ({_megabytes(size)})")
    return dest


class _ConnectionLost(Exception):
    """A failure that resuming may fix: dropped connection, timeout, a server error (5xx)."""


def _fetch_into_part(url: str, part: Path, expected_size: int | None, progress: bool, log) -> int | None:
    """One HTTP request appending to `part` whatever the file still lacks. Returns the file's total size if the
    server told us (None otherwise). Raises _ConnectionLost for what a retry may fix, DownloadError otherwise."""
    offset = _size_or_zero(part)
    if expected_size is not None and offset >= expected_size:
        if offset == expected_size:
            return expected_size  # all bytes arrived last time; only the rename was missing
        part.unlink()  # longer than the file can be: not ours to trust
        offset = 0

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # "Range Not Satisfiable": we asked for bytes past the end. Either the .part is already complete,
            # or it is longer than the file (the file changed upstream): keep it, or start over.
            total = _total_from_content_range(error.headers.get("Content-Range", ""))
            if total == offset:
                return total
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
            _check_size(url, part, total, expected_size, what="announced by the server")
            _check_free_space(part, total - offset)
        _stream(response, part, offset, total, progress)

    size = part.stat().st_size
    if total is not None and size < total:
        raise _ConnectionLost(f"the server closed the connection at {_megabytes(size)} of {_megabytes(total)}")
    return total


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
) -> Path:
    """Decompress `archive` (.gz) to `dest` through a temporary file renamed when complete; then remove the
    archive (unless `remove_archive` is False). On failure the archive is kept and no `dest` appears."""
    archive, dest = Path(archive), Path(dest)
    temporary = dest.with_name(dest.name + ".decompressing")
    bar = click.progressbar(
        length=max(archive.stat().st_size, 1),
        label=f"decompressing {archive.name}",
        hidden=not progress,
        file=sys.stderr,
    )
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
                bar.update(raw.tell() - position)
                position = raw.tell()
            _flush(writer, temporary)
        os.replace(temporary, dest)
    except BaseException:
        # BaseException on purpose: Ctrl-C must not leave a half-decompressed file behind either.
        temporary.unlink(missing_ok=True)
        raise
    if remove_archive:
        archive.unlink()
    log(f"{dest.name}: done ({_megabytes(dest.stat().st_size)} decompressed)")
    return dest


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


def _check_size(url: str, part: Path, size: int, expected_size: int | None, what: str) -> None:
    if expected_size is not None and size != expected_size:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"size mismatch for {url}: {size:,} bytes {what}, but this file should have {expected_size:,} bytes. "
            f"The file changed upstream or the mirror serves a different file; check the URL (or --base-url) "
            f"and report it if the upstream file really changed"
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


def _writable_directory(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create directory {directory}: {error.strerror}; choose another") from error
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DownloadError(f"directory {directory} is not writable; choose another")
    return directory


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"
