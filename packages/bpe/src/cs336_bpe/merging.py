"""The BPE merge loop: count pairs, merge the most frequent, update only what changed.

The plain version is `reference.merges_by_recount` (handout §2.4), and this one returns the same merges. It
updates the pair counts by difference and keeps the pre-tokens in one numpy array, because recounting every pair
after every merge costs O(merges x corpus), far too slow for web text at a 32,000-token vocabulary.

    count every adjacent pair inside each pre-token, times the pre-token's count
    repeat until the vocabulary is full:
        take the most frequent pair (a, b) (ties: the greater pair of byte strings) and name it t
        in every pre-token that has (a, b): replace each (a, b) by t, left to right
        pair counts: - the pairs that overlapped a replaced (a, b), + the pairs that contain t

The textbook loop recounts every pair of every pre-token after each merge: O(merges x corpus). Three
observations make each step cheap, enough for web text at a 32,000-token vocabulary:

1. **Merging (a, b) changes only the pre-tokens that contain it, and in them only the pairs next to it.** An
   index ``pair -> pre-tokens that have it`` finds them; a pair that overlaps no replaced (a, b) is there
   before and after, so only the pairs that overlapped one go, and only the pairs with t come.
2. **A pair can only appear when one of its tokens is new.** Merging (a, b) into t creates adjacencies (x, t)
   and (t, y); it never creates a pair of two older tokens. So all pairs that contain t are *born* in the
   merge that creates t, and every other pair's count only goes down. The index entry of a pair is therefore
   written once, when the pair is born, and dropped when the pair is merged or its count reaches zero (it can
   list a pre-token that has since lost the pair: we look at that one and find nothing to do).
3. **Finding the most frequent pair need not scan all pairs.** A heap holds one entry per pair, keyed on
   (-count, tie-break key), pushed when the pair is born. Since counts only go down, the count stored in an
   entry is an *upper bound* of the current count. Pop the top: if its count is current, no other pair can
   beat it (their current counts are at most their stored ones); if it went down, push it back with its
   current count and pop again. (A heap that got a new entry on every change would pile up millions of
   outdated ones on web text.)

Storage is numpy, not a Python list per pre-token: all distinct pre-tokens sit end to end in one int32 array
(`PretokenTable`), each at a fixed start, its tokens shifted left in place as they merge. That is 4 bytes per
token where a list of ints costs 8 to 36, and it lets the first merges, which touch hundreds of thousands of
pre-tokens (``" t"``, ``"he"``, ``"in"`` ...), run as a dozen array operations over all of them at once
(`_merge_many`). Most later merges touch one to a few pre-tokens, where a plain Python loop is cheaper than
setting up array operations (`_merge_few`); both compute the same thing, and the tests hold both to
`reference.merges_by_recount`.

Ties break toward the lexicographically greater pair of byte strings (the handout's rule). heapq pops the
*smallest* entry, so each token gets a key that sorts in the *reverse* of its bytes' order (see `_descending_key`).

Worked example (handout §2.4, Sennrich et al.), pre-tokens split on whitespace, no special tokens:

    >>> counts = {tuple(word.encode()): n for word, n in {"low": 5, "lower": 2, "widest": 3, "newest": 6}.items()}
    >>> vocab = {i: bytes([i]) for i in range(256)}
    >>> [a + b" " + b for a, b in learn_merges(counts, vocab, 6)]
    [b's t', b'e st', b'o w', b'l ow', b'w est', b'n e']
"""

import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

# Maps byte c to 255 - c, so that comparing translated strings reverses the order of the original bytes.
_REVERSE_BYTE_ORDER = bytes(range(255, -1, -1))
# A merge whose pair the index lists in more pre-tokens than this runs as array operations (`_merge_many`);
# below it a Python loop is faster (measured on TinyStories and on diverse text: 8 to 64 are equally good).
MANY_WORDS = 32


def _descending_key(token: bytes) -> str:
    """A string that sorts in the opposite order of `token` under lexicographic comparison.

    Each byte c becomes chr(255 - c), and a terminator chr(256), greater than any of those, is appended so
    that a prefix (b"ab") sorts *after* its extensions (b"abc"), the reverse of b"ab" < b"abc".

    >>> sorted([b"ab", b"abc", b"b"], key=_descending_key)
    [b'b', b'abc', b'ab']
    """
    return token.translate(_REVERSE_BYTE_ORDER).decode("latin-1") + "\u0100"


@dataclass
class PretokenTable:
    """Distinct pre-tokens as token ids, end to end: pre-token w is ``tokens[starts[w]:starts[w] + lengths[w]]``
    and occurs ``counts[w]`` times in the text. Merges shorten pre-tokens in place; the slots they free at the
    end of a pre-token's space are never read again."""

    tokens: np.ndarray  # int32, every pre-token's tokens, concatenated
    starts: np.ndarray  # int64, where each pre-token begins in `tokens`
    lengths: np.ndarray  # int64, how many tokens each pre-token has now
    counts: np.ndarray  # int64, how often each pre-token occurs

    @classmethod
    def from_word_counts(cls, word_counts: dict[tuple[int, ...], int]) -> "PretokenTable":
        lengths = np.fromiter(map(len, word_counts), dtype=np.int64, count=len(word_counts))
        tokens = np.fromiter((token for word in word_counts for token in word), dtype=np.int32,
                             count=int(lengths.sum()))
        counts = np.fromiter(word_counts.values(), dtype=np.int64, count=len(word_counts))
        return cls(tokens, np.cumsum(lengths) - lengths, lengths, counts)

    @classmethod
    def from_pretoken_counts(cls, pretoken_counts: dict[str, int], byte_offset: int = 0) -> "PretokenTable":
        """From ``{pre-token string: count}``, byte b as token id ``byte_offset + b``. Builds no per-pre-token
        Python objects: the strings are joined and encoded once (on OWT-sized inputs, a tuple of ints per
        pre-token would take more memory than all the arrays here)."""
        lengths = np.fromiter((len(text) if text.isascii() else len(text.encode("utf-8"))
                               for text in pretoken_counts), dtype=np.int64, count=len(pretoken_counts))
        tokens = np.frombuffer("".join(pretoken_counts).encode("utf-8"), dtype=np.uint8).astype(np.int32)
        tokens += byte_offset
        counts = np.fromiter(pretoken_counts.values(), dtype=np.int64, count=len(pretoken_counts))
        return cls(tokens, np.cumsum(lengths) - lengths, lengths, counts)

    def gather(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tokens of `words`, end to end, and for each position whether the next one is in the same word.

        Returns (positions in `tokens`, the tokens there, has_next)."""
        lengths = self.lengths[words]
        ends = np.cumsum(lengths)
        # Position k of the gathered run belongs to word i at offset k - (ends[i] - lengths[i]).
        positions = np.repeat(self.starts[words] - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)
        has_next = np.ones(len(positions), dtype=bool)
        has_next[ends - 1] = False
        return positions, self.tokens[positions], has_next


def _first_of_each_run(sorted_values: np.ndarray) -> np.ndarray:
    """True where a value differs from the one before it (and at position 0): the first of each equal run."""
    first = np.empty(len(sorted_values), dtype=bool)
    first[:1] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=first[1:])
    return first


def _words_by_pair(pair_codes: np.ndarray, words: np.ndarray) -> dict[int, np.ndarray]:
    """Group (pair code, pre-token) entries, given in pre-token order, by pair: ``{code: the pre-tokens with
    it, sorted, each once}``."""
    order = np.argsort(pair_codes, kind="stable")  # stable: each pair's pre-tokens stay sorted
    pair_codes, words = pair_codes[order], words[order].astype(np.int32)
    del order
    once = _first_of_each_run(pair_codes) | _first_of_each_run(words)  # a pre-token with a pair twice: once
    pair_codes, words = pair_codes[once], words[once]
    first = np.flatnonzero(_first_of_each_run(pair_codes))
    ends = np.append(first[1:], len(words)).tolist()
    return {code: words[start:end] for code, start, end in zip(pair_codes[first].tolist(), first.tolist(), ends)}


def _pair_codes(tokens: np.ndarray, left: np.ndarray, base: int) -> np.ndarray:
    """The pairs starting at positions `left` of `tokens`, each as the code ``left token * base + right token``."""
    return tokens[left].astype(np.int64) * base + tokens[left + 1]


def _sum_by_code(codes: np.ndarray, amounts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct codes and the sum of `amounts` for each (exact integer sums, unlike bincount's floats)."""
    if len(codes) == 0:
        return codes, amounts
    order = np.argsort(codes)
    codes, amounts = codes[order], amounts[order]
    first = np.flatnonzero(_first_of_each_run(codes))
    return codes[first], np.add.reduceat(amounts, first)


def _count_all_pairs(table: PretokenTable, base: int) -> tuple[dict[int, int], dict[int, np.ndarray]]:
    """Every pair's count (times its pre-tokens' counts) and the pre-tokens that have it: the pairs born at
    the start. Returns ``({pair code: count}, {pair code: pre-tokens})``."""
    _, tokens, has_next = table.gather(np.arange(len(table.counts)))
    left = np.flatnonzero(has_next[:-1])  # where a pair starts: the next token is in the same pre-token
    codes = _pair_codes(tokens, left, base)
    word_of_pair = np.repeat(np.arange(len(table.counts), dtype=np.int32), table.lengths)[left]
    del _, tokens, has_next, left  # on web-sized inputs these temporaries are the peak of memory: free them early
    pair_codes, totals = _sum_by_code(codes, table.counts[word_of_pair])
    return dict(zip(pair_codes.tolist(), totals.tolist())), _words_by_pair(codes, word_of_pair)


def _merge_pair_in_word(word: list[int], first: int, second: int, merged: int) -> list[int] | None:
    """Replace every non-overlapping (first, second) in `word`, left to right; None if there is none."""
    result: list[int] = []
    position, length, found = 0, len(word), False
    while position < length:
        if position + 1 < length and word[position] == first and word[position + 1] == second:
            result.append(merged)
            position += 2
            found = True
        else:
            result.append(word[position])
            position += 1
    return result if found else None


# What merging one pair in a set of pre-tokens returns: the changed pair codes, their count changes, and the
# pairs born (those that contain the new token) with the pre-tokens that have them.
MergeResult = tuple[Iterable[int], Iterable[int], dict[int, np.ndarray]]


def _merge_few(table: PretokenTable, words: np.ndarray, first: int, second: int, merged: int,
               base: int) -> MergeResult:
    """Merge (first, second) in a few pre-tokens, one at a time in plain Python."""
    changes: dict[int, int] = defaultdict(int)
    born: dict[int, list[int]] = defaultdict(list)
    tokens, starts, lengths = table.tokens, table.starts, table.lengths
    for word in words.tolist():
        start = int(starts[word])
        old = tokens[start:start + lengths[word]].tolist()
        new = _merge_pair_in_word(old, first, second, merged)
        if new is None:  # lost the pair to an earlier merge since the index listed it
            continue
        tokens[start:start + len(new)] = new
        lengths[word] = len(new)
        count = int(table.counts[word])
        for left, right in zip(old, old[1:]):
            changes[left * base + right] -= count
        for left, right in zip(new, new[1:]):
            code = left * base + right
            changes[code] += count
            if (left == merged or right == merged) and word not in born[code][-1:]:  # once, if there twice
                born[code].append(word)
    changes = {code: change for code, change in changes.items() if change}  # most pairs are there before and after
    return changes.keys(), changes.values(), {code: np.array(words_, np.int32) for code, words_ in born.items()}


def _merge_many(table: PretokenTable, words: np.ndarray, first: int, second: int, merged: int,
                base: int) -> MergeResult:
    """Merge (first, second) in many pre-tokens at once, with array operations over all their tokens."""
    positions, old, has_next = table.gather(words)
    word_of_position = np.repeat(np.arange(len(words)), table.lengths[words])

    # Where the pair starts. When first == second, a run like "a a a" matches at overlapping places: as in
    # `_merge_pair_in_word` the merges go left to right, so only the 1st, 3rd, 5th ... of each run count.
    found = np.flatnonzero(has_next[:-1] & (old[:-1] == first) & (old[1:] == second))
    if first == second and len(found) > 1:
        run_starts = np.concatenate(([True], found[1:] != found[:-1] + 1))
        run_start_of = found[run_starts][np.cumsum(run_starts) - 1]
        found = found[(found - run_start_of) % 2 == 0]

    # The merged tokens: `merged` where the pair started, the pair's second token dropped.
    new = old.copy()
    new[found] = merged
    keep = np.ones(len(old), dtype=bool)
    keep[found + 1] = False
    new, word_of_new = new[keep], word_of_position[keep]
    table.lengths[words] -= np.bincount(word_of_position[found], minlength=len(words))
    new_positions, _, new_has_next = table.gather(words)
    table.tokens[new_positions] = new

    # Count changes. A pair that overlaps no merged occurrence is there before and after, so it cancels out.
    # What changes: - the old pairs that overlap an occurrence, + the new pairs, those that contain `merged`
    # (which are also the pairs born in this merge), each times its pre-token's count.
    touched = np.zeros(len(old), dtype=bool)
    touched[found] = touched[found + 1] = True
    lost_left = np.flatnonzero(has_next[:-1] & (touched[:-1] | touched[1:]))
    born_left = np.flatnonzero(new_has_next[:-1] & ((new[:-1] == merged) | (new[1:] == merged)))
    word_counts = table.counts[words]
    born_codes = _pair_codes(new, born_left, base)
    codes, changes = _sum_by_code(np.concatenate((_pair_codes(old, lost_left, base), born_codes)),
                                  np.concatenate((-word_counts[word_of_position[lost_left]],
                                                  word_counts[word_of_new[born_left]])))
    changed = changes != 0
    return (codes[changed].tolist(), changes[changed].tolist(),
            _words_by_pair(born_codes, words[word_of_new[born_left]]))


def learn_merges(
    word_counts: dict[tuple[int, ...], int] | PretokenTable,
    vocab: dict[int, bytes],
    num_merges: int,
    on_merge: Callable[[int], None] | None = None,
    many_words: int = MANY_WORDS,
) -> list[tuple[bytes, bytes]]:
    """Run up to `num_merges` BPE merges over pre-tokens given as token-id tuples with their counts (or as a
    `PretokenTable`, which is merged in place).

    `vocab` (id -> bytes) must hold every id used in `word_counts`; each merge adds one entry to it, with the
    next id ``len(vocab)``. Returns the merges in creation order. Stops early if no pair is left (every
    pre-token is already a single token). `many_words` picks `_merge_many` over `_merge_few` (tests set it to
    0 or to a huge number to check each alone).
    """
    table = word_counts if isinstance(word_counts, PretokenTable) else PretokenTable.from_word_counts(word_counts)
    num_words = len(table.counts)
    if num_words == 0 or num_merges <= 0:
        return []
    next_id = max(vocab) + 1  # merged tokens take the ids after every existing one (no gaps are assumed)
    base = next_id + num_merges  # larger than any token id, so left * base + right is one pair's code

    pair_counts, words_of_pair = _count_all_pairs(table, base)
    order_key = {token_id: _descending_key(token) for token_id, token in vocab.items()}

    def heap_entry(code: int, count: int) -> tuple[int, str, str, int]:
        a, b = divmod(code, base)
        return -count, order_key[a], order_key[b], code

    heap = [heap_entry(code, count) for code, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges:
        # Pop until the top's count is current (see the module docstring: stored counts are upper bounds).
        best = None
        while heap:
            negative_count, _, _, code = heapq.heappop(heap)
            count = pair_counts.get(code, 0)
            if count == -negative_count:
                best = code
                break
            if count > 0:
                heapq.heappush(heap, heap_entry(code, count))
        if best is None:
            break

        first, second = divmod(best, base)
        merged, next_id = next_id, next_id + 1
        vocab[merged] = vocab[first] + vocab[second]
        order_key[merged] = _descending_key(vocab[merged])
        merges.append((vocab[first], vocab[second]))

        words = words_of_pair.pop(best)
        merge = _merge_many if len(words) > many_words else _merge_few
        changed_codes, changes, born = merge(table, words, first, second, merged, base)

        for code, change in zip(changed_codes, changes):
            count = pair_counts.get(code, 0) + change
            if count:
                pair_counts[code] = count
            else:  # gone for good: a pair of two old tokens never comes back
                del pair_counts[code]
                words_of_pair.pop(code, None)
        words_of_pair.update(born)
        for code in born:
            heapq.heappush(heap, heap_entry(code, pair_counts[code]))
        if on_merge is not None:
            on_merge(len(merges))
    return merges
