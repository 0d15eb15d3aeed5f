"""cs336_train.download against a local HTTP server that can resume, ignore Range, drop connections and 404."""

import errno
import gzip
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cs336_train import download
from cs336_train.download import DATASETS, DownloadError, decompress_gzip, download_dataset, download_file

TINYSTORIES_TRAIN = "/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt"
OWT_TRAIN = "/datasets/stanford-cs336/owt-sample/resolve/main/owt_train.txt.gz"
OWT_VALID = "/datasets/stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz"


def _text(seed: int, size: int) -> bytes:
    """Deterministic, non-repeating-looking bytes, so a byte in the wrong place shows."""
    line = b"".join(b"story %d line %d <|endoftext|>\n" % (seed, i) for i in range(size // 20 + 1))
    return line[:size]


class FakeServer:
    """Serves `files` (path -> bytes) with Range support; knobs make it misbehave the way real networks do."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header) of every GET
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before hanging up (once)
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/redirect"))
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
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
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
    files = {
        "/data/small.txt": _text(1, 300_000),
        TINYSTORIES_TRAIN: _text(2, 50_000),
        OWT_TRAIN: gzip.compress(_text(3, 80_000)),
        OWT_VALID: gzip.compress(_text(4, 20_000)),
    }
    fake = FakeServer(files)
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)


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
    assert sorted(path.name for path in tmp_path.iterdir()) == ["owt_train.txt", "owt_valid.txt"]  # no .gz or temp

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
    assert sorted(path.name for path in tmp_path.iterdir()) == ["owt_valid.txt"]


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


def test_a_hand_placed_file_of_the_wrong_size_is_kept_with_a_warning(tmp_path):
    (tmp_path / "TinyStoriesV2-GPT4-valid.txt").write_text("a few stories\n")
    messages: list[str] = []
    download_dataset("tinystories", tmp_path, splits=["valid"], base_url="http://127.0.0.1:9", log=messages.append)
    assert "already downloaded" in messages[0]
    assert "warning: it has 14 bytes, not the 22,502,601" in messages[1]
