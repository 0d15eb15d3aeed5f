"""A token file's metadata is checked field by field: every problem is one line naming the file, the field, the
value and the fix, never a traceback, and never a file read with the wrong type (a float16 "token file")."""

import json

import pytest
from click.testing import CliRunner

from cs336_bpe import BPEInputError, Tokenizer, encode_file, open_token_file, read_token_metadata
from cs336_bpe.cli import main

FIX = "re-create it with `cs336-bpe encode`"


def _byte_tokenizer() -> Tokenizer:
    """The 256 bytes and <|endoftext|>: 257 ids, so uint16 token files."""
    return Tokenizer({byte: bytes([byte]) for byte in range(256)}, [], ["<|endoftext|>"])


@pytest.fixture
def token_file(tmp_path):
    """A valid token file `a.bin`, and a function that rewrites its metadata."""
    source = tmp_path / "a.txt"
    source.write_text("hello world<|endoftext|>", encoding="utf-8")
    metadata = encode_file(_byte_tokenizer(), source, tmp_path / "a.bin")

    def rewrite(change) -> None:
        (tmp_path / "a.bin.json").write_text(json.dumps(change(dict(metadata))), encoding="utf-8")

    return tmp_path / "a.bin", rewrite


def _without(key):
    return lambda metadata: {name: value for name, value in metadata.items() if name != key}


def _with(**changes):
    return lambda metadata: {**metadata, **changes}


# (what is wrong, the metadata as written, what the one-line message must show besides the file and the fix)
BAD_METADATA = [
    ("a list, not an object", lambda metadata: [metadata], ["JSON array", "not an object"]),
    ("a string, not an object", lambda metadata: "uint16", ["JSON string", "'uint16'"]),
    ("no vocab_size", _without("vocab_size"), ["missing the field 'vocab_size'"]),
    ("no dtype nor fingerprint", lambda metadata: _without("dtype")(_without("tokenizer_fingerprint")(metadata)),
     ["missing the fields 'dtype', 'tokenizer_fingerprint'"]),
    ("dtype nonsense", _with(dtype="nonsense"), ["dtype 'nonsense'", "uint16 or uint32"]),
    ("dtype float16", _with(dtype="float16"), ["dtype 'float16'", "uint16 or uint32"]),
    ("dtype int16", _with(dtype="int16"), ["dtype 'int16'", "uint16 or uint32"]),
    ("dtype a number", _with(dtype=2), ["dtype 2", "uint16 or uint32"]),
    ("vocab_size a string", _with(vocab_size="abc"), ["vocab_size 'abc'", "non-negative integer"]),
    ("vocab_size a float", _with(vocab_size=257.0), ["vocab_size 257.0", "non-negative integer"]),
    ("num_tokens negative", _with(num_tokens=-1), ["num_tokens -1", "non-negative integer"]),
    ("num_tokens a boolean", _with(num_tokens=True), ["num_tokens True", "non-negative integer"]),
    ("num_tokens null", _with(num_tokens=None), ["num_tokens None", "non-negative integer"]),
    ("fingerprint a number", _with(tokenizer_fingerprint=123), ["tokenizer_fingerprint 123", "a string"]),
    ("dtype too narrow for the vocabulary", _with(vocab_size=70000), ["dtype 'uint16'", "vocab_size 70000"]),
]


@pytest.mark.parametrize("problem, change, shown", BAD_METADATA, ids=[case[0] for case in BAD_METADATA])
def test_bad_metadata_is_one_clear_line(token_file, problem, change, shown):
    path, rewrite = token_file
    rewrite(change)
    for read in (read_token_metadata, open_token_file):
        with pytest.raises(BPEInputError) as caught:
            read(path)
        message = str(caught.value)
        assert "\n" not in message, message
        assert f"{str(path) + '.json'!r}" in message and FIX in message, message
        for part in shown:
            assert part in message, message


def test_metadata_that_is_not_utf8_is_one_clear_line(token_file):
    path, _ = token_file
    (path.parent / "a.bin.json").write_bytes(b'{"dtype": "\xff"}')
    with pytest.raises(BPEInputError, match=r"is not valid UTF-8 JSON .*re-create it with `cs336-bpe encode`"):
        open_token_file(path)


def test_valid_metadata_still_opens(token_file):
    path, rewrite = token_file
    assert open_token_file(path).tolist() == [*b"hello world", 256]
    rewrite(_with(dtype="uint32", num_tokens=6))  # a wider dtype than needed is fine: 12 bytes = 6 uint32
    assert len(open_token_file(path)) == 6


def test_the_cli_prints_the_metadata_problem_as_one_error_line(token_file, tmp_path):
    path, rewrite = token_file
    _byte_tokenizer().save(tmp_path / "tok")
    rewrite(_with(dtype="float16"))
    result = CliRunner().invoke(main, ["decode", str(tmp_path / "tok"), str(path)])
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "dtype 'float16'" in error_lines[0] and FIX in error_lines[0]
    assert "Traceback" not in result.output
