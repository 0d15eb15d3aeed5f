"""Getting the course fixtures on a fresh machine: the fetch path against a local server, the pins, the data folder.

Nothing outside is reachable here, so a ThreadingHTTPServer on 127.0.0.1 plays the course repository, serving a
temporary folder with copies of the fixture files; it counts the requests it answers.
"""

import ast
import hashlib
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import tests.conftest as conftest
from tests.course_fixtures import (
    COURSE_COMMIT,
    DEFAULT_BASE_URL,
    FETCH_COMMAND,
    PINNED_FIXTURES,
    FixtureMismatch,
    FixturesUnavailable,
    fetch_course_fixtures,
    fixtures_base_url,
    fixtures_cache_dir,
    locate_fixtures,
)

TESTS = Path(__file__).resolve().parent
SMALL = ["address.txt", "german.txt", "special_token_trailing_newlines.txt", "tinystories_sample.txt"]


class FixtureServer:
    """Serves files of `folder` under /fixtures/NAME; `requests` lists the paths asked for."""

    def __init__(self, folder: Path):
        self.folder, self.requests, self.truncated = folder, [], set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                name = self.path.removeprefix("/fixtures/")
                if "/" in name or not (server.folder / name).is_file():
                    self.send_error(404)
                    return
                body = (server.folder / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # A truncated answer: the promised length, half the bytes, then the connection closes.
                self.wfile.write(body[: len(body) // 2] if name in server.truncated else body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fixtures"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, fixtures_dir):
    """A local stand-in for the course repository, serving copies of every pinned fixture file."""
    folder = tmp_path / "served"
    folder.mkdir()
    for name in PINNED_FIXTURES:
        shutil.copyfile(fixtures_dir / name, folder / name)
    with FixtureServer(folder) as server:
        yield server


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    """No CS336_FIXTURES / CS336_FIXTURES_URL from the caller; the cache in tmp_path."""
    monkeypatch.delenv("CS336_FIXTURES", raising=False)
    monkeypatch.delenv("CS336_FIXTURES_URL", raising=False)
    monkeypatch.setenv("CS336_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / f"course-fixtures-{COURSE_COMMIT[:12]}"


def pins(*names: str) -> dict[str, tuple[int, str]]:
    return {name: PINNED_FIXTURES[name] for name in names}


def closed_port_url() -> str:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/fixtures"


def test_first_fetch_writes_verified_files_and_the_second_makes_no_request(tmp_path, served, fixtures_dir):
    cache = tmp_path / "cache"
    assert fetch_course_fixtures(cache, served.base_url, pins(*SMALL)) == cache
    assert sorted(served.requests) == sorted(f"/fixtures/{name}" for name in SMALL)
    assert sorted(path.name for path in cache.iterdir()) == sorted(SMALL)  # no temporary file left beside them
    for name in SMALL:
        assert (cache / name).read_bytes() == (fixtures_dir / name).read_bytes()

    fetch_course_fixtures(cache, served.base_url, pins(*SMALL))
    assert len(served.requests) == len(SMALL)


def test_a_damaged_cached_file_is_fetched_again_and_only_it(tmp_path, served, fixtures_dir):
    cache = tmp_path / "cache"
    fetch_course_fixtures(cache, served.base_url, pins(*SMALL))
    (cache / "german.txt").write_bytes(b"edited by hand")
    served.requests.clear()
    fetch_course_fixtures(cache, served.base_url, pins(*SMALL))
    assert served.requests == ["/fixtures/german.txt"]
    assert (cache / "german.txt").read_bytes() == (fixtures_dir / "german.txt").read_bytes()


@pytest.mark.parametrize("wrong", ["same size", "longer", "shorter", "lfs pointer"])
def test_wrong_bytes_are_refused_and_nothing_is_kept(tmp_path, served, wrong):
    original = (served.folder / "address.txt").read_bytes()
    served_bytes = {
        "same size": original[:-1] + b"!",
        "longer": original + b"more",
        "shorter": original[:100],
        "lfs pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:fc1f20\nsize 1468\n",
    }[wrong]
    (served.folder / "address.txt").write_bytes(served_bytes)
    cache = tmp_path / "cache"
    with pytest.raises(FixtureMismatch) as refused:
        fetch_course_fixtures(cache, served.base_url, pins("address.txt"))
    message = str(refused.value)
    assert "refused" in message and "address.txt" in message and PINNED_FIXTURES["address.txt"][1] in message
    assert "nothing was kept" in message and "\n" not in message
    assert ("Git LFS pointer" in message) == (wrong == "lfs pointer")
    assert list(cache.iterdir()) == []  # neither the final name nor a temporary file


def test_an_interrupted_download_leaves_nothing(tmp_path, served):
    served.truncated.add("tinystories_sample.txt")
    cache = tmp_path / "cache"
    with pytest.raises(FixturesUnavailable, match="connection closed after 1897 of 3794 bytes") as failed:
        fetch_course_fixtures(cache, served.base_url, pins("tinystories_sample.txt"))
    assert not isinstance(failed.value, FixtureMismatch)  # a network failure, not wrong bytes
    assert list(cache.iterdir()) == []


def test_a_file_missing_on_the_server_names_the_url(tmp_path, served):
    (served.folder / "german.txt").unlink()
    with pytest.raises(FixturesUnavailable, match=r"german\.txt: HTTP Error 404"):
        fetch_course_fixtures(tmp_path / "cache", served.base_url, pins("german.txt"))


def test_an_unreachable_server_says_what_to_do_in_one_line(tmp_path, clean_environment, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("CS336_FIXTURES_URL", url)
    with pytest.raises(FixturesUnavailable) as unavailable:
        locate_fixtures(tmp_path / "no-shared" / "fixtures")
    message = str(unavailable.value)
    assert url in message and "CS336_FIXTURES" in message and FETCH_COMMAND in message
    assert "\n" not in message
    assert not clean_environment.exists() or list(clean_environment.iterdir()) == []


def test_cs336_fixtures_comes_first_then_shared_then_the_fetched_cache(tmp_path, served, clean_environment,
                                                                       monkeypatch):
    monkeypatch.setenv("CS336_FIXTURES_URL", served.base_url)
    mine, shared = tmp_path / "mine", tmp_path / "shared" / "fixtures"
    mine.mkdir()
    shared.mkdir(parents=True)

    monkeypatch.setenv("CS336_FIXTURES", str(mine))
    assert locate_fixtures(shared) == mine
    monkeypatch.delenv("CS336_FIXTURES")
    assert locate_fixtures(shared) == shared
    assert served.requests == []  # neither fetched anything

    assert locate_fixtures(tmp_path / "nowhere") == clean_environment
    assert sorted(path.name for path in clean_environment.iterdir()) == sorted(PINNED_FIXTURES)
    assert len(served.requests) == len(PINNED_FIXTURES)


def test_a_cs336_fixtures_that_is_not_a_folder_is_reported(tmp_path, clean_environment, monkeypatch):
    monkeypatch.setenv("CS336_FIXTURES", str(tmp_path / "typo"))
    with pytest.raises(FixturesUnavailable, match="CS336_FIXTURES=.*typo is not a folder"):
        locate_fixtures(tmp_path)


def test_cache_location_and_base_url_follow_the_environment(tmp_path, monkeypatch):
    for variable in ["CS336_CACHE", "XDG_CACHE_HOME", "CS336_FIXTURES_URL"]:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = f"course-fixtures-{COURSE_COMMIT[:12]}"
    assert fixtures_cache_dir() == tmp_path / "home" / ".cache" / "cs336" / folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fixtures_cache_dir() == tmp_path / "xdg" / "cs336" / folder
    monkeypatch.setenv("CS336_CACHE", str(tmp_path / "mine"))
    assert fixtures_cache_dir() == tmp_path / "mine" / folder

    expected = f"https://raw.githubusercontent.com/stanford-cs336/assignment1-basics/{COURSE_COMMIT}/tests/fixtures"
    assert fixtures_base_url() == DEFAULT_BASE_URL == expected
    monkeypatch.setenv("CS336_FIXTURES_URL", "http://mirror.example/fixtures/")
    assert fixtures_base_url() == "http://mirror.example/fixtures"


def fixture_names_read_by_the_tests() -> set[str]:
    """File names the tests read from fixtures_dir: `fixtures_dir / "NAME"`, and the strings of any *FIXTURE* list."""
    names = set()
    for source in sorted(TESTS.glob("*.py")):
        if source.name in {"course_fixtures.py", Path(__file__).name}:
            continue
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.Name)
                    and node.left.id == "fixtures_dir" and isinstance(node.right, ast.Constant)):
                names.add(node.right.value)
            elif isinstance(node, ast.Assign) and any(isinstance(target, ast.Name) and "FIXTURE" in target.id
                                                      for target in node.targets):
                names |= {item.value for item in ast.walk(node.value)
                          if isinstance(item, ast.Constant) and isinstance(item.value, str)}
    return names


def test_the_pins_cover_exactly_the_fixture_files_the_tests_read():
    read = fixture_names_read_by_the_tests()
    assert {"corpus.en", "gpt2_vocab.json", "train-bpe-reference-merges.txt"} <= read  # the scan sees real uses
    assert not read - set(PINNED_FIXTURES), "add these to PINNED_FIXTURES in tests/course_fixtures.py (size, SHA-256)"
    assert not set(PINNED_FIXTURES) - read, "no test reads these any more: drop them from PINNED_FIXTURES"


@pytest.mark.parametrize("name", sorted(PINNED_FIXTURES))
def test_each_pin_matches_the_fixture_in_use(fixtures_dir, name):
    size, sha256 = PINNED_FIXTURES[name]
    data = (fixtures_dir / name).read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256)


def test_the_bundled_tinystories_sample_is_the_shared_text(tmp_path):
    from cs336_train.datasets.bundled import tinystories_sample

    shared = conftest.SHARED / "data" / "tinystories"
    if not shared.is_dir():
        pytest.skip(f"{shared} is absent: nothing to compare the bundled sample with")
    for split, path in tinystories_sample(tmp_path).items():
        assert path.read_bytes() == (shared / f"{split}.txt").read_bytes(), split


def test_reading_what_the_bundled_data_folder_lacks_is_a_skip_with_the_reason(tmp_path, monkeypatch):
    (tmp_path / "tinystories").mkdir()
    (tmp_path / "tinystories" / "valid.txt").write_text("a story", encoding="utf-8")
    monkeypatch.setattr(conftest, "_BUNDLED_DATA_VIEW", [tmp_path])
    message = conftest._missing_data_message(tmp_path / "owt" / "owt_valid_sample.txt")
    assert "owt/owt_valid_sample.txt is not on this machine" in message and "CS336_DATA" in message
    assert conftest._missing_data_message(tmp_path / "tinystories" / "valid.txt") is None
    assert conftest._missing_data_message(tmp_path.parent / "elsewhere.txt") is None
