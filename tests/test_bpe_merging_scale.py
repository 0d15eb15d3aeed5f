"""The merge loop at scale: both of its merge paths (array operations for many pre-tokens, a Python loop for a
few) against the recount-everything reference, the array table built from pre-token strings, and the cap on
distinct pre-tokens."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_bpe import BPEInputError, reference, train_bpe
from cs336_bpe.counting import count_file_pretokens, drop_rarest
from cs336_bpe.merging import PretokenTable, learn_merges
from cs336_bpe.training import initial_vocab

ALL_ARRAYS, ALL_PYTHON = 0, 10**9  # `many_words` thresholds that force one path for every merge

# Few letters, so that words share pairs and runs like "aaaa" (overlapping pairs) are common.
corpora = st.dictionaries(st.text(alphabet="aab c", min_size=1, max_size=12), st.integers(1, 50), min_size=1,
                          max_size=40)


def _bytes_words(word_counts):
    return {tuple(bytes([b]) for b in word): count for word, count in word_counts.items()}


@settings(max_examples=150, deadline=None)
@given(corpora, st.integers(1, 40), st.sampled_from([ALL_ARRAYS, 1, 3, ALL_PYTHON]))
def test_both_merge_paths_equal_plain_recount(words, num_merges, many_words):
    word_counts = {tuple(word.encode()): count for word, count in words.items()}
    expected = reference.merges_by_recount(_bytes_words(word_counts), num_merges)
    vocab = {i: bytes([i]) for i in range(256)}
    assert learn_merges(word_counts, vocab, num_merges, many_words=many_words) == expected
    assert len(vocab) == 256 + len(expected)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=6), st.integers(1, 9), min_size=1, max_size=30),
       st.integers(1, 30))
def test_table_from_strings_equals_table_from_tuples(pretoken_counts, num_merges):
    """Any Unicode (multi-byte UTF-8), with the byte ids shifted past one special token."""
    table = PretokenTable.from_pretoken_counts(pretoken_counts, byte_offset=1)
    word_counts = {tuple(1 + b for b in text.encode()): n for text, n in pretoken_counts.items()}
    assert table.tokens.tolist() == [token for word in word_counts for token in word]
    expected = learn_merges(word_counts, initial_vocab(["<|endoftext|>"]), num_merges)
    assert learn_merges(table, initial_vocab(["<|endoftext|>"]), num_merges, many_words=ALL_ARRAYS) == expected


@pytest.mark.parametrize("many_words", [ALL_ARRAYS, ALL_PYTHON])
def test_runs_of_one_token_merge_left_to_right(many_words):
    """'aaaaa' merges (a, a) at 0-1 and 2-3, leaving the last a; then (aa, aa), and (aaaa, a)."""
    word_counts = {tuple(b"aaaaa"): 1, tuple(b"aaa"): 2, tuple(b"ba"): 1}
    vocab = {i: bytes([i]) for i in range(256)}
    merges = learn_merges(word_counts, vocab, 4, many_words=many_words)
    assert merges == reference.merges_by_recount(_bytes_words(word_counts), 4)
    assert merges[:2] == [(b"a", b"a"), (b"aa", b"a")]


@pytest.mark.parametrize("many_words", [ALL_ARRAYS, ALL_PYTHON])
def test_ties_prefer_greater_pair_on_both_paths(many_words):
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256], vocab[257] = b"ZZ", b"BA"
    A, B, C = ord("A"), ord("B"), ord("C")
    word_counts = {(A, B): 1, (A, C): 1, (B, 256): 1, (257, A): 1}
    assert learn_merges(word_counts, vocab, 1, many_words=many_words) == [(b"BA", b"A")]


def test_real_text_both_paths(fixtures_dir):
    """corpus.en at vocab 500 (the course reference's setting) with every merge on one path."""
    from cs336_bpe.pretokenize import count_pretokens, special_tokens_pattern

    text = (fixtures_dir / "corpus.en").read_text(encoding="utf-8")
    counts = count_pretokens(text, special_tokens_pattern(["<|endoftext|>"]))
    results = []
    for many_words in (ALL_ARRAYS, 32, ALL_PYTHON):
        table = PretokenTable.from_pretoken_counts(counts, byte_offset=1)
        results.append(learn_merges(table, initial_vocab(["<|endoftext|>"]), 500 - 257, many_words=many_words))
    assert results[0] == results[1] == results[2]


def test_merging_updates_the_table_in_place():
    table = PretokenTable.from_pretoken_counts(Counter({"abab": 2, "ab": 1}))
    merges = learn_merges(table, {i: bytes([i]) for i in range(256)}, 2)
    assert merges == [(b"a", b"b"), (b"ab", b"ab")]
    words = [table.tokens[s:s + n].tolist() for s, n in zip(table.starts, table.lengths)]
    assert words == [[257], [256]]
    assert np.array_equal(table.counts, [2, 1])


def test_drop_rarest_keeps_exactly_the_cap_breaking_ties_toward_the_greater_pretoken():
    counts = Counter({"the": 9, "cat": 2, "sat": 2, "on": 3, "zyx": 1})
    drop_rarest(counts, 3)  # the 3rd largest count is 2, shared by cat and sat: the greater one, sat, stays
    assert counts == Counter({"the": 9, "on": 3, "sat": 2})
    drop_rarest(counts, 5)  # under the cap: nothing to do
    assert counts == Counter({"the": 9, "on": 3, "sat": 2})
    # all tied (the case that used to drop everything): exactly the cap remains, the same whatever the order
    words = [f"w{i:04d}" for i in range(3000)]
    forward, backward = Counter(dict.fromkeys(words, 1)), Counter(dict.fromkeys(reversed(words), 1))
    drop_rarest(forward, 100)
    drop_rarest(backward, 100)
    assert forward == backward and len(forward) == 100 and min(forward) == "w2900"


@pytest.fixture
def owt_file(tmp_path, data_dir):
    """1.2 MB of web text: above the size where counting starts worker processes."""
    text = (data_dir / "owt" / "owt_valid_sample.txt").read_text(encoding="utf-8")
    path = tmp_path / "owt.txt"
    path.write_text(text * 8, encoding="utf-8")
    return path


def test_capped_counting_is_the_same_with_any_number_of_workers(owt_file):
    exact = count_file_pretokens(owt_file, ["<|endoftext|>"], num_workers=1)
    single = count_file_pretokens(owt_file, ["<|endoftext|>"], num_workers=1, max_pretokens=2_000)
    assert count_file_pretokens(owt_file, ["<|endoftext|>"], num_workers=2, max_pretokens=2_000) == single
    assert 0 < len(single) <= 2_000 < len(exact)
    assert all(count <= exact[pretoken] for pretoken, count in single.items())
    # The most frequent pre-tokens are all kept, with their counts exact (they were never dropped).
    for pretoken, count in exact.most_common(100):
        assert single[pretoken] == count


def test_train_bpe_with_a_cap(owt_file):
    exact = train_bpe(owt_file, 600, ["<|endoftext|>"], num_workers=1)
    assert train_bpe(owt_file, 600, ["<|endoftext|>"], num_workers=2, max_pretokens=10**9) == exact
    vocab, merges = train_bpe(owt_file, 600, ["<|endoftext|>"], num_workers=2, max_pretokens=2_000)
    # Keeping under a third of the 6,700 distinct pre-tokens shifts counts enough to swap near-ties, and changes
    # some late merges (81% in common here), not the first ones.
    assert len(vocab) == 600 and merges[0] == exact[1][0]
    assert len(set(merges) & set(exact[1])) >= 0.75 * len(merges)
    with pytest.raises(BPEInputError, match="max_pretokens 0 must be a positive integer"):
        train_bpe(owt_file, 600, ["<|endoftext|>"], max_pretokens=0)
