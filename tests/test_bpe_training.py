"""BPE training: the handout's worked example, the course reference, the plain reference and bad input."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_bpe import BPEInputError, reference, train_bpe
from cs336_bpe.merging import learn_merges
from cs336_bpe.training import initial_vocab
from tests.conftest import gpt2_byte_decoder


def test_sennrich_example_step_by_step():
    """Handout §2.4: {low: 5, lower: 2, widest: 3, newest: 6}, whitespace pre-tokenization."""
    counts = {"low": 5, "lower": 2, "widest": 3, "newest": 6}
    vocab = initial_vocab(["<|endoftext|>"])
    word_counts = {tuple(1 + b for b in word.encode()): n for word, n in counts.items()}
    merges = learn_merges(word_counts, vocab, 12)
    assert [f"{a.decode()} {b.decode()}" for a, b in merges] == [
        "s t", "e st", "o w", "l ow", "w est", "n e", "ne west", "w i", "wi d", "wid est", "low e", "lowe r",
    ]
    # With 6 merges the new vocabulary entries are st, est, ow, low, west, ne.
    vocab6 = initial_vocab(["<|endoftext|>"])
    learn_merges(word_counts, vocab6, 6)
    assert [vocab6[i] for i in range(257, 263)] == [b"st", b"est", b"ow", b"low", b"west", b"ne"]
    assert vocab6[0] == b"<|endoftext|>" and len(vocab6) == 263


def test_ties_prefer_lexicographically_greater_pair():
    """Handout: among tied pairs (A,B), (A,C), (B,ZZ), (BA,A), merge (BA, A)."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256], vocab[257] = b"ZZ", b"BA"
    A, B, C = ord("A"), ord("B"), ord("C")
    word_counts = {(A, B): 1, (A, C): 1, (B, 256): 1, (257, A): 1}
    assert learn_merges(word_counts, vocab, 1) == [(b"BA", b"A")]


def test_prefix_tie_break():
    """b"ab" vs b"abc" as the left token: the longer one is lexicographically greater."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256], vocab[257] = b"ab", b"abc"
    word_counts = {(256, ord("x")): 3, (257, ord("x")): 3}
    assert learn_merges(word_counts, vocab, 1) == [(b"abc", b"x")]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(alphabet="abcde ", min_size=1, max_size=8), st.integers(1, 20), min_size=1,
                       max_size=25), st.integers(1, 30))
def test_incremental_merges_equal_plain_recount(words, num_merges):
    word_counts = {tuple(word.encode()): count for word, count in words.items()}
    byte_words = {tuple(bytes([b]) for b in word): count for word, count in word_counts.items()}
    expected = reference.merges_by_recount(byte_words, num_merges)
    vocab = {i: bytes([i]) for i in range(256)}
    assert learn_merges(word_counts, vocab, num_merges) == expected
    assert len(vocab) == 256 + len(expected)


def _reference(fixtures_dir):
    decoder = gpt2_byte_decoder()
    to_bytes = lambda token: bytes(decoder[c] for c in token)  # noqa: E731
    merges = [tuple(to_bytes(part) for part in line.rstrip("\n").split(" "))
              for line in (fixtures_dir / "train-bpe-reference-merges.txt").read_text(encoding="utf-8").splitlines()]
    vocab = json.loads((fixtures_dir / "train-bpe-reference-vocab.json").read_text(encoding="utf-8"))
    return {to_bytes(token) for token in vocab}, merges


@pytest.mark.parametrize("num_workers", [1, 2])
def test_reproduces_course_reference(fixtures_dir, num_workers):
    vocab, merges = train_bpe(fixtures_dir / "corpus.en", 500, ["<|endoftext|>"], num_workers=num_workers)
    reference_tokens, reference_merges = _reference(fixtures_dir)
    assert merges == reference_merges
    assert set(vocab.values()) == reference_tokens
    assert sorted(vocab) == list(range(500))
    assert vocab[0] == b"<|endoftext|>" and vocab[1 + ord("a")] == b"a"


def test_special_tokens_never_merged(fixtures_dir):
    vocab, merges = train_bpe(fixtures_dir / "tinystories_sample.txt", 400, ["<|endoftext|>"])
    assert not any(b"<|" in left + right for left, right in merges)
    assert list(vocab.values()).count(b"<|endoftext|>") == 1


@pytest.mark.slow
def test_parallel_equals_single_process(tmp_path, data_dir):
    # Above the 1 MiB threshold, so several workers and many chunk boundaries are really used.
    text = (data_dir / "tinystories" / "valid.txt").read_text(encoding="utf-8")
    path = tmp_path / "text.txt"
    path.write_text(text * 2, encoding="utf-8")
    single = train_bpe(path, 1000, ["<|endoftext|>"], num_workers=1)
    parallel = train_bpe(path, 1000, ["<|endoftext|>"], num_workers=2)
    assert single == parallel


def test_training_equals_the_plain_reference(tmp_path):
    """Special tokens, runs of whitespace, non-ASCII, digits: the same vocabulary and merges as the plain
    recount-everything trainer (`reference.train_bpe`), which reads the text whole."""
    text = "the cat sat.<|endoftext|>  the   dog\n\n sat!<|endoftext|>héllo wörld 123 4567 the cat's hat"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    assert train_bpe(path, 300, ["<|endoftext|>"]) == reference.train_bpe(text, 300, ["<|endoftext|>"])


def test_plain_reference_reproduces_the_course_reference(fixtures_dir):
    text = (fixtures_dir / "corpus.en").read_text(encoding="utf-8")
    vocab, merges = reference.train_bpe(text, 500, ["<|endoftext|>"])
    assert (set(vocab.values()), merges) == _reference(fixtures_dir)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"", "is empty"), (b"abc\x00def", "looks binary"),
     (b"caf\xe9 latin-1", "not valid UTF-8")],
)
def test_bad_input_files(tmp_path, content, message):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BPEInputError, match=message):
        train_bpe(path, 300, [])


def test_non_utf8_error_names_offset(tmp_path):
    path = tmp_path / "input.txt"
    path.write_bytes(b"hello world " * 10 + b"\xff")
    with pytest.raises(BPEInputError, match="offset 120"):
        train_bpe(path, 300, [])


@pytest.mark.parametrize(
    ("vocab_size", "special_tokens", "message"),
    [(256, ["<|endoftext|>"], "at least 256"), (100, [], "too small"), (300, ["a", "a"], "more than once"),
     (300, [""], "non-empty")],
)
def test_bad_parameters(tmp_path, vocab_size, special_tokens, message):
    path = tmp_path / "input.txt"
    path.write_text("some text", encoding="utf-8")
    with pytest.raises(BPEInputError, match=message):
        train_bpe(path, vocab_size, special_tokens)


def test_stops_when_nothing_left_to_merge(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("ab ab", encoding="utf-8")
    vocab, merges = train_bpe(path, 1000, [])
    assert merges == [(b"a", b"b"), (b" ", b"ab")]
    assert len(vocab) == 258
