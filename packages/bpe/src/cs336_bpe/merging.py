"""The BPE merge loop, with incrementally updated pair counts and a heap to find the best pair.

The textbook loop recounts every adjacent pair of every pre-token after each merge: O(merges x corpus). Two
observations make it fast:

1. Merging (a, b) only changes the pairs inside pre-tokens that contain (a, b). We keep an index
   ``pair -> pre-tokens containing it`` and update the counts of just those pre-tokens' pairs.
2. Finding the most frequent pair need not scan all pairs: a heap keyed on (-count, tie-break key) gives it in
   O(log n). When a count changes we push a fresh entry and leave the old one in place; an entry whose count no
   longer matches the current count is stale and skipped when popped ("lazy deletion").

Ties break toward the lexicographically greater pair of byte strings (the handout's rule). heapq pops the
*smallest* entry, so each token gets a key that sorts in the *reverse* of its bytes' order (see `_descending_key`).

Worked example (handout §2.4, Sennrich et al.), pre-tokens split on whitespace, one special token:

    >>> counts = {tuple(word.encode()): n for word, n in {"low": 5, "lower": 2, "widest": 3, "newest": 6}.items()}
    >>> vocab = {i: bytes([i]) for i in range(256)}
    >>> [a + b" " + b for a, b in learn_merges(counts, vocab, 6)]
    [b's t', b'e st', b'o w', b'l ow', b'w est', b'n e']
"""

import heapq
from collections import defaultdict
from collections.abc import Callable

# Maps byte c to 255 - c, so that comparing translated strings reverses the order of the original bytes.
_REVERSE_BYTE_ORDER = bytes(range(255, -1, -1))


def _descending_key(token: bytes) -> str:
    """A string that sorts in the opposite order of `token` under lexicographic comparison.

    Each byte c becomes chr(255 - c), and a terminator chr(256), greater than any of those, is appended so
    that a prefix (b"ab") sorts *after* its extensions (b"abc"), the reverse of b"ab" < b"abc".

    >>> sorted([b"ab", b"abc", b"b"], key=_descending_key)
    [b'b', b'abc', b'ab']
    """
    return token.translate(_REVERSE_BYTE_ORDER).decode("latin-1") + "\u0100"


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


def learn_merges(
    word_counts: dict[tuple[int, ...], int],
    vocab: dict[int, bytes],
    num_merges: int,
    on_merge: Callable[[int], None] | None = None,
) -> list[tuple[bytes, bytes]]:
    """Run up to `num_merges` BPE merges over pre-tokens given as token-id tuples with their counts.

    `vocab` (id -> bytes) must hold every id used in `word_counts`; each merge adds one entry to it, with the
    next id ``len(vocab)``. Returns the merges in creation order. Stops early if no pair is left (every
    pre-token is already a single token).
    """
    words = [list(word) for word in word_counts]
    counts = list(word_counts.values())

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    pair_to_words: dict[tuple[int, int], set[int]] = defaultdict(set)
    for index, (word, count) in enumerate(zip(words, counts, strict=True)):
        for pair in zip(word, word[1:], strict=False):
            pair_counts[pair] += count
            pair_to_words[pair].add(index)

    order_key = {token_id: _descending_key(token) for token_id, token in vocab.items()}
    heap = [(-count, order_key[a], order_key[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges:
        best = None
        while heap:
            negative_count, _, _, a, b = heapq.heappop(heap)
            if pair_counts.get((a, b)) == -negative_count:  # else stale: the count changed since the push
                best = (a, b)
                break
        if best is None:
            break

        first, second = best
        merged = len(vocab)
        vocab[merged] = vocab[first] + vocab[second]
        order_key[merged] = _descending_key(vocab[merged])
        merges.append((vocab[first], vocab[second]))

        changed: set[tuple[int, int]] = set()
        # The index is lazy too: a word listed under a pair may have lost that pair to an earlier merge.
        for index in pair_to_words.pop(best):
            word = words[index]
            new_word = _merge_pair_in_word(word, first, second, merged)
            if new_word is None:
                continue
            count = counts[index]
            for pair in zip(word, word[1:], strict=False):
                pair_counts[pair] -= count
                changed.add(pair)
            for pair in zip(new_word, new_word[1:], strict=False):
                pair_counts[pair] += count
                pair_to_words[pair].add(index)
                changed.add(pair)
            words[index] = new_word

        for pair in changed:
            count = pair_counts[pair]
            if count > 0:
                heapq.heappush(heap, (-count, order_key[pair[0]], order_key[pair[1]], pair[0], pair[1]))
            else:
                del pair_counts[pair]
        if on_merge is not None:
            on_merge(len(merges))
    return merges
