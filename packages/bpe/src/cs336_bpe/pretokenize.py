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

The cut itself is a plain ``str.split(" ")``, about twice as fast as ``re.split``: first every space that is
*not* a boundary (one followed by whitespace or by the end of the text) is swapped for `SPACE_MARKER`, so that
only boundary spaces are left to split at. `unmark_spaces` puts them back. The marker is U+D800, a lone
surrogate: no text decoded from UTF-8 can contain it, and text that does could not be encoded anyway.
"""

import re
from collections import Counter
from collections.abc import Iterator

import regex

from cs336_bpe.errors import BPEInputError

GPT2_PRETOKEN_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(GPT2_PRETOKEN_PATTERN)
# The same pattern for ASCII-only text, in Python's `re`, whose calls cost about half as much as `regex`'s. On
# ASCII the classes agree: \p{L} is [A-Za-z], \p{N} is [0-9], and both modules' \s is [\t\n\v\f\r ].
GPT2_PRETOKEN_PATTERN_ASCII = r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
PRETOKEN_ASCII_RE = re.compile(GPT2_PRETOKEN_PATTERN_ASCII, re.ASCII)

# A space followed by non-whitespace; the space itself belongs to the fragment on its right.
FRAGMENT_BOUNDARY_RE = re.compile(r" (?=\S)")
# Every other space; split_fragments hides these behind SPACE_MARKER.
_NON_BOUNDARY_SPACE_RE = re.compile(r" (?!\S)")
SPACE_MARKER = "\ud800"


def validate_special_tokens(special_tokens: list[str] | None) -> list[str]:
    """Reject empty, non-string and duplicate special tokens; return them as a list.

    Each entry point runs it once (`train_bpe`, `Tokenizer`); what they call trusts the list it is given.
    """
    special_tokens = list(special_tokens or [])
    for token in special_tokens:
        if not isinstance(token, str) or token == "":
            raise BPEInputError(f"special token {token!r} is not a non-empty string; remove it or give text")
    duplicates = sorted({token for token in special_tokens if special_tokens.count(token) > 1})
    if duplicates:
        raise BPEInputError(f"special tokens {duplicates} are given more than once; list each token once")
    return special_tokens


def special_tokens_pattern(
    special_tokens: list[str], capture: bool = False, as_bytes: bool = False
) -> re.Pattern | None:
    """A regex matching any special token, longest first so that overlapping tokens resolve to the longest.

    `capture`: one group around the match (``split`` then keeps the tokens). `as_bytes`: a pattern over the
    UTF-8 bytes of a file, for finding chunk boundaries (`parallel.chunking`), instead of over text.

    >>> special_tokens_pattern(["<|eot|>", "<|eot|><|eot|>"]).findall("a<|eot|><|eot|>b")
    ['<|eot|><|eot|>']
    >>> special_tokens_pattern(["<|eot|>"], as_bytes=True).findall(b"a<|eot|>b")
    [b'<|eot|>']
    """
    if not special_tokens:
        return None
    if as_bytes:
        # Longest in bytes: with multi-byte characters, that order can differ from the order in characters.
        encoded = sorted((token.encode("utf-8") for token in special_tokens), key=len, reverse=True)
        alternatives = b"|".join(map(re.escape, encoded))
        return re.compile(b"(" + alternatives + b")" if capture else alternatives)
    alternatives = "|".join(re.escape(token) for token in sorted(special_tokens, key=len, reverse=True))
    return re.compile(f"({alternatives})" if capture else alternatives)


def pretokenize(text: str) -> list[str]:
    """The reference pre-tokenizer: GPT-2's regex over the whole text (no special-token handling)."""
    return PRETOKEN_RE.findall(text)


def split_fragments(text: str) -> list[str]:
    """Cut `text` at fragment boundaries. Every fragment but the first lost its leading space to the split, and
    the spaces left inside a fragment read `SPACE_MARKER` (`unmark_spaces` restores them).

    >>> [unmark_spaces(fragment) for fragment in split_fragments("Once upon  a time\\n the end")]
    ['Once', 'upon ', 'a', 'time\\n', 'the', 'end']
    """
    if not text.isascii() and SPACE_MARKER in text:  # isascii() is free: CPython records it with each string
        raise BPEInputError(
            f"text contains the lone surrogate U+D800 at index {text.index(SPACE_MARKER)}; it has no UTF-8 "
            "encoding, so it cannot be tokenized (was the text decoded with errors='surrogatepass'?)"
        )
    return _NON_BOUNDARY_SPACE_RE.sub(SPACE_MARKER, text).split(" ")


def split_blocks(text: str, block_chars: int) -> Iterator[str]:
    """Cut `text` at fragment boundaries into blocks of about `block_chars` characters (at least that many,
    except the last), which pre-tokenize independently. Every block but the first starts with its boundary space.

    >>> list(split_blocks("Once upon a time", 4))
    ['Once', ' upon', ' a time']
    """
    start = 0
    while len(text) - start > block_chars:
        boundary = FRAGMENT_BOUNDARY_RE.search(text, start + max(block_chars, 1))  # always after `start`
        if boundary is None:
            break
        yield text[start:boundary.start()]
        start = boundary.start()
    yield text[start:]


def unmark_spaces(fragment: str) -> str:
    """A fragment from `split_fragments` as it appeared in the text (without the boundary space before it)."""
    return fragment.replace(SPACE_MARKER, " ")


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
        for pretoken in PRETOKEN_RE.findall(unmark_spaces(fragment)):
            pretoken_counts[pretoken] += count
    for fragment, count in spaced_fragments.items():
        for pretoken in PRETOKEN_RE.findall(" " + unmark_spaces(fragment)):
            pretoken_counts[pretoken] += count
    return pretoken_counts
