"""Shared fixtures: where the course fixtures and the shared corpora live, and the GPT-2 reference encoders.

Course fixtures: $CS336_FIXTURES, else ../shared/fixtures, else fetched once from the course repository at a pinned
commit into a cache (tests/course_fixtures.py). Corpora: $CS336_DATA, else ../shared/data, else a folder holding
just tinystories/train.txt and valid.txt from the sample cs336-train bundles (the same bytes as ../shared/data's);
tests reading anything else from it (the OpenWebText sample) skip, saying where to get it.
"""

import json
import os
from pathlib import Path

import pytest

from tests.course_fixtures import FixtureMismatch, FixturesUnavailable, locate_fixtures

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Set by data_dir when it is the bundled-sample folder: reads of files it lacks become skips (see below).
_BUNDLED_DATA_VIEW: list[Path] = []


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    try:
        return locate_fixtures(SHARED / "fixtures")
    except FixtureMismatch as error:  # bytes that are not the course's: an error to see, not a skip to overlook
        pytest.fail(str(error), pytrace=False)
    except FixturesUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    explicit = os.environ.get("CS336_DATA")
    if explicit:
        if not Path(explicit).expanduser().is_dir():
            pytest.skip(f"CS336_DATA={explicit} is not a folder: point it at the shared corpora, or unset it")
        return Path(explicit).expanduser()
    if (SHARED / "data").is_dir():
        return SHARED / "data"
    from cs336_train.datasets.bundled import tinystories_sample
    from cs336_train.errors import DataError

    try:
        sample = tinystories_sample()
    except DataError as error:
        pytest.skip(f"no ../shared/data and the bundled TinyStories sample is unusable: {error}")
    view = tmp_path_factory.mktemp("data")
    (view / "tinystories").mkdir()
    for split, path in sample.items():
        link = view / "tinystories" / f"{split}.txt"
        try:
            link.symlink_to(path)
        except OSError:  # no symlinks here (Windows without developer mode): a copy, 4.8 MB
            link.write_bytes(path.read_bytes())
    _BUNDLED_DATA_VIEW.append(view)
    return view


def _missing_data_message(path: Path) -> str | None:
    """For a file absent from the bundled-sample data folder, the skip reason; None for any other path."""
    for view in _BUNDLED_DATA_VIEW:
        if path.is_relative_to(view) and not path.exists():
            relative = path.relative_to(view).as_posix()
            return (f"{relative} is not on this machine: without ../shared/data the corpora come from the TinyStories "
                    "sample bundled in cs336-train, and the OpenWebText sample is neither bundled nor in the course "
                    f"repository; set CS336_DATA to a folder holding {relative} (CI has ../shared/data)")
    return None


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    try:
        return (yield)
    except FileNotFoundError as error:
        message = error.filename and _missing_data_message(Path(error.filename))
        if message:
            pytest.skip(message)
        raise


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte<->unicode table, written out independently of cs336_bpe (for the references)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = printable[:]
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + shifted)
            shifted += 1
    return {chr(character): byte for byte, character in zip(printable, characters, strict=True)}


@pytest.fixture(scope="session")
def tiktoken_gpt2(fixtures_dir):
    """tiktoken's GPT-2 encoding, built offline from the fixture vocabulary (tiktoken cannot download here)."""
    tiktoken = pytest.importorskip("tiktoken")
    decoder = gpt2_byte_decoder()
    vocab = json.loads((fixtures_dir / "gpt2_vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(decoder[c] for c in token): i for token, i in vocab.items() if token != "<|endoftext|>"}
    return tiktoken.Encoding(
        "gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )


def _load_gpt2_tokenizer(fixtures_dir: Path):
    from cs336_bpe import Tokenizer

    return Tokenizer.from_files(
        fixtures_dir / "gpt2_vocab.json", fixtures_dir / "gpt2_merges.txt", special_tokens=["<|endoftext|>"]
    )


@pytest.fixture(scope="session")
def gpt2_tokenizer(fixtures_dir):
    """One GPT-2 tokenizer for the whole session (its caches warm up as the tests use it)."""
    return _load_gpt2_tokenizer(fixtures_dir)


@pytest.fixture
def fresh_gpt2_tokenizer(fixtures_dir):
    """Makes GPT-2 tokenizers with empty caches, for tests where the first sight of a word matters."""
    return lambda: _load_gpt2_tokenizer(fixtures_dir)


@pytest.fixture(scope="session")
def owt_text(data_dir) -> str:
    path = data_dir / "owt" / "owt_valid_sample.txt"
    if message := _missing_data_message(path):
        pytest.skip(message)
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def token_files(tmp_path_factory) -> dict:
    """A tiny tokenizer and train/valid token files made from generated stories (see train_helpers)."""
    from tests.train_helpers import make_token_files

    return make_token_files(tmp_path_factory.mktemp("tokens"))


@pytest.fixture
def restore_torch_threads():
    """Training sets torch's thread count from run.num_threads; put it back for the tests that follow."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
