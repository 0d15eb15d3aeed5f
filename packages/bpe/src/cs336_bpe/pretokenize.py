"""Pre-tokenization: split text into the pieces BPE works inside of.

BPE never merges across pre-token boundaries. GPT-2's regex decides those boundaries: contractions, runs of
letters or digits with an optional leading space, runs of other symbols, and whitespace.

    >>> PRETOKEN_RE.findall("some text that i'll pre-tokenize")
    ['some', ' text', ' that', ' i', "'ll", ' pre', '-', 'tokenize']

Special tokens (like ``<|endoftext|>``) are split off first: they are hard boundaries, so no pre-token ever
spans one, and when special tokens overlap the longest one wins.

The speed trick: fragments
--------------------------
Running the regex over every byte of a corpus costs about 1 microsecond per pre-token in Python. But prose
repeats itself: a 4 MB TinyStories file has about 760,000 words and only about 32,000 distinct ones. So we
first cut the text with a much cheaper, C-speed split at *fragment boundaries*, count or cache the distinct
fragments, and run the GPT-2 regex once per distinct fragment.

A fragment boundary is a space followed by a non-whitespace character, as in ``"hello| world"``. That point is
always a pre-token boundary, and the pre-tokens on either side do not depend on the other side:

- no pre-token contains a non-whitespace character *and then* a space (spaces only ever lead a pre-token), and
  whitespace-only pre-tokens never swallow a space that is followed by a non-whitespace character (the
  ``\\s+(?!\\S)`` branch backs off exactly that space), so a pre-token starts at that space;
- the regex has no look-behind, and the last pre-token before the cut ends at the same place whether the text
  goes on or not.

Splitting at those spaces and re-attaching the space to the fragment after it therefore yields exactly the
same pre-tokens as running the regex over the whole text. The tests check this against plain ``findall`` on
real corpora and on random Unicode strings. (Python's ``\\S`` treats U+001C..U+001F as whitespace where the
``regex`` module does not; that only means fewer cuts, which is always safe.)
"""

import re
from collections import Counter

import regex

GPT2_PRETOKEN_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(GPT2_PRETOKEN_PATTERN)

# A space followed by non-whitespace; the space itself belongs to the fragment on its right.
FRAGMENT_BOUNDARY_RE = re.compile(r" (?=\S)")


def special_tokens_pattern(special_tokens: list[str], capture: bool = False) -> re.Pattern[str] | None:
    """A regex matching any special token, longest first so that overlapping tokens resolve to the longest.

    >>> special_tokens_pattern(["<|eot|>", "<|eot|><|eot|>"]).findall("a<|eot|><|eot|>b")
    ['<|eot|><|eot|>']
    """
    if not special_tokens:
        return None
    alternatives = "|".join(re.escape(token) for token in sorted(special_tokens, key=len, reverse=True))
    return re.compile(f"({alternatives})" if capture else alternatives)


def pretokenize(text: str) -> list[str]:
    """The reference pre-tokenizer: GPT-2's regex over the whole text (no special-token handling)."""
    return PRETOKEN_RE.findall(text)


def split_fragments(text: str) -> list[str]:
    """Cut `text` at fragment boundaries. Every fragment but the first lost its leading space to the split.

    >>> split_fragments("Once upon  a time\\n the end")
    ['Once', 'upon ', 'a', 'time\\n', 'the', 'end']
    """
    return FRAGMENT_BOUNDARY_RE.split(text)


def count_pretokens(text: str, special_re: re.Pattern[str] | None = None) -> Counter[str]:
    """Count the pre-tokens of `text`, skipping special tokens (they are never part of a pre-token).

    Equal to ``Counter(t for segment in text.split(special) for t in pretokenize(segment))``, but the regex
    runs once per distinct fragment instead of once per word (see the module docstring).

    >>> count_pretokens("the cat<|eot|>the dog", special_tokens_pattern(["<|eot|>"]))
    Counter({'the': 2, ' cat': 1, ' dog': 1})
    """
    segments = special_re.split(text) if special_re is not None else [text]
    first_fragments: Counter[str] = Counter()  # fragments at the start of a segment: no leading space
    spaced_fragments: Counter[str] = Counter()  # all others: the split removed their leading space
    for segment in segments:
        fragments = split_fragments(segment)
        first_fragments[fragments[0]] += 1
        spaced_fragments.update(fragments[1:])

    pretoken_counts: Counter[str] = Counter()
    for fragment, count in first_fragments.items():
        for pretoken in PRETOKEN_RE.findall(fragment):
            pretoken_counts[pretoken] += count
    for fragment, count in spaced_fragments.items():
        for pretoken in PRETOKEN_RE.findall(" " + fragment):
            pretoken_counts[pretoken] += count
    return pretoken_counts
