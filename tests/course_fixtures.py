"""The course's test fixtures on a machine without ../shared: fetched once from the course repository, verified.

CI and these machines have ../shared/fixtures; a learner's fresh clone does not. There the tests fetch the fixture
files they read from the course repository at one pinned commit, check each against the SHA-256 and size below,
and keep them in a cache, so later runs make no request at all:

    >>> fixtures = fetch_course_fixtures()            # doctest: +SKIP
    >>> sorted(path.name for path in fixtures.iterdir())[:2]   # doctest: +SKIP
    ['address.txt', 'corpus.en']

From the command line, to fetch them ahead of time (say, before going offline):

    uv run python -m tests.course_fixtures

Standard library only: it runs before anything else of ours is known to work.
"""

import contextlib
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path

COURSE_REPOSITORY = "stanford-cs336/assignment1-basics"
# The course's Spring 2026 starter commit (2026-04-07, "adjust leaderboard time limit"), the one public notes on
# the assignment cite. The pins below are the bytes of ../shared/fixtures; public copies of the course's fixtures
# (Git LFS pointers of a fork, with their SHA-256 and size) agree with them. A commit is immutable, so the fetch can
# only ever get these bytes or be refused.
COURSE_COMMIT = "a158843b20107949f1a8d7df1b05cd33b9166712"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{COURSE_REPOSITORY}/{COURSE_COMMIT}/tests/fixtures"
BASE_URL_VARIABLE = "CS336_FIXTURES_URL"  # a mirror, or a local server in the tests
FETCH_COMMAND = "uv run python -m tests.course_fixtures"

# name -> (size in bytes, SHA-256) of every fixture file our tests read; the fetch refuses anything else.
PINNED_FIXTURES: dict[str, tuple[int, str]] = {
    "address.txt": (1468, "fc1f209025d3181137b8953cfeb559ab186782d48b93182eac2b6401816c1df4"),
    "corpus.en": (133027, "617f603a49eeb8a20de9d922d11a5d70e1d362327b9e91718bea2cdcdf9816ff"),
    "german.txt": (594, "372a3b9d896f2774e83721ea5d9aedc77a65ea31d7dfd77c4dbc6ee5eac50c28"),
    "gpt2_merges.txt": (456304, "ac33235097fe06d4a8fff0feac994644809e6eb6ab70669e1e9fd40ae032428e"),
    "gpt2_vocab.json": (1042301, "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "special_token_double_newlines_non_whitespace.txt": (
        23, "385b1a48679d11ec498dbda931e5d6bb035d0db87998730197bf1e11ab97d297"),
    "special_token_trailing_newlines.txt": (15, "c7fac215bf4c84da8e1bbad6ff1fe9c07754f961479aa25c26b3460a2077da82"),
    "tinystories_sample.txt": (3794, "defaedb58bf28079f3e29c6142cb7f3568d331a577e0911c5d7925c465c50c43"),
    "train-bpe-reference-merges.txt": (1271, "f74582742501ca5edd5be2b66adb83d7ae2b8d6363fd276771792e70de1428ed"),
    "train-bpe-reference-vocab.json": (7610, "e28bfb2a4fa95ec786faf462cb0d504bc15773360f4891bdf262be171ab86c18"),
}


class FixturesUnavailable(RuntimeError):
    """The fixtures cannot be had here (offline, server down, a wrong CS336_FIXTURES); the message says what to do."""


class FixtureMismatch(FixturesUnavailable):
    """A fetched file is not the pinned one (wrong size or SHA-256); it was not kept."""


def cache_root() -> Path:
    """$CS336_CACHE, else $XDG_CACHE_HOME/cs336, else ~/.cache/cs336 (the same root cs336-train uses)."""
    if os.environ.get("CS336_CACHE"):
        return Path(os.environ["CS336_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cs336"


def fixtures_cache_dir() -> Path:
    """Where fetched fixtures live: one folder per pinned commit, so a new pin never mixes with an old one."""
    return cache_root() / f"course-fixtures-{COURSE_COMMIT[:12]}"


def fixtures_base_url() -> str:
    return (os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL).rstrip("/")


def locate_fixtures(shared_fixtures: Path) -> Path:
    """The fixtures folder the tests use: $CS336_FIXTURES, else `shared_fixtures` if it exists, else the fetched cache.

    CI always has ../shared/fixtures, so it never fetches. Raises FixturesUnavailable with a one-line message.
    """
    explicit = os.environ.get("CS336_FIXTURES")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise FixturesUnavailable(f"CS336_FIXTURES={explicit} is not a folder: point it at a folder holding the "
                                      "course's tests/fixtures files, or unset it to use ../shared/fixtures or the "
                                      f"fetched cache ({FETCH_COMMAND})")
        return path
    if shared_fixtures.is_dir():
        return shared_fixtures
    return fetch_course_fixtures()


def fetch_course_fixtures(cache_dir: str | os.PathLike | None = None, base_url: str | None = None,
                          pins: Mapping[str, tuple[int, str]] = PINNED_FIXTURES, timeout: float = 60.0) -> Path:
    """Make sure every pinned file is in the cache, verified; fetch the missing or damaged ones. Returns the folder.

    A file already there with the pinned size and SHA-256 costs no request. Each download goes to a temporary file
    in the same folder and takes its final name (os.replace) only once verified, so an interrupted or refused
    fetch leaves nothing under a fixture's name.
    """
    directory = Path(cache_dir) if cache_dir is not None else fixtures_cache_dir()
    base = (base_url or fixtures_base_url()).rstrip("/")
    for name, (size, sha256) in pins.items():
        path = directory / name
        if not _is_verified(path, size, sha256):
            _download(f"{base}/{name}", path, size, sha256, timeout)
    return directory


def _is_verified(path: Path, size: int, sha256: str) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest() == sha256
    except OSError:
        return False


def _download(url: str, path: Path, size: int, sha256: str, timeout: float) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as error:
        raise FixturesUnavailable(f"cannot write the course fixtures into {path.parent}: {error}; set CS336_CACHE "
                                  "to a writable folder, or CS336_FIXTURES to a folder holding the fixtures") from None
    try:
        digest, received, head = hashlib.sha256(), 0, b""
        with os.fdopen(descriptor, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            # Read one byte past the pinned size at most: a wrong answer (an HTML error page, a Git LFS pointer,
            # a huge file) is detected without downloading all of it.
            while received <= size and (chunk := response.read(min(1 << 16, size + 1 - received))):
                head = head or chunk[:64]
                received += len(chunk)
                digest.update(chunk)
                out.write(chunk)
            if received < size and response.length:  # the server promised more, then hung up: a network failure
                raise FixturesUnavailable(f"cannot fetch the course fixtures ({url}: the connection closed after "
                                          f"{received} of {received + response.length} bytes): try again, or set "
                                          "CS336_FIXTURES to a folder holding them")
            out.flush()
            os.fsync(out.fileno())
        if received != size or digest.hexdigest() != sha256:
            got = f"more than {size} bytes" if received > size else f"{received} bytes, SHA-256 {digest.hexdigest()}"
            hint = " (a Git LFS pointer, not the file)" if head.startswith(b"version https://git-lfs") else ""
            raise FixtureMismatch(f"refused {url}: got {got}{hint}, expected {size} bytes with SHA-256 {sha256} "
                                  f"(pinned for {COURSE_REPOSITORY}@{COURSE_COMMIT[:12]}); nothing was kept. A proxy "
                                  "or mirror may have altered it: fetch from the course repository itself, or set "
                                  "CS336_FIXTURES to a folder holding the course's fixtures")
        umask = os.umask(0)  # mkstemp made it private to us; give it the permissions a plain open() would
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except (urllib.error.URLError, HTTPException, OSError) as error:
        # "HTTP Error 404: Not Found", "[Errno 111] Connection refused", "timed out" ...
        reason = error.reason if type(error) is urllib.error.URLError else error
        raise FixturesUnavailable(f"cannot fetch the course fixtures ({url}: {reason}): set CS336_FIXTURES to a "
                                  f"folder holding them, or run `{FETCH_COMMAND}` once with network access") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def main() -> int:
    try:
        directory = fetch_course_fixtures()
    except FixturesUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{len(PINNED_FIXTURES)} course fixture files, verified, in {directory} (from {fixtures_base_url()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
