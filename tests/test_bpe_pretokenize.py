"""The fragment shortcut must give exactly GPT-2's regex pre-tokens; chunking must not change results."""

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_bpe import BPEInputError, reference
from cs336_bpe.counting import count_file_pretokens
from cs336_bpe.parallel.chunking import chunk_spans, read_span
from cs336_bpe.pretokenize import (
    FRAGMENT_BOUNDARY_RE,
    PRETOKEN_ASCII_RE,
    PRETOKEN_RE,
    count_pretokens,
    pretokenize,
    special_tokens_pattern,
    split_blocks,
    split_fragments,
    unmark_spaces,
)

SPECIALS = ["<|endoftext|>", "<|endoftext|><|endoftext|>", "<s>"]
# Characters chosen to hit every branch of the regex and every whitespace subtlety.
TRICKY = st.lists(
    st.sampled_from(list("ab Zé1٣'s ll\n\t\r\x0b\x0c\x1c\x1f\u00a0\u3000\u2028!,.-<|>") + ["<|endoftext|>", "<s>"]),
    max_size=60,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(TRICKY)
def test_fragment_counting_equals_regex_on_tricky_text(text):
    assert count_pretokens(text, special_tokens_pattern(SPECIALS)) == reference.pretoken_counts(text, SPECIALS)
    assert count_pretokens(text) == Counter(pretokenize(text))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_fragment_counting_equals_regex_on_any_unicode(text):
    assert count_pretokens(text) == Counter(pretokenize(text))


@settings(max_examples=400, deadline=None)
@given(st.one_of(TRICKY, st.text(max_size=80)))
def test_split_fragments_cuts_exactly_where_the_boundary_regex_does(text):
    # str.split after hiding the other spaces must equal re.split at " (?=\S)", marker undone.
    assert [unmark_spaces(fragment) for fragment in split_fragments(text)] == FRAGMENT_BOUNDARY_RE.split(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(TRICKY, st.text(max_size=80)), st.integers(min_value=0, max_value=20))
def test_blocks_cover_the_text_and_cut_only_at_fragment_boundaries(text, block_chars):
    blocks = list(split_blocks(text, block_chars))
    assert "".join(blocks) == text
    assert all(len(block) >= block_chars for block in blocks[:-1])
    pretokens_by_block = [token for block in blocks for token in pretokenize(block)]
    assert pretokens_by_block == pretokenize(text)


def test_split_fragments_rejects_the_space_marker():
    with pytest.raises(BPEInputError, match="U\\+D800 at index 2"):
        split_fragments("a \ud800 b")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_ascii_pattern_equals_gpt2_pattern_on_ascii_text(text):
    assert PRETOKEN_ASCII_RE.findall(text) == PRETOKEN_RE.findall(text)


def test_ascii_pattern_equals_gpt2_pattern_on_every_ascii_triple():
    # A deterministic sweep: every ASCII character before every other, then one of each class.
    characters = [chr(code) for code in range(128)]
    for first in characters:
        text = "".join(first + second + third for second in characters for third in "a1 \n'!")
        assert PRETOKEN_ASCII_RE.findall(text) == PRETOKEN_RE.findall(text), repr(first)


@settings(max_examples=200, deadline=None)
@given(TRICKY, st.lists(st.sampled_from(["<|endoftext|>", "<s>", "é<s>", "<s>é", "\u3000", "ab"]), min_size=1,
                        max_size=4, unique=True))
def test_special_token_regex_over_bytes_finds_what_the_text_regex_finds(text, specials):
    """Chunking looks for special tokens in a file's bytes, `count_pretokens` in its text: one builder, one answer."""
    over_text = special_tokens_pattern(specials, capture=True).split(text)
    over_bytes = special_tokens_pattern(specials, capture=True, as_bytes=True).split(text.encode("utf-8"))
    assert [part.encode("utf-8") for part in over_text] == over_bytes


@pytest.mark.parametrize("relative", ["tinystories/valid.txt", "owt/owt_valid_sample.txt"])
def test_fragment_counting_on_real_corpora(data_dir, relative):
    text = (data_dir / relative).read_text(encoding="utf-8")
    specials = ["<|endoftext|>"]
    assert count_pretokens(text, special_tokens_pattern(specials)) == reference.pretoken_counts(text, specials)


def test_pretokenize_example_from_handout():
    assert pretokenize("some text that i'll pre-tokenize") == [
        "some", " text", " that", " i", "'ll", " pre", "-", "tokenize"]


@settings(max_examples=100, deadline=None)
@given(text=TRICKY, chunk_bytes=st.integers(1, 40))
def test_chunks_cover_file_and_do_not_change_counts(tmp_path_factory, text, chunk_bytes):
    path = tmp_path_factory.mktemp("chunks") / "text.txt"
    path.write_bytes(text.encode("utf-8"))
    if not text:
        return
    spans = chunk_spans(path, chunk_bytes, SPECIALS)
    assert spans[0][0] == 0 and spans[-1][1] == len(text.encode("utf-8"))
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert len(spans) <= -(-len(text.encode("utf-8")) // chunk_bytes)  # never more chunks than asked for
    pieces = [read_span(path, start, end) for start, end in spans]
    assert "".join(pieces) == text
    pattern = special_tokens_pattern(SPECIALS)
    pieces_counts = sum((count_pretokens(piece, pattern) for piece in pieces), Counter())
    assert pieces_counts == reference.pretoken_counts(text, SPECIALS)


def test_chunk_boundaries_are_the_first_safe_places_after_multiples_of_the_chunk_size(tmp_path):
    # Targets are measured from the file's start, not from the previous boundary: the small overshoot of each
    # boundary does not add up, and the file gets as many chunks as asked for.
    text = "abcdef " * 300 + "end"
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    safe_places = [match.start() for match in re.finditer(r" (?=\S)", text)]
    expected = [0] + [next(place for place in safe_places if place >= target) for target in range(100, 2100, 100)]
    assert [start for start, _ in chunk_spans(path, 100, [])] == expected


def test_chunks_start_at_special_tokens(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("one story here.<|endoftext|>another story.<|endoftext|>third", encoding="utf-8")
    spans = chunk_spans(path, 5, ["<|endoftext|>"])
    assert [read_span(path, *span) for span in spans] == [
        "one story here.", "<|endoftext|>another story.", "<|endoftext|>third"]


def test_count_file_in_parallel_equals_single(tmp_path, data_dir):
    text = (data_dir / "owt" / "owt_valid_sample.txt").read_text(encoding="utf-8")
    path = tmp_path / "owt.txt"
    path.write_text(text * 8, encoding="utf-8")  # > 1 MiB: really parallel
    single = count_file_pretokens(path, ["<|endoftext|>"], num_workers=1)
    assert count_file_pretokens(path, ["<|endoftext|>"], num_workers=2) == single
    assert single == Counter({token: 8 * n for token, n in reference.pretoken_counts(text, ["<|endoftext|>"]).items()})
