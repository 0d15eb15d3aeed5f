"""Whole-file encoding: same ids as `encode`, correct metadata, nothing half-written on failure."""

import json
import multiprocessing

import numpy as np
import pytest

from cs336_bpe import BPEInputError, Tokenizer, corpus
from cs336_bpe.corpus import encode_file, open_token_file, token_dtype


@pytest.mark.parametrize("num_workers", [1, 2])
def test_encoded_file_equals_encode(tmp_path, data_dir, gpt2_tokenizer, num_workers):
    source = data_dir / "owt" / "owt_valid_sample.txt"
    text = source.read_text(encoding="utf-8")
    big = tmp_path / "big.txt"
    big.write_text(text * 8, encoding="utf-8")  # over the parallel threshold: real workers, many chunks
    metadata = encode_file(gpt2_tokenizer, big, tmp_path / "out.bin", num_workers=num_workers)
    tokens = open_token_file(tmp_path / "out.bin", expected_fingerprint=gpt2_tokenizer.fingerprint())
    assert tokens.dtype == np.uint16 and metadata["dtype"] == "uint16"
    assert tokens.tolist() == gpt2_tokenizer.encode(text * 8)
    assert metadata["num_tokens"] == len(tokens) and metadata["vocab_size"] == 50257
    saved = json.loads((tmp_path / "out.bin.json").read_text())
    assert saved == metadata


@pytest.mark.slow
def test_encoded_file_without_fork(tmp_path, data_dir, gpt2_tokenizer, monkeypatch):
    # Where fork is unavailable (macOS and Windows default to spawn), the workers receive the tokenizer pickled.
    spawn = multiprocessing.get_context("spawn")
    monkeypatch.setattr(corpus.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(corpus.multiprocessing, "get_context", lambda method=None: spawn)
    text = (data_dir / "owt" / "owt_valid_sample.txt").read_text(encoding="utf-8") * 8
    source = tmp_path / "big.txt"
    source.write_text(text, encoding="utf-8")
    metadata = encode_file(gpt2_tokenizer, source, tmp_path / "out.bin", num_workers=2)
    assert open_token_file(tmp_path / "out.bin").tolist() == gpt2_tokenizer.encode(text)
    assert metadata["tokenizer_fingerprint"] == gpt2_tokenizer.fingerprint()


def test_dtype_depends_on_vocab_size():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    assert token_dtype(1 << 32) == np.uint32
    with pytest.raises(BPEInputError, match="cannot hold"):
        token_dtype((1 << 32) + 1)


def test_large_vocab_uses_uint32(tmp_path):
    vocab = {b: bytes([b]) for b in range(256)} | {70000: b"<unused>"}  # a vocabulary past 65,536 ids
    tokenizer = Tokenizer(vocab, [], ["<|endoftext|>"])  # the special token gets id 70001
    source = tmp_path / "a.txt"
    source.write_text("hi<|endoftext|>", encoding="utf-8")
    metadata = encode_file(tokenizer, source, tmp_path / "a.bin")
    assert metadata["dtype"] == "uint32"
    assert open_token_file(tmp_path / "a.bin").tolist() == [104, 105, 70001]


def test_interrupted_encode_leaves_no_output(tmp_path, fixtures_dir, gpt2_tokenizer):
    output = tmp_path / "out.bin"
    output.write_bytes(b"previous result")

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_file(gpt2_tokenizer, fixtures_dir / "corpus.en", output, on_progress=interrupt)
    assert output.read_bytes() == b"previous result"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # and no temporary file is left


def test_token_file_checks(tmp_path, fixtures_dir, gpt2_tokenizer):
    encode_file(gpt2_tokenizer, fixtures_dir / "german.txt", tmp_path / "g.bin")
    with pytest.raises(BPEInputError, match="encode it again with this tokenizer"):
        open_token_file(tmp_path / "g.bin", expected_fingerprint="0" * 16)
    with open(tmp_path / "g.bin", "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(BPEInputError, match="metadata promises"):
        open_token_file(tmp_path / "g.bin")
    with pytest.raises(BPEInputError, match="has no metadata file"):
        open_token_file(tmp_path / "missing.bin")


def test_unwritable_output_is_a_clear_error(tmp_path, fixtures_dir, gpt2_tokenizer):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BPEInputError, match="cannot create output directory"):
        encode_file(gpt2_tokenizer, fixtures_dir / "german.txt", blocker / "sub" / "out.bin")
