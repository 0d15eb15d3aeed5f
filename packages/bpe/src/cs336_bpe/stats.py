"""The numbers the handout asks about a tokenizer (§2.5, §2.7).

- compression ratio: UTF-8 bytes per token on some text (higher = fewer tokens for the same text);
- throughput: bytes encoded per second (how long would the 825 GB Pile take?);
- the longest tokens of a vocabulary (do they make sense?);
- how two vocabularies overlap (e.g. the TinyStories tokenizer vs the OpenWebText one).
"""

import time
from dataclasses import dataclass

from cs336_bpe.tokenizer import Tokenizer


@dataclass
class EncodingStats:
    num_bytes: int
    num_tokens: int
    seconds: float

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / max(1, self.num_tokens)

    @property
    def bytes_per_second(self) -> float:
        return self.num_bytes / max(self.seconds, 1e-9)


def measure_encoding(tokenizer: Tokenizer, text: str) -> EncodingStats:
    """Encode `text` once, timing it. (The first call also fills the tokenizer's caches.)"""
    start = time.perf_counter()
    num_tokens = len(tokenizer.encode(text))
    return EncodingStats(len(text.encode("utf-8")), num_tokens, time.perf_counter() - start)


def compression_ratio(tokenizer: Tokenizer, text: str) -> float:
    """UTF-8 bytes per token."""
    return measure_encoding(tokenizer, text).bytes_per_token


def longest_tokens(tokenizer: Tokenizer, count: int = 10) -> list[tuple[int, bytes]]:
    """The `count` longest tokens as (id, bytes), longest first, ties by id."""
    ranked = sorted(tokenizer.vocab.items(), key=lambda item: (-len(item[1]), item[0]))
    return ranked[:count]


@dataclass
class VocabularyOverlap:
    shared: int
    only_first: int
    only_second: int


def vocabulary_overlap(first: Tokenizer, second: Tokenizer) -> VocabularyOverlap:
    """How many token byte strings the two vocabularies share, and how many only one of them has."""
    first_tokens, second_tokens = set(first.vocab.values()), set(second.vocab.values())
    return VocabularyOverlap(
        shared=len(first_tokens & second_tokens),
        only_first=len(first_tokens - second_tokens),
        only_second=len(second_tokens - first_tokens),
    )
