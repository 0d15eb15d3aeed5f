"""The cs336-bpe command line, end to end on small files, and its errors."""

import numpy as np
import pytest
from click.testing import CliRunner

from cs336_bpe import Tokenizer, train_bpe
from cs336_bpe.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_train_encode_decode_stats(tmp_path, fixtures_dir, runner):
    source = fixtures_dir / "tinystories_sample.txt"
    result = runner.invoke(main, ["train", str(source), "--vocab-size", "300", "--out", str(tmp_path / "tok"),
                                  "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "trained vocab 300" in result.output and "peak memory" in result.output
    tokenizer = Tokenizer.load(tmp_path / "tok")
    assert tokenizer.vocab_size == 300 and tokenizer.special_tokens == ["<|endoftext|>"]

    result = runner.invoke(main, ["encode", str(tmp_path / "tok"), str(source), str(tmp_path / "t.bin")])
    assert result.exit_code == 0, result.output
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == tokenizer.encode(source.read_text())

    result = runner.invoke(main, ["decode", str(tmp_path / "tok"), str(tmp_path / "t.bin")])
    assert result.exit_code == 0, result.output
    assert result.stdout == source.read_text()

    result = runner.invoke(main, ["decode", str(tmp_path / "tok")], input="105 106 0")
    assert result.stdout == "hi<|endoftext|>"

    result = runner.invoke(main, ["stats", str(tmp_path / "tok"), "--text", str(source), "--compare",
                                  str(tmp_path / "tok"), "--top", "3"])
    assert result.exit_code == 0, result.output
    assert "bytes/token" in result.output and "300 tokens shared, 0 only here" in result.output


def test_train_max_pretokens_caps_the_distinct_pretokens(tmp_path, fixtures_dir, runner):
    source = fixtures_dir / "tinystories_sample.txt"
    result = runner.invoke(main, ["train", str(source), "--vocab-size", "400", "--out", str(tmp_path / "tok"),
                                  "--max-pretokens", "50", "--no-progress"])
    assert result.exit_code == 0, result.output
    capped = train_bpe(source, 400, ["<|endoftext|>"], max_pretokens=50)
    assert capped != train_bpe(source, 400, ["<|endoftext|>"])  # the cap is passed on and changes the result
    tokenizer = Tokenizer.load(tmp_path / "tok")
    assert tokenizer.merges == capped[1]

    result = runner.invoke(main, ["train", str(source), "--vocab-size", "400", "--out", str(tmp_path / "tok"),
                                  "--max-pretokens", "0"])
    assert result.exit_code == 2 and "--max-pretokens" in result.output


@pytest.mark.parametrize("command", ["train", "encode", "decode", "stats"])
def test_help(runner, command):
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_bad_input_exits_nonzero_with_message(tmp_path, fixtures_dir, runner):
    source = fixtures_dir / "german.txt"
    cases = [
        (["train", str(tmp_path / "nope.txt"), "--vocab-size", "300", "--out", str(tmp_path / "t")], "does not exist"),
        (["train", str(source), "--vocab-size", "10", "--out", str(tmp_path / "t")], "too small"),
        (["train", str(source), "--vocab-size", "300", "--special-token", "x", "--special-token", "x",
          "--out", str(tmp_path / "t")], "more than once"),
        (["encode", str(tmp_path / "no-tokenizer"), str(source), str(tmp_path / "o.bin")], "not a tokenizer"),
    ]
    for arguments, message in cases:
        result = runner.invoke(main, arguments)
        assert result.exit_code == 1, (arguments, result.output)
        assert message in result.output
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = runner.invoke(main, ["train", str(source), "--vocab-size", "300", "--out", str(blocker / "tok")])
    assert result.exit_code == 1 and "cannot create output directory" in result.output
    binary = tmp_path / "binary.bin"
    binary.write_bytes(bytes(range(256)))
    result = runner.invoke(main, ["train", str(binary), "--vocab-size", "300", "--out", str(tmp_path / "t")])
    assert result.exit_code == 1 and "looks binary" in result.output
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())
