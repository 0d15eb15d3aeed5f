"""`Tokenizer`: encode text to token ids and decode ids back, given a vocabulary and merges.

Encoding one pre-token applies the merges in the order they were learned: repeatedly find the adjacent pair
with the lowest merge rank and merge every occurrence of it, until no adjacent pair is a merge.

    >>> vocab = {0: b"<|eot|>", **{1 + b: bytes([b]) for b in range(256)}, 257: b"he", 258: b" the"}
    >>> vocab[259] = b" t"
    >>> tokenizer = Tokenizer(vocab, [(b"h", b"e"), (b" ", b"t"), (b" t", b"he")], special_tokens=["<|eot|>"])
    >>> tokenizer.encode("the the<|eot|>")
    [117, 257, 258, 0]
    >>> tokenizer.decode([117, 257, 258, 0])
    'the the<|eot|>'

Speed comes from caching: text is cut into fragments (see `pretokenize`), and each distinct fragment is
encoded once; after that a repeated word costs one dictionary lookup.
"""

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from itertools import chain, islice, repeat
from pathlib import Path

from cs336_bpe import gpt2_format
from cs336_bpe.atomic import atomic_write, ensure_writable_directory
from cs336_bpe.errors import BPEInputError
from cs336_bpe.pretokenize import FRAGMENT_BOUNDARY_RE, PRETOKEN_RE, special_tokens_pattern
from cs336_bpe.training import validate_special_tokens

VOCAB_FILE, MERGES_FILE, SPECIAL_TOKENS_FILE = "vocab.json", "merges.txt", "special_tokens.json"
# Caches are cleared when they reach this many entries, bounding memory on endless streams of new words.
CACHE_MAX_ENTRIES = 1 << 20
_NO_MERGE = (1 << 62, -1)  # (rank, merged id) of a pair that is not a merge


class _EncodingCache(dict):
    """fragment -> token ids; a miss encodes ``prefix + fragment`` and remembers it."""

    def __init__(self, encode_text, prefix: str):
        super().__init__()
        self.encode_text, self.prefix = encode_text, prefix

    def __missing__(self, fragment: str) -> list[int]:
        if len(self) >= CACHE_MAX_ENTRIES:
            self.clear()
        ids = self[fragment] = self.encode_text(self.prefix + fragment)
        return ids


class Tokenizer:
    """A byte-level BPE tokenizer.

    Args:
        vocab: id -> token bytes. Every single byte must be in it (that is what makes any text encodable).
        merges: (left, right) byte pairs in the order they were learned; left + right must be in `vocab`.
        special_tokens: strings always encoded as one token; those missing from `vocab` get new ids after
            the largest existing one. When special tokens overlap, the longest match wins.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
    ):
        self.vocab = dict(vocab)
        self.merges = list(merges)
        self.special_tokens = validate_special_tokens(special_tokens)

        self.token_to_id: dict[bytes, int] = {}
        for token_id, token in self.vocab.items():
            if token in self.token_to_id:
                raise BPEInputError(
                    f"vocabulary maps both ids {self.token_to_id[token]} and {token_id} to {token!r}; "
                    "each token must appear once"
                )
            self.token_to_id[token] = token_id
        for token in self.special_tokens:
            token_bytes = token.encode("utf-8")
            if token_bytes not in self.token_to_id:
                new_id = max(self.vocab, default=-1) + 1
                self.vocab[new_id] = token_bytes
                self.token_to_id[token_bytes] = new_id
        self.special_token_ids = {token: self.token_to_id[token.encode("utf-8")] for token in self.special_tokens}

        missing_bytes = [byte for byte in range(256) if bytes([byte]) not in self.token_to_id]
        if missing_bytes:
            raise BPEInputError(
                f"vocabulary lacks {len(missing_bytes)} single bytes (e.g. {bytes(missing_bytes[:3])!r}); a byte-level "
                "vocabulary needs all 256 so that any text can be encoded"
            )
        self._byte_ids = [self.token_to_id[bytes([byte])] for byte in range(256)]

        # (left id, right id) -> (rank, merged id): lower rank = learned earlier = applied first.
        self._merge_table: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(self.merges):
            try:
                pair = (self.token_to_id[left], self.token_to_id[right])
                merged = self.token_to_id[left + right]
            except KeyError as error:
                raise BPEInputError(
                    f"merge #{rank} {left!r} + {right!r} uses {error.args[0]!r}, which is not in the vocabulary"
                ) from None
            self._merge_table.setdefault(pair, (rank, merged))
        self._merge_pairs = {rank: pair for pair, (rank, _) in self._merge_table.items()}

        self._special_split_re = special_tokens_pattern(self.special_tokens, capture=True)
        self._max_special_length = max(map(len, self.special_tokens), default=0)
        self._pretoken_cache: dict[str, list[int]] = {}
        self._leading_cache = _EncodingCache(self._encode_fragment, prefix="")
        self._spaced_cache = _EncodingCache(self._encode_fragment, prefix=" ")

    # ----------------------------------------------------------------------------------------- loading/saving
    @classmethod
    def from_files(
        cls, vocab_filepath: str | os.PathLike, merges_filepath: str | os.PathLike,
        special_tokens: list[str] | None = None,
    ) -> "Tokenizer":
        """Load GPT-2-format ``vocab.json`` and ``merges.txt`` (ours or OpenAI's own; see `gpt2_format`)."""
        return cls(gpt2_format.read_vocab(vocab_filepath), gpt2_format.read_merges(merges_filepath), special_tokens)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Load a tokenizer saved with `save` (``vocab.json``, ``merges.txt``, ``special_tokens.json``)."""
        directory = Path(directory)
        if not (directory / VOCAB_FILE).exists():
            raise BPEInputError(
                f"{str(directory)!r} is not a tokenizer directory: it has no {VOCAB_FILE}; "
                "train one with `cs336-bpe train` or point to the right directory"
            )
        special_tokens = None
        if (directory / SPECIAL_TOKENS_FILE).exists():
            special_tokens = json.loads((directory / SPECIAL_TOKENS_FILE).read_text(encoding="utf-8"))
        return cls.from_files(directory / VOCAB_FILE, directory / MERGES_FILE, special_tokens)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``vocab.json``, ``merges.txt`` and ``special_tokens.json`` into `directory` (each atomically)."""
        directory = ensure_writable_directory(directory)
        gpt2_format.write_vocab(self.vocab, directory / VOCAB_FILE)
        gpt2_format.write_merges(self.merges, directory / MERGES_FILE)
        with atomic_write(directory / SPECIAL_TOKENS_FILE, "w", encoding="utf-8") as handle:
            json.dump(self.special_tokens, handle, ensure_ascii=False)
            handle.write("\n")
        return directory

    @property
    def vocab_size(self) -> int:
        """One more than the largest id: the size an embedding table needs."""
        return max(self.vocab) + 1

    def fingerprint(self) -> str:
        """A short hash of vocabulary, merges and special tokens: equal fingerprints encode identically."""
        digest = hashlib.sha256()
        for token_id, token in sorted(self.vocab.items()):
            digest.update(f"{token_id}:{token.hex()};".encode())
        for left, right in self.merges:
            digest.update(f"{left.hex()}+{right.hex()};".encode())
        digest.update(json.dumps(self.special_tokens).encode())
        return digest.hexdigest()[:16]

    def __getstate__(self):
        # Only the definition travels to worker processes; caches are rebuilt there.
        return {"vocab": self.vocab, "merges": self.merges, "special_tokens": self.special_tokens}

    def __setstate__(self, state):
        self.__init__(state["vocab"], state["merges"], state["special_tokens"])

    # --------------------------------------------------------------------------------------------- encoding
    def _bpe(self, token_bytes: bytes) -> list[int]:
        """Apply the merges to one pre-token's bytes, earliest-learned merge first."""
        ids = [self._byte_ids[byte] for byte in token_bytes]
        lookup = self._merge_table.get
        while len(ids) > 1:
            # The (rank, merged id) of every adjacent pair; pairs that are not merges get _NO_MERGE.
            rank, merged = min(map(lookup, zip(ids, ids[1:]), repeat(_NO_MERGE)))
            if merged < 0:
                break
            left, right = self._merge_pairs[rank]
            new_ids, position, length = [], 0, len(ids)
            while position < length:
                if position + 1 < length and ids[position] == left and ids[position + 1] == right:
                    new_ids.append(merged)
                    position += 2
                else:
                    new_ids.append(ids[position])
                    position += 1
            ids = new_ids
        return ids

    def _encode_fragment(self, fragment: str) -> list[int]:
        ids: list[int] = []
        cache = self._pretoken_cache
        for pretoken in PRETOKEN_RE.findall(fragment):
            pretoken_ids = cache.get(pretoken)
            if pretoken_ids is None:
                if len(cache) >= CACHE_MAX_ENTRIES:
                    cache.clear()
                pretoken_ids = cache[pretoken] = self._bpe(pretoken.encode("utf-8"))
            ids.extend(pretoken_ids)
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        """Encode text that contains no special tokens."""
        fragments = FRAGMENT_BOUNDARY_RE.split(text)
        ids = list(self._leading_cache[fragments[0]])
        ids.extend(chain.from_iterable(map(self._spaced_cache.__getitem__, islice(fragments, 1, None))))
        return ids

    def encode(self, text: str) -> list[int]:
        """Encode a string to token ids.

        >>> tokenizer = Tokenizer({b: bytes([b]) for b in range(256)}, [])
        >>> tokenizer.encode("hi!")
        [104, 105, 33]
        """
        if self._special_split_re is None:
            return self._encode_ordinary(text) if text else []
        ids: list[int] = []
        # With a capturing group, re.split alternates: text, special token, text, special token, ..., text.
        for index, part in enumerate(self._special_split_re.split(text)):
            if index % 2:
                ids.append(self.special_token_ids[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    def _safe_cut(self, buffer: str) -> int:
        """The largest prefix length of `buffer` whose encoding cannot change, whatever text follows.

        We cut at a fragment boundary (a space followed by non-whitespace), far enough from the end that a
        special token starting before the cut would be complete, and never inside a special token.
        """
        horizon = len(buffer) - max(self._max_special_length, 1)
        cut = 0
        for match in FRAGMENT_BOUNDARY_RE.finditer(buffer, 0, horizon + 1):
            cut = match.start()
        if cut and self._special_split_re is not None:
            for match in self._special_split_re.finditer(buffer, 0, cut + self._max_special_length):
                if match.start() < cut < match.end():
                    return match.start()  # the start of a complete special token is a safe cut too
        return cut

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily encode a stream of strings (e.g. an open file), in memory independent of its length.

        The output equals ``encode("".join(iterable))`` even when the pieces cut through words or special
        tokens: text is held back until a point where the encoding cannot depend on what comes next.
        """
        buffer = ""
        for piece in iterable:
            buffer += piece
            cut = self._safe_cut(buffer)
            if cut:
                yield from self.encode(buffer[:cut])
                buffer = buffer[cut:]
        if buffer:
            yield from self.encode(buffer)

    # --------------------------------------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The concatenated bytes of the tokens (possibly not valid UTF-8 on its own)."""
        try:
            return b"".join(map(self.vocab.__getitem__, ids))
        except KeyError as error:
            raise BPEInputError(
                f"token id {error.args[0]!r} is not in the vocabulary (ids run from 0 to {self.vocab_size - 1}); "
                "was this text encoded with a different tokenizer?"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids back to text; bytes that are not valid UTF-8 become U+FFFD (the replacement character)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={self.special_tokens})")


