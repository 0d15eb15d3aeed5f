"""The plain versions: BPE training and encoding as the handout describes them, a few lines each.

They are the definitions the fast modules are tested against (`merging`, `training`, `tokenizer`), and the
place to start reading. They are slow (training recounts every pair after every merge), and exact.

    >>> word_counts = {tuple(bytes([b]) for b in word.encode()): n
    ...                for word, n in {"low": 5, "lower": 2, "widest": 3, "newest": 6}.items()}
    >>> [a + b" " + b for a, b in merges_by_recount(word_counts, 6)]   # handout §2.4, Example (bpe_example)
    [b's t', b'e st', b'o w', b'l ow', b'w est', b'n e']
    >>> bpe_word(b"the", [(b"t", b"h"), (b" ", b"c"), (b" ", b"a"), (b"th", b"e"), (b" a", b"t")])  # §2.6.1
    [b'the']
"""

from collections import Counter

from cs336_bpe.pretokenize import pretokenize, special_tokens_pattern

Pair = tuple[bytes, bytes]


def pretoken_counts(text: str, special_tokens: list[str]) -> Counter[str]:
    """§2.4 "Pre-tokenization" and "Special tokens": split on the special tokens, then GPT-2's regex."""
    special_re = special_tokens_pattern(special_tokens)
    segments = special_re.split(text) if special_re is not None else [text]
    return Counter(pretoken for segment in segments for pretoken in pretokenize(segment))


def merges_by_recount(word_counts: dict[tuple[bytes, ...], int], num_merges: int) -> list[Pair]:
    """§2.4 "Compute BPE merges": count every adjacent pair over the pre-tokens (times their counts), merge the
    most frequent (ties: the lexicographically greater pair) everywhere, repeat."""
    words = dict(word_counts)
    merges = []
    for _ in range(num_merges):
        pair_counts: Counter[Pair] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break
        best = max(pair_counts, key=lambda pair: (pair_counts[pair], pair))
        merges.append(best)
        merged_words: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            merged_words[_merge(word, best)] += count
        words = merged_words
    return merges


def train_bpe(text: str, vocab_size: int, special_tokens: list[str]) -> tuple[dict[int, bytes], list[Pair]]:
    """§2.4 whole: the vocabulary (special tokens, the 256 bytes, one token per merge) and the merges."""
    vocab = {index: token.encode("utf-8") for index, token in enumerate(special_tokens)}
    vocab.update({len(special_tokens) + byte: bytes([byte]) for byte in range(256)})
    word_counts = {tuple(bytes([b]) for b in pretoken.encode("utf-8")): count
                   for pretoken, count in pretoken_counts(text, special_tokens).items()}
    merges = merges_by_recount(word_counts, vocab_size - len(vocab))
    vocab.update({len(vocab) + index: left + right for index, (left, right) in enumerate(merges)})
    return vocab, merges


def bpe_word(word: bytes, merges: list[Pair]) -> list[bytes]:
    """§2.6.1 "Apply the merges", as GPT-2's original ``bpe()`` does it: of the pairs present, merge the one
    learned first, everywhere in the word, and repeat until no pair is a merge."""
    ranks = {pair: rank for rank, pair in reversed(list(enumerate(merges)))}  # a repeated merge keeps its first rank
    parts = tuple(bytes([b]) for b in word)
    while len(parts) > 1:
        pair = min(zip(parts, parts[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        parts = _merge(parts, pair)
    return list(parts)


def encode(text: str, vocab: dict[int, bytes], merges: list[Pair], special_tokens: list[str]) -> list[int]:
    """§2.6.1 whole: special tokens are one token each; everything else is pre-tokenized and merged."""
    token_to_id = {token: token_id for token_id, token in vocab.items()}
    special_re = special_tokens_pattern(special_tokens, capture=True)
    parts = special_re.split(text) if special_re is not None else [text]
    ids = []
    for index, part in enumerate(parts):  # with a capturing group: text, special token, text, ...
        if index % 2:
            ids.append(token_to_id[part.encode("utf-8")])
            continue
        for pretoken in pretokenize(part):
            ids.extend(token_to_id[token] for token in bpe_word(pretoken.encode("utf-8"), merges))
    return ids


def _merge(word: tuple[bytes, ...], pair: Pair) -> tuple[bytes, ...]:
    """Replace every occurrence of `pair` in `word` by its concatenation, left to right."""
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)
