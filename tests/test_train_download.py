"""cs336_train.datasets.download against a local HTTP server that can resume, ignore Range, drop connections and
404, and announce (or not, or falsely) the size and SHA-256 of its files the way Hugging Face does."""

import errno
import gzip
import hashlib
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from cs336_train.cli import main
from cs336_train.datasets import download
from cs336_train.datasets.download import DATASETS, DownloadError, decompress_gzip, download_dataset, download_file

TINYSTORIES_TRAIN = "/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt"
TINYSTORIES_VALID = "/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt"
OWT_TRAIN = "/datasets/stanford-cs336/owt-sample/resolve/main/owt_train.txt.gz"
OWT_VALID = "/datasets/stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz"
SMALL = "/data/small.txt"
# The table as shipped, kept before the `pinned` fixture below swaps it for the test files' values.
SHIPPED_PINS = getattr(download, "PINNED", None)


def _text(seed: int, size: int) -> bytes:
    """Deterministic, non-repeating-looking bytes, so a byte in the wrong place shows."""
    line = b"".join(b"story %d line %d <|endoftext|>\n" % (seed, i) for i in range(size // 20 + 1))
    return line[:size]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tampered(data: bytes) -> bytes:
    """The same number of bytes, one of them changed: only a hash tells them apart."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x20]) + data[middle + 1 :]


# What the server holds. gzip with mtime=0, so that the archives (and their SHA-256) are the same every run.
FILES = {
    SMALL: _text(1, 300_000),
    TINYSTORIES_TRAIN: _text(2, 50_000),
    TINYSTORIES_VALID: _text(6, 30_000),
    OWT_TRAIN: gzip.compress(_text(3, 80_000), mtime=0),
    OWT_VALID: gzip.compress(_text(4, 20_000), mtime=0),
}


class FakeServer:
    """Serves `files` (path -> bytes) with Range support; knobs make it misbehave the way real networks do."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header) of every GET
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before hanging up (once)
        self.ignore_range = False
        # Like Hugging Face, announce each file's SHA-256 and size in X-Linked-Etag / X-Linked-Size ...
        self.send_linked = True
        # ... on the redirect only (Hugging Face's CDN, where the redirect leads, does not repeat them) ...
        self.linked_only_on_redirect = False
        # ... stating these (sha256, size) instead of the true ones, for a path: a server that contradicts a pin.
        self.claims: dict[str, tuple[str, int]] = {}
        self.send_content_length = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def send_linked_headers(self, path):
                body = server.files.get(path)
                if server.send_linked and body is not None:
                    sha256, size = server.claims.get(path, (_sha256(body), len(body)))
                    self.send_header("X-Linked-Etag", f'"{sha256}"')
                    self.send_header("X-Linked-Size", str(size))

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/redirect"))
                    self.send_linked_headers(self.path.removeprefix("/redirect"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if requested and not server.ignore_range:
                    start = int(requested.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        if not server.linked_only_on_redirect:
                            self.send_linked_headers(self.path)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                if not server.linked_only_on_redirect:
                    self.send_linked_headers(self.path)
                if server.send_content_length:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                cut = server.drop_after.pop(self.path, None)
                # HTTP/1.0: returning closes the connection, so a cut-short body is a dropped connection.
                self.wfile.write(payload if cut is None else payload[:cut])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def ranges(self, path: str) -> list[str | None]:
        return [seen_range for seen_path, seen_range in self.requests if seen_path == path]


@pytest.fixture
def server():
    fake = FakeServer(FILES)
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)


@pytest.fixture(autouse=True)
def pinned(monkeypatch):
    """Pin the test files' sizes and SHA-256 in place of the real ones, as PINNED pins the course files."""
    table = {Path(path).name: download.Pin(len(body), _sha256(body)) for path, body in FILES.items() if path != SMALL}
    monkeypatch.setattr(download, "PINNED", table, raising=False)
    return table


def _quiet(messages: list[str]):
    return messages.append


def test_full_download_is_byte_identical_and_leaves_no_part_file(server, tmp_path):
    dest = tmp_path / "out" / "small.txt"
    messages: list[str] = []
    assert download_file(f"{server.url}/data/small.txt", dest, log=_quiet(messages)) == dest
    assert dest.read_bytes() == server.files["/data/small.txt"]
    assert not list(tmp_path.rglob("*.part"))
    assert server.ranges("/data/small.txt") == [None]
    assert "done" in messages[-1]


def test_redirects_are_followed_with_the_range_header_kept(server, tmp_path):
    dest = tmp_path / "small.txt"
    server.drop_after["/data/small.txt"] = 100_000
    download_file(f"{server.url}/redirect/data/small.txt", dest, retries=1, log=_quiet([]))
    assert dest.read_bytes() == server.files["/data/small.txt"]
    assert server.ranges("/data/small.txt") == [None, "bytes=100000-"]


def test_an_interrupted_download_keeps_its_part_and_resumes_without_refetching(server, tmp_path):
    url, dest = f"{server.url}/data/small.txt", tmp_path / "small.txt"
    server.drop_after["/data/small.txt"] = 123_456
    with pytest.raises(DownloadError, match=r"connection .* lost.*kept.*run the same command again to resume"):
        download_file(url, dest, retries=0, log=_quiet([]))
    part = tmp_path / "small.txt.part"
    assert not dest.exists()
    assert part.read_bytes() == server.files["/data/small.txt"][:123_456]

    messages: list[str] = []
    download_file(url, dest, retries=0, log=_quiet(messages))
    assert dest.read_bytes() == server.files["/data/small.txt"]
    # The second request asked only for the missing bytes.
    assert server.ranges("/data/small.txt") == [None, "bytes=123456-"]
    assert any("resuming at" in message for message in messages)


def test_a_dropped_connection_is_resumed_automatically(server, tmp_path):
    server.drop_after["/data/small.txt"] = 50_000
    messages: list[str] = []
    download_file(f"{server.url}/data/small.txt", tmp_path / "small.txt", retries=2, log=_quiet(messages))
    assert (tmp_path / "small.txt").read_bytes() == server.files["/data/small.txt"]
    assert server.ranges("/data/small.txt") == [None, "bytes=50000-"]
    assert any("retry 1 of 2" in message for message in messages)


def test_a_server_ignoring_range_restarts_the_file_from_scratch(server, tmp_path):
    body = server.files["/data/small.txt"]
    (tmp_path / "small.txt.part").write_bytes(body[:1000])
    server.ignore_range = True
    messages: list[str] = []
    download_file(f"{server.url}/data/small.txt", tmp_path / "small.txt", log=_quiet(messages))
    assert (tmp_path / "small.txt").read_bytes() == body  # not the first 1000 bytes twice
    assert server.ranges("/data/small.txt") == ["bytes=1000-"]
    assert any("ignored the resume request" in message for message in messages)


def test_a_part_file_that_is_already_complete_is_finished_without_a_transfer(server, tmp_path):
    body = server.files["/data/small.txt"]
    (tmp_path / "small.txt.part").write_bytes(body)
    download_file(f"{server.url}/data/small.txt", tmp_path / "small.txt", log=_quiet([]))
    assert (tmp_path / "small.txt").read_bytes() == body
    assert server.ranges("/data/small.txt") == [f"bytes={len(body)}-"]  # answered 416 with the total size


def test_a_size_different_from_the_expected_one_is_an_error_and_no_file_appears(server, tmp_path):
    size = len(server.files["/data/small.txt"])
    with pytest.raises(DownloadError, match=rf"size mismatch.*{size:,} bytes announced.*{size + 1:,} bytes"):
        download_file(f"{server.url}/data/small.txt", tmp_path / "small.txt", expected_size=size + 1, log=_quiet([]))
    assert list(tmp_path.iterdir()) == []


def test_a_file_already_there_is_not_downloaded_again(server, tmp_path):
    url, dest = f"{server.url}/data/small.txt", tmp_path / "small.txt"
    download_file(url, dest, log=_quiet([]))
    messages: list[str] = []
    download_file(url, dest, log=_quiet(messages))
    assert len(server.requests) == 1
    assert "already downloaded" in messages[0]


def test_404_names_the_url_and_what_to_check(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/data/missing\.txt.*404.*check the URL"):
        download_file(f"{server.url}/data/missing.txt", tmp_path / "missing.txt", log=_quiet([]))
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_host_says_offline_and_how_to_place_the_file_by_hand(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=r"cannot reach 127\.0\.0\.1.*offline.*place it by hand at .*a\.txt"):
        download_file(f"http://127.0.0.1:{port}/a.txt", tmp_path / "a.txt", log=_quiet([]))


def test_a_full_disk_keeps_the_part_file_for_resuming(server, tmp_path, monkeypatch):
    class FullDisk:
        """A file that accepts 2 chunks, then fails like a full disk."""

        def __init__(self, path, mode):
            self.file, self.chunks = open(path, mode), 0  # noqa: SIM115 (closed by __exit__)

        def write(self, data):
            if self.chunks == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.chunks += 1
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(download, "CHUNK_BYTES", 10_000)
    monkeypatch.setattr(download, "open", FullDisk, raising=False)
    with pytest.raises(DownloadError, match=r"disk is full.*small\.txt\.part.*kept.*free some space"):
        download_file(f"{server.url}/data/small.txt", tmp_path / "small.txt", log=_quiet([]))
    assert (tmp_path / "small.txt.part").stat().st_size == 20_000
    assert not (tmp_path / "small.txt").exists()


def test_not_enough_free_space_is_reported_before_downloading(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(DownloadError, match=r"not enough disk space.*small\.txt.*0\.3 MB"):
        download_file(f"{server.url}/data/small.txt", tmp_path / "small.txt", log=_quiet([]))


def test_owt_downloads_and_decompresses_each_gz_then_caches(server, tmp_path):
    messages: list[str] = []
    paths = download_dataset("owt", tmp_path, base_url=server.url, progress=False, log=_quiet(messages))
    assert paths == [tmp_path / "owt_train.txt", tmp_path / "owt_valid.txt"]
    assert paths[0].read_bytes() == _text(3, 80_000)
    assert paths[1].read_bytes() == _text(4, 20_000)
    # no .gz or temp; each text has its record of verification
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "owt_train.txt", "owt_train.txt.sha256", "owt_valid.txt", "owt_valid.txt.sha256"
    ]

    requests_before = len(server.requests)
    messages.clear()
    assert download_dataset("owt", tmp_path, base_url=server.url, log=_quiet(messages)) == paths
    assert len(server.requests) == requests_before
    assert all("already downloaded" in message for message in messages)


def test_a_dataset_split_and_a_base_url_with_a_path_prefix(server, tmp_path):
    server.files["/mirror" + TINYSTORIES_TRAIN] = server.files[TINYSTORIES_TRAIN]
    paths = download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url + "/mirror/",
                             log=_quiet([]))
    assert paths == [tmp_path / "TinyStoriesV2-GPT4-train.txt"]
    assert paths[0].read_bytes() == server.files[TINYSTORIES_TRAIN]


def test_a_downloaded_gz_whose_decompression_was_interrupted_is_not_downloaded_again(server, tmp_path):
    (tmp_path / "owt_valid.txt.gz").write_bytes(server.files[OWT_VALID])
    (tmp_path / "owt_valid.txt.decompressing").write_bytes(b"half")
    download_dataset("owt", tmp_path, splits=["valid"], base_url=server.url, log=_quiet([]))
    assert (tmp_path / "owt_valid.txt").read_bytes() == _text(4, 20_000)
    assert server.requests == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["owt_valid.txt", "owt_valid.txt.sha256"]


def test_a_corrupt_gz_is_a_clear_error_and_leaves_no_half_file(tmp_path):
    archive = tmp_path / "bad.txt.gz"
    compressed = gzip.compress(_text(5, 100_000))
    archive.write_bytes(compressed[: len(compressed) // 2])  # a download cut short
    with pytest.raises(DownloadError, match=r"bad\.txt\.gz is not a valid gzip file.*delete it"):
        decompress_gzip(archive, tmp_path / "bad.txt", log=_quiet([]))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.txt.gz"]


def test_unknown_dataset_and_split_list_the_valid_ones(tmp_path):
    with pytest.raises(DownloadError, match=r"unknown dataset 'tinystory'.*owt, tinystories"):
        download_dataset("tinystory", tmp_path)
    with pytest.raises(DownloadError, match=r"unknown split.*'test'.*train, valid"):
        download_dataset("owt", tmp_path, splits=["test"])


def test_the_registry_points_at_the_course_files():
    urls = [file.url for dataset in DATASETS.values() for file in dataset.files]
    assert "https://huggingface.co" + TINYSTORIES_TRAIN in urls
    assert "https://huggingface.co" + OWT_VALID in urls
    assert {Path(url).name for url in urls} == {
        "TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt", "owt_train.txt.gz", "owt_valid.txt.gz"
    }



# --- verification: sizes and SHA-256 ----------------------------------------------------------------------------


def test_every_registry_file_has_its_published_size_and_sha256_pinned():
    assert SHIPPED_PINS is not None, "download.PINNED is missing"
    names = {file.filename for dataset in DATASETS.values() for file in dataset.files}
    assert set(SHIPPED_PINS) == names
    published = {  # the values of the Hugging Face LFS pointers (sources in download.py)
        "TinyStoriesV2-GPT4-train.txt":
            (2_227_753_162, "6418d412de72888f52b5142c761ac21a582f7d1166f0bfbdb5f03ccfdec90443"),
        "TinyStoriesV2-GPT4-valid.txt":
            (22_502_601, "6874bae9a4c1a4e7edcf0e53b86c17817e9cf881fc75ff2368da457b80c0585d"),
        "owt_train.txt.gz": (4_591_240_837, "b19ae88cfbc4016b304c348522455fe38ebac48fffed955adcc7191a89e38ccf"),
        "owt_valid.txt.gz": (111_785_382, "bc73db5da2f19c360836b9c8a88094e13346ec83798c2f40060be39135768c80"),
    }
    assert {name: (pin.size, pin.sha256) for name, pin in SHIPPED_PINS.items()} == published


def test_a_20_byte_train_file_is_refused_before_any_byte_is_saved(server, tmp_path):
    server.files[TINYSTORIES_TRAIN] = b"not the stories 20b\n"
    server.send_linked = False  # a mirror that states nothing: the pinned size alone must catch it
    with pytest.raises(DownloadError, match=r"size mismatch.*TinyStoriesV2-GPT4-train\.txt: 20 bytes announced.*"
                                            r"50,000 bytes; nothing was downloaded"):
        download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url, log=_quiet([]))
    assert list(tmp_path.iterdir()) == []


def test_a_download_of_the_wrong_size_is_refused_and_its_bytes_kept_aside(server, tmp_path):
    server.files[TINYSTORIES_TRAIN] = b"not the stories 20b\n"
    server.send_linked = server.send_content_length = False  # the size shows only once the bytes are here
    with pytest.raises(DownloadError, match=r"TinyStoriesV2-GPT4-train\.txt refused: 20 bytes arrived from .* "
                                            r"the file has 50,000 bytes; the received bytes are kept in .*"
                                            r"TinyStoriesV2-GPT4-train\.txt\.rejected\. Run the same command again"):
        download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url, log=_quiet([]))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["TinyStoriesV2-GPT4-train.txt.rejected"]
    assert (tmp_path / "TinyStoriesV2-GPT4-train.txt.rejected").read_bytes() == b"not the stories 20b\n"


def test_a_tampered_file_of_the_right_size_is_refused_kept_aside_and_a_new_run_fetches_the_original(server, tmp_path):
    original = server.files[TINYSTORIES_TRAIN]
    server.files[TINYSTORIES_TRAIN] = _tampered(original)
    server.send_linked = False  # a mirror that states nothing: the pinned SHA-256 alone must catch it
    expected = rf"SHA-256 {_sha256(_tampered(original))}, but the file's is {_sha256(original)} \(pinned"
    with pytest.raises(DownloadError, match=r"TinyStoriesV2-GPT4-train\.txt refused: .*" + expected):
        download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url, log=_quiet([]))
    final, rejected = tmp_path / "TinyStoriesV2-GPT4-train.txt", tmp_path / "TinyStoriesV2-GPT4-train.txt.rejected"
    assert not final.exists() and not (tmp_path / "TinyStoriesV2-GPT4-train.txt.part").exists()
    assert rejected.read_bytes() == _tampered(original)

    server.files[TINYSTORIES_TRAIN] = original  # the mirror is fixed; the refused bytes stay for a look
    download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url, log=_quiet([]))
    assert final.read_bytes() == original
    assert rejected.read_bytes() == _tampered(original)


def test_the_right_files_pass_and_a_record_spares_the_next_run_the_hashing(server, tmp_path, monkeypatch):
    messages: list[str] = []
    paths = download_dataset("tinystories", tmp_path, base_url=server.url, log=_quiet(messages))
    assert [path.read_bytes() for path in paths] == [FILES[TINYSTORIES_TRAIN], FILES[TINYSTORIES_VALID]]
    for path, served in zip(paths, (TINYSTORIES_TRAIN, TINYSTORIES_VALID)):
        # sha256sum's own format, so that `sha256sum -c` can check the data directory by hand too
        assert (tmp_path / f"{path.name}.sha256").read_text() == f"{_sha256(FILES[served])}  {path.name}\n"
    assert sum("SHA-256 verified" in message for message in messages) == 2

    def no_hashing(path, progress):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(download, "_sha256_of", no_hashing)
    messages.clear()
    assert download_dataset("tinystories", tmp_path, base_url=server.url, log=_quiet(messages)) == paths
    assert all("already downloaded" in message and "verified before" in message for message in messages)


def test_a_tampered_file_already_under_the_final_name_is_detected_and_left_alone(server, tmp_path):
    final = tmp_path / "TinyStoriesV2-GPT4-valid.txt"
    original = FILES[TINYSTORIES_VALID]
    final.write_bytes(_tampered(original))  # placed by hand: no record
    not_published = rf"is already there but is not the published file: its SHA-256 is {_sha256(_tampered(original))}"
    with pytest.raises(DownloadError, match=not_published + r".*move it away"):
        download_dataset("tinystories", tmp_path, splits=["valid"], base_url=server.url, log=_quiet([]))
    assert final.read_bytes() == _tampered(original)  # the user's file: reported, not moved or deleted
    assert server.requests == []

    final.unlink()
    download_dataset("tinystories", tmp_path, splits=["valid"], base_url=server.url, log=_quiet([]))
    final.write_bytes(_tampered(original))  # changed after it was verified
    record = tmp_path / "TinyStoriesV2-GPT4-valid.txt.sha256"
    os.utime(record, ns=(0, final.stat().st_ctime_ns - 60 * 10**9))  # as if the record were written a minute before
    with pytest.raises(DownloadError, match=not_published):
        download_dataset("tinystories", tmp_path, splits=["valid"], base_url=server.url, log=_quiet([]))


def test_a_hand_placed_file_of_the_wrong_size_is_refused_without_hashing_or_network(tmp_path, monkeypatch):
    monkeypatch.setitem(download.PINNED, "TinyStoriesV2-GPT4-valid.txt", SHIPPED_PINS["TinyStoriesV2-GPT4-valid.txt"])
    (tmp_path / "TinyStoriesV2-GPT4-valid.txt").write_text("a few stories\n")
    with pytest.raises(DownloadError, match=r"already there but has 14 bytes, not the 22,502,601 of the published"):
        download_dataset("tinystories", tmp_path, splits=["valid"], base_url="http://127.0.0.1:9", log=_quiet([]))
    assert (tmp_path / "TinyStoriesV2-GPT4-valid.txt").read_text() == "a few stories\n"


def test_a_resumed_download_is_verified_over_the_whole_file(server, tmp_path):
    original = FILES[TINYSTORIES_TRAIN]
    damaged_start = b"X" * 1000 + original[1000:5000]  # an earlier run's .part, damaged on disk
    (tmp_path / "TinyStoriesV2-GPT4-train.txt.part").write_bytes(damaged_start)
    with pytest.raises(DownloadError, match=r"TinyStoriesV2-GPT4-train\.txt refused: the bytes .* have SHA-256"):
        download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url, log=_quiet([]))
    assert server.ranges(TINYSTORIES_TRAIN) == ["bytes=5000-"]  # only the rest was fetched, yet all was checked
    assert (tmp_path / "TinyStoriesV2-GPT4-train.txt.rejected").read_bytes() == damaged_start + original[5000:]
    assert not (tmp_path / "TinyStoriesV2-GPT4-train.txt").exists()

    download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url, log=_quiet([]))
    assert (tmp_path / "TinyStoriesV2-GPT4-train.txt").read_bytes() == original
    assert server.ranges(TINYSTORIES_TRAIN) == ["bytes=5000-", None]  # afresh, not on top of the refused bytes


def test_a_gz_is_verified_before_it_is_decompressed(server, tmp_path):
    impostor = gzip.compress(_text(99, 20_000), mtime=0)  # a valid archive, of other text
    server.files[OWT_VALID] = impostor
    server.send_linked = server.send_content_length = False
    with pytest.raises(DownloadError, match=r"owt_valid\.txt\.gz refused: .* kept in .*owt_valid\.txt\.gz\.rejected"):
        download_dataset("owt", tmp_path, splits=["valid"], base_url=server.url, log=_quiet([]))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["owt_valid.txt.gz.rejected"]  # nothing decompressed

    (tmp_path / "owt_valid.txt.gz").write_bytes(_tampered(FILES[OWT_VALID]))  # placed by hand, right size
    with pytest.raises(DownloadError, match=r"owt_valid\.txt\.gz is already there but is not the published file"):
        download_dataset("owt", tmp_path, splits=["valid"], base_url=server.url, log=_quiet([]))
    assert not (tmp_path / "owt_valid.txt").exists()
    assert (tmp_path / "owt_valid.txt.gz").read_bytes() == _tampered(FILES[OWT_VALID])  # left alone

    (tmp_path / "owt_valid.txt.gz").unlink()
    server.files[OWT_VALID] = FILES[OWT_VALID]
    [text_path] = download_dataset("owt", tmp_path, splits=["valid"], base_url=server.url, log=_quiet([]))
    assert text_path.read_bytes() == _text(4, 20_000)
    assert (tmp_path / "owt_valid.txt.sha256").read_text() == f"{_sha256(_text(4, 20_000))}  owt_valid.txt\n"


def test_a_decompressed_file_placed_by_hand_cannot_be_verified_and_says_to_bring_the_gz(server, tmp_path):
    (tmp_path / "owt_valid.txt").write_bytes(_text(4, 20_000))  # right text, but nothing shows it
    with pytest.raises(DownloadError, match=r"owt_valid\.txt is already there but cannot be verified.*"
                                            r"published SHA-256 is that of owt_valid\.txt\.gz: put owt_valid\.txt\.gz"):
        download_dataset("owt", tmp_path, splits=["valid"], base_url=server.url, log=_quiet([]))
    assert server.requests == []


def test_without_a_pin_the_sha256_on_hugging_faces_redirect_verifies_the_file(server, tmp_path):
    server.linked_only_on_redirect = True  # as on huggingface.co: the CDN's answer carries no X-Linked-*
    dest = tmp_path / "small.txt"
    download_file(f"{server.url}/redirect{SMALL}", dest, log=_quiet([]))
    assert dest.read_bytes() == FILES[SMALL]
    assert (tmp_path / "small.txt.sha256").read_text() == f"{_sha256(FILES[SMALL])}  small.txt\n"

    server.files[SMALL] = _tampered(FILES[SMALL])  # the CDN serves other bytes than the hub announces
    server.claims[SMALL] = (_sha256(FILES[SMALL]), len(FILES[SMALL]))
    with pytest.raises(DownloadError, match=r"other\.txt refused: .*announced by the server \(X-Linked-Etag\)"):
        download_file(f"{server.url}/redirect{SMALL}", tmp_path / "other.txt", log=_quiet([]))
    assert (tmp_path / "other.txt.rejected").read_bytes() == _tampered(FILES[SMALL])


def test_a_server_contradicting_the_pins_is_refused_before_downloading(server, tmp_path):
    server.claims[TINYSTORIES_TRAIN] = (_sha256(b"something else"), len(FILES[TINYSTORIES_TRAIN]))
    with pytest.raises(DownloadError, match=r"SHA-256 mismatch for .*train\.txt: the server announces "
                                            rf"{_sha256(b'something else')} \(X-Linked-Etag\).*nothing was downloaded"):
        download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url, log=_quiet([]))
    server.claims[TINYSTORIES_TRAIN] = (_sha256(FILES[TINYSTORIES_TRAIN]), 12_345)
    with pytest.raises(DownloadError, match=r"size mismatch .*: 12,345 bytes announced by the server "
                                            r"\(X-Linked-Size\), but this file should have 50,000 bytes"):
        download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url, log=_quiet([]))
    assert list(tmp_path.iterdir()) == []


def test_a_file_with_no_sha256_pinned_or_announced_is_refused(server, tmp_path, monkeypatch):
    server.send_linked = False
    with pytest.raises(DownloadError, match=r"cannot verify .*small\.txt: no SHA-256 is pinned .* announced none"):
        download_file(f"{server.url}{SMALL}", tmp_path / "small.txt", log=_quiet([]))
    monkeypatch.delitem(download.PINNED, "TinyStoriesV2-GPT4-train.txt")
    with pytest.raises(DownloadError, match=r"cannot verify .*TinyStoriesV2-GPT4-train\.txt"):
        download_dataset("tinystories", tmp_path, splits=["train"], base_url=server.url, log=_quiet([]))
    assert list(tmp_path.iterdir()) == []


def test_the_command_exits_1_with_one_line_on_a_tampered_file_and_0_on_the_original(server, tmp_path):
    server.files[TINYSTORIES_TRAIN] = _tampered(FILES[TINYSTORIES_TRAIN])
    server.send_linked = False
    arguments = ["download", "tinystories", str(tmp_path), "--split", "train", "--base-url", server.url]
    refused = CliRunner().invoke(main, arguments)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert re.search(r"Error: TinyStoriesV2-GPT4-train\.txt refused: .*SHA-256.*\.rejected", refused.output)

    server.files[TINYSTORIES_TRAIN] = FILES[TINYSTORIES_TRAIN]
    accepted = CliRunner().invoke(main, arguments)
    assert accepted.exit_code == 0, accepted.output
    assert accepted.output.strip().endswith(str(tmp_path / "TinyStoriesV2-GPT4-train.txt"))


# --- what the command says before it starts and after it ends ----------------------------------------------------


def test_the_command_says_size_time_and_the_command_to_train_before_any_byte_moves(server, tmp_path):
    dest = tmp_path / "data"
    first = CliRunner().invoke(main, ["download", "tinystories", str(dest), "--base-url", server.url])
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    megabytes = (len(FILES[TINYSTORIES_TRAIN]) + len(FILES[TINYSTORIES_VALID])) / 1e6
    assert lines[0] == (f"downloading TinyStories V2 (GPT-4 stories) into {dest}/: {megabytes:,.1f} MB to fetch, "
                        "under a minute at 10 MB/s (a 100 Mbit/s line)")
    follow_on = f"cs336-train pipeline --dataset tinystories --data-dir {dest}"
    assert lines[1] == f"then train on it with: {follow_on}"
    assert lines[-1] == f"next: {follow_on}"
    assert server.requests  # the plan came first, then the download

    again = CliRunner().invoke(main, ["download", "tinystories", str(dest), "--base-url", server.url])
    assert again.output.splitlines()[0].endswith("already downloaded, to be verified")


def test_the_estimate_counts_only_what_is_left_at_a_typical_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "PINNED", SHIPPED_PINS)
    assert download.describe_download("tinystories", "data") == (
        "TinyStories V2 (GPT-4 stories) into data/: 2,250.3 MB to fetch, about 4 minutes at 10 MB/s "
        "(a 100 Mbit/s line)")
    (tmp_path / "owt_train.txt.gz.part").write_bytes(b"x" * 1_000_000)  # 1 MB of an interrupted download
    (tmp_path / "owt_valid.txt").write_text("already here")
    assert download.describe_download("owt", tmp_path) == (
        f"the CS336 OpenWebText sample into {tmp_path}/: 4,590.2 MB to fetch, about 8 minutes at 10 MB/s "
        "(a 100 Mbit/s line); then decompressed")
    assert download.next_command("owt", "data") == "cs336-train pipeline --dataset owt"


def test_one_split_gets_no_command_to_train_which_needs_both(server, tmp_path):
    result = CliRunner().invoke(main, ["download", "tinystories", str(tmp_path), "--split", "valid",
                                       "--base-url", server.url])
    assert result.exit_code == 0, result.output
    assert "cs336-train pipeline" not in result.output
