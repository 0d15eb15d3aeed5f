"""Shared fixtures: where the course fixtures and the shared corpora live, and the GPT-2 reference encoders."""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("CS336_FIXTURES", ROOT.parent / "shared" / "fixtures"))
DATA = Path(os.environ.get("CS336_DATA", ROOT.parent / "shared" / "data"))
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: set CS336_FIXTURES / CS336_DATA to the shared folders")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _require(FIXTURES)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA)


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
    return (data_dir / "owt" / "owt_valid_sample.txt").read_text(encoding="utf-8")


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
