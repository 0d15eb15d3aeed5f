"""`Tokenizer`: encode text to token ids and decode ids back, given a vocabulary and merges.

The plain version is `reference.encode` (handout §2.6.1): pre-tokenize, then in each pre-token repeatedly merge
the adjacent pair with the lowest merge rank. This module gives the same ids, but caches each distinct
fragment's encoding and packs ids as machine integers, because re-running the regex and the merges for every
repeated word is what makes the plain version slow.

    >>> vocab = {0: b"<|eot|>", **{1 + b: bytes([b]) for b in range(256)}, 257: b"he", 258: b" the"}
    >>> vocab[259] = b" t"
    >>> tokenizer = Tokenizer(vocab, [(b"h", b"e"), (b" ", b"t"), (b" t", b"he")], special_tokens=["<|eot|>"])
    >>> tokenizer.encode("the the<|eot|>")
    [117, 257, 258, 0]
    >>> tokenizer.decode([117, 257, 258, 0])
    'the the<|eot|>'

Speed comes from caching: text is cut into fragments (see `pretokenize`), and each distinct fragment is
encoded once; after that a repeated word costs one dictionary lookup. The caches hold each fragment's ids
already packed as machine integers (`bytes`), so a whole text is one ``b"".join`` of cached values, read back
as an `array.array` of ids without a Python-level loop over the tokens.
"""

import hashlib
import json
import os
from array import array
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from cs336_bpe import gpt2_format, hf_format, tiktoken_format
from cs336_bpe.atomic import atomic_write, ensure_writable_directory
from cs336_bpe.errors import BPEInputError
from cs336_bpe.pretokenize import (
    FRAGMENT_BOUNDARY_RE,
    PRETOKEN_ASCII_RE,
    PRETOKEN_RE,
    special_tokens_pattern,
    split_blocks,
    split_fragments,
    unmark_spaces,
    validate_special_tokens,
)

VOCAB_FILE, MERGES_FILE, SPECIAL_TOKENS_FILE = "vocab.json", "merges.txt", "special_tokens.json"
SAVE_FORMATS = ("gpt2", "hf", "tiktoken")  # see `Tokenizer.save`
# Caches are cleared when they reach this many entries, bounding memory on endless streams of new words.
CACHE_MAX_ENTRIES = 1 << 20
BLOCK_CHARS = 1 << 13  # ordinary text is encoded in blocks of about this many characters
MAX_ID = (1 << 32) - 1  # ids fit a uint32 token file, and a packed (left, right) pair of them a uint64


def id_typecode(vocab_size: int) -> str:
    """The `array` typecode of the smallest unsigned integer that holds every id: 16 bits up to 65,536 tokens,
    else 32 (ids never go above `MAX_ID`). Token files store ids in the same type (`corpus.token_dtype`)."""
    return "H" if vocab_size <= 1 << 16 else next(code for code in "IL" if array(code).itemsize == 4)


class PretokenCache(dict):
    """pre-token -> its token ids, packed; a miss runs BPE on the pre-token's bytes.

    A subclass may add to what a miss does (`parallel.word_sharing.SharingPretokenCache` first looks for the
    word among those other processes have encoded); `Tokenizer.pretoken_cache` installs it.
    """

    def __init__(self, bpe, id_typecode: str):
        super().__init__()
        self.bpe, self.id_typecode = bpe, id_typecode

    def __missing__(self, pretoken: str) -> bytes:
        if len(self) >= CACHE_MAX_ENTRIES:  # bounds memory on endless streams of new words
            self.clear()
        packed = self[pretoken] = array(self.id_typecode, self.bpe(pretoken.encode("utf-8"))).tobytes()
        return packed


class _FragmentCache(dict):
    """fragment (from `split_fragments`) -> the packed ids of ``prefix + fragment``; a miss pre-tokenizes it.

    One instance holds a text's first fragments (prefix ""), another all the others, which lost their leading
    space to the cut (prefix " "). Both look their pre-tokens up in the same `PretokenCache`.
    """

    def __init__(self, pretokens: PretokenCache, prefix: str):
        super().__init__()
        self.pretokens, self.prefix = pretokens, prefix

    def __missing__(self, fragment: str) -> bytes:
        if len(self) >= CACHE_MAX_ENTRIES:
            self.clear()
        text = self.prefix + unmark_spaces(fragment)
        if not text.isascii():
            packed = b"".join(map(self.pretokens.__getitem__, PRETOKEN_RE.findall(text)))
        elif fragment.isalpha():  # an ASCII word, with its space: one pre-token, no regex needed
            packed = self.pretokens[text]
        else:
            packed = b"".join(map(self.pretokens.__getitem__, PRETOKEN_ASCII_RE.findall(text)))
        self[fragment] = packed
        return packed


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
        if self.vocab and not (min(self.vocab) >= 0 and max(self.vocab) <= MAX_ID):
            raise BPEInputError(
                f"vocabulary ids (with the special tokens added) run from {min(self.vocab)} to {max(self.vocab)}; "
                f"ids must be integers from 0 to {MAX_ID:,} (a uint32), so renumber the vocabulary"
            )

        missing_bytes = [byte for byte in range(256) if bytes([byte]) not in self.token_to_id]
        if missing_bytes:
            raise BPEInputError(
                f"vocabulary lacks {len(missing_bytes)} single bytes (e.g. {bytes(missing_bytes[:3])!r}); a byte-level "
                "vocabulary needs all 256 so that any text can be encoded"
            )
        self._byte_ids = [self.token_to_id[bytes([byte])] for byte in range(256)]

        # The merge table: (left id, right id) -> (rank, merged id), lower rank = learned earlier = applied first.
        # Both sides are packed into one int each, ``left << id_bits | right`` and ``rank << id_bits | merged``:
        # a lookup is one dict access, and the packed values compare by rank first, so `min` finds the earliest
        # merge. (It also keeps the table compact: forked workers copy fewer memory pages of it.)
        self._id_bits = max(self.vocab).bit_length()
        self._merge_table: dict[int, int] = {}
        for rank, (left, right) in enumerate(self.merges):
            try:
                pair = self.token_to_id[left] << self._id_bits | self.token_to_id[right]
                merged = self.token_to_id[left + right]
            except KeyError as error:
                raise BPEInputError(
                    f"merge #{rank} {left!r} + {right!r} uses {error.args[0]!r}, which is not in the vocabulary"
                ) from None
            if pair not in self._merge_table:  # a repeated merge can never apply: the first one already did
                self._merge_table[pair] = rank << self._id_bits | merged
        self._no_merge = len(self.merges) << self._id_bits  # larger than any packed table value

        self._special_split_re = special_tokens_pattern(self.special_tokens, capture=True)
        self._max_special_length = max(map(len, self.special_tokens), default=0)
        # Ids are packed in the narrowest array type that holds them; the caches map text to packed bytes.
        self.id_typecode = id_typecode(self.vocab_size)
        self._special_token_packed = {token: array(self.id_typecode, [token_id]).tobytes()
                                      for token, token_id in self.special_token_ids.items()}
        self._fingerprint: str | None = None
        self._leading_cache = _FragmentCache(PretokenCache(self._bpe, self.id_typecode), prefix="")
        self._spaced_cache = _FragmentCache(self._leading_cache.pretokens, prefix=" ")

    # ----------------------------------------------------------------------------------------- loading/saving
    @classmethod
    def from_files(
        cls, vocab_filepath: str | os.PathLike, merges_filepath: str | os.PathLike,
        special_tokens: list[str] | None = None,
    ) -> "Tokenizer":
        """Load GPT-2-format ``vocab.json`` and ``merges.txt`` (ours or OpenAI's own; see `gpt2_format`)."""
        return cls(gpt2_format.read_vocab(vocab_filepath), gpt2_format.read_merges(merges_filepath), special_tokens)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a tokenizer saved with `save`: a directory with ``vocab.json``, ``merges.txt`` and
        ``special_tokens.json`` (format "gpt2"), or a Hugging Face ``tokenizer.json`` (format "hf": the file
        itself or a directory holding it; any byte-level BPE one, see `hf_format`)."""
        path = Path(path)
        if path.is_file() and path.suffix == ".json":
            return cls(*hf_format.read_tokenizer_json(path))
        if not (path / VOCAB_FILE).exists() and (path / hf_format.TOKENIZER_FILE).exists():
            return cls(*hf_format.read_tokenizer_json(path / hf_format.TOKENIZER_FILE))
        if not (path / VOCAB_FILE).exists():
            raise BPEInputError(
                f"{str(path)!r} is not a tokenizer directory: it has no {VOCAB_FILE} (nor a Hugging Face "
                f"{hf_format.TOKENIZER_FILE}); train one with `cs336-bpe train` or point to the right directory"
            )
        special_tokens = None
        if (path / SPECIAL_TOKENS_FILE).exists():
            special_tokens = json.loads((path / SPECIAL_TOKENS_FILE).read_text(encoding="utf-8"))
        return cls.from_files(path / VOCAB_FILE, path / MERGES_FILE, special_tokens)

    def save(self, directory: str | os.PathLike, format: str = "gpt2", model_max_length: int | None = None) -> Path:
        """Write the tokenizer into `directory`, each file atomically, in one of three formats:

        - "gpt2" (what `load` reads by default): ``vocab.json``, ``merges.txt``, ``special_tokens.json``;
        - "hf": ``tokenizer.json`` and ``tokenizer_config.json``, for HF tokenizers and transformers'
          `AutoTokenizer` (`model_max_length`: the context length of the model it goes with);
        - "tiktoken": ``tokenizer.tiktoken`` and ``tiktoken_config.json``, for OpenAI's tiktoken (one-way:
          `tiktoken_format.load_tiktoken_encoding` reads it into tiktoken, not back into a `Tokenizer`).
        """
        if format not in SAVE_FORMATS:
            raise BPEInputError(f"tokenizer format {format!r} is not one of {', '.join(SAVE_FORMATS)}")
        directory = ensure_writable_directory(directory)
        if format == "hf":
            hf_format.write_tokenizer_files(self, directory, model_max_length)
        elif format == "tiktoken":
            tiktoken_format.write_tiktoken_files(self, directory)
        else:
            gpt2_format.write_vocab(self.vocab, directory / VOCAB_FILE)
            gpt2_format.write_merges(self.merges, directory / MERGES_FILE)
            with atomic_write(directory / SPECIAL_TOKENS_FILE, "w", encoding="utf-8") as handle:
                json.dump(self.special_tokens, handle, ensure_ascii=False)
                handle.write("\n")
        return directory

    @property
    def pretoken_cache(self) -> PretokenCache:
        """The cache from pre-token to packed ids that both fragment caches fill their misses from.

        Assigning installs another one (e.g. a subclass that adds to what a miss does). Its entries must be this
        tokenizer's own encodings: the fragment caches keep what they already hold.
        """
        return self._leading_cache.pretokens

    @pretoken_cache.setter
    def pretoken_cache(self, cache: PretokenCache) -> None:
        self._leading_cache.pretokens = self._spaced_cache.pretokens = cache

    @property
    def vocab_size(self) -> int:
        """One more than the largest id: the size an embedding table needs."""
        return max(self.vocab) + 1

    def fingerprint(self) -> str:
        """A short hash of vocabulary, merges and special tokens: equal fingerprints encode identically.

        Computed on first use (about 6 ms for GPT-2's 50,257 tokens), then remembered.
        """
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        # SHA-256 of, in order: the number of tokens and of merge-table entries; every id, in increasing order;
        # each of those tokens' lengths; the merge table's packed (left id, right id) pairs, earliest merge first
        # (the table is what encoding uses: a merge repeated later in `merges` can never apply, so it is not in
        # it); all numbers as little-endian uint64, the same on every machine; then the tokens' bytes and the
        # special tokens as JSON. Hashing whole arrays rather than token by token keeps it fast, which matters
        # because `encode_file` computes it on every run.
        ids = sorted(self.vocab)
        tokens = [self.vocab[token_id] for token_id in ids]
        digest = hashlib.sha256()
        for numbers in ([len(ids), len(self._merge_table)], ids, map(len, tokens), self._merge_table):
            digest.update(np.fromiter(numbers, dtype="<u8").tobytes())
        digest.update(b"".join(tokens))
        digest.update(json.dumps(self.special_tokens).encode())
        return digest.hexdigest()[:16]

    def has_fingerprint(self, fingerprint: str) -> bool:
        """Whether `fingerprint` is this tokenizer's: today's `fingerprint()`, or the older form of the same hash
        that checkpoints saved before token-file format v2 store (so those checkpoints still load)."""
        return fingerprint == self.fingerprint() or fingerprint == self._legacy_fingerprint()

    def _legacy_fingerprint(self) -> str:
        # The fingerprint before token-file format v2: every token and merge formatted as text, then hashed.
        # Four times slower than today's, so it is computed only to recognize a fingerprint stored back then.
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
        """Apply the merges to one pre-token's bytes, earliest-learned merge first.

        ``merges[i]`` is the packed (rank, merged id) of the pair ``(ids[i], ids[i + 1])``, or ``no_merge``.
        Each step takes the lowest rank and merges every occurrence of that pair, left to right, as GPT-2's
        reference ``bpe()`` does. A merge only changes the two pairs beside it, so those are the only lookups
        it makes; everything else (`min`, `index`, `in`) runs in C over a short list.
        """
        ids = [self._byte_ids[byte] for byte in token_bytes]
        bits, no_merge, lookup = self._id_bits, self._no_merge, self._merge_table.get
        id_mask = (1 << bits) - 1
        merges = [lookup(left << bits | right, no_merge) for left, right in zip(ids, ids[1:])]
        while merges:
            best = min(merges)
            if best == no_merge:
                break
            merged = best & id_mask
            # Later occurrences of the pair keep their value; the two new neighbour pairs never equal it.
            while best in merges:
                i = merges.index(best)
                ids[i] = merged
                del ids[i + 1], merges[i]
                if i > 0:
                    merges[i - 1] = lookup(ids[i - 1] << bits | merged, no_merge)
                if i < len(merges):
                    merges[i] = lookup(merged << bits | ids[i + 1], no_merge)
        return ids

    def _encode_packed(self, text: str) -> list[bytes]:
        """The packed ids of `text`, in pieces: one per special token and one per block of ordinary text."""
        parts = [text] if self._special_split_re is None else self._special_split_re.split(text)
        packed: list[bytes] = []
        lookup = self._spaced_cache.__getitem__
        # With a capturing group, re.split alternates: text, special token, text, special token, ..., text.
        for index, part in enumerate(parts):
            if index % 2:
                packed.append(self._special_token_packed[part])
                continue
            # Long texts go block by block: a block's fragments still sit in the CPU cache when they are looked
            # up and joined (on 2 MB of text without special tokens this is 2.5x faster than one big split).
            for block in split_blocks(part, BLOCK_CHARS) if part else ():
                fragments = split_fragments(block)
                packed.append(self._leading_cache[fragments[0]])
                packed.append(b"".join(map(lookup, islice(fragments, 1, None))))
        return packed

    def encode_array(self, text: str) -> array:
        """Encode a string to an `array.array` of ids (typecode `id_typecode`: 2 bytes an id up to 65,536 ids).

        The same ids as `encode`, without building a Python int per token: use it for large texts.
        """
        ids = array(self.id_typecode)
        ids.frombytes(b"".join(self._encode_packed(text)))
        return ids

    def encode(self, text: str) -> list[int]:
        """Encode a string to token ids.

        >>> tokenizer = Tokenizer({b: bytes([b]) for b in range(256)}, [])
        >>> tokenizer.encode("hi!")
        [104, 105, 33]
        """
        return self.encode_array(text).tolist()

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


