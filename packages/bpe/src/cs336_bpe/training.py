"""Train a byte-level BPE tokenizer: `train_bpe(path, vocab_size, special_tokens) -> (vocab, merges)`.

The plain version is `reference.train_bpe` (handout §2.4), and this one gives the same vocabulary and merges.
It reads the file in chunks, counts pre-tokens in several processes (`counting`) and merges incrementally
(`merging`), because the plain version holds the whole text and recounts every pair after every merge.

Vocabulary layout (ids 0..vocab_size-1, no gaps):

    [special tokens, in the order given] [the 256 single bytes, in byte order] [one token per merge, in order]

so with ``special_tokens=["<|endoftext|>"]``: id 0 is ``<|endoftext|>``, id 1 + b is the byte b, and id 257 is
the first merge. Special tokens never take part in merges: the text is split on them before counting.
"""

import os
from collections.abc import Callable

from cs336_bpe.counting import count_file_pretokens
from cs336_bpe.errors import BPEInputError
from cs336_bpe.merging import PretokenTable, learn_merges
from cs336_bpe.pretokenize import validate_special_tokens
from cs336_bpe.text_files import check_text_file

Vocab = dict[int, bytes]
Merges = list[tuple[bytes, bytes]]


def initial_vocab(special_tokens: list[str]) -> Vocab:
    """Special tokens first, then the 256 bytes."""
    vocab = {index: token.encode("utf-8") for index, token in enumerate(special_tokens)}
    offset = len(vocab)
    vocab.update({offset + byte: bytes([byte]) for byte in range(256)})
    return vocab


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str] | None = None,
    num_workers: int | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    max_pretokens: int | None = None,
) -> tuple[Vocab, Merges]:
    """Train byte-level BPE on a UTF-8 text file.

    Args:
        input_path: the training text. Read in chunks, never whole.
        vocab_size: final vocabulary size, counting special tokens and the 256 bytes.
        special_tokens: strings that are always one token and split the text (e.g. ``["<|endoftext|>"]``).
        num_workers: processes for pre-tokenization; default: the cores available.
        on_progress: optional ``callback(stage, done, total)`` with stage "pretokenize" (bytes) or
            "merge" (merges), for progress bars.
        max_pretokens: keep at most this many distinct pre-tokens, dropping the rarest (see `counting`).
            Memory grows with distinct pre-tokens (BENCHMARKS.md gives the bytes per pre-token): this bounds
            it on web-sized text. None (the default) keeps them all, which is exact.

    Returns:
        vocab: id -> bytes, ids 0..vocab_size-1 (see the module docstring for the layout).
        merges: the merges in creation order, as (left bytes, right bytes).
    """
    special_tokens = validate_special_tokens(special_tokens)
    minimum = 256 + len(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise BPEInputError(
            f"vocab_size {vocab_size!r} is too small: it must be at least 256 (bytes) + "
            f"{len(special_tokens)} (special tokens) = {minimum}"
        )
    if max_pretokens is not None and (not isinstance(max_pretokens, int) or max_pretokens < 1):
        raise BPEInputError(f"max_pretokens {max_pretokens!r} must be a positive integer, or None for no cap")
    file_size = check_text_file(input_path)

    pretoken_progress = None
    if on_progress is not None:
        done = 0

        def pretoken_progress(chunk_bytes: int) -> None:
            nonlocal done
            done += chunk_bytes
            on_progress("pretokenize", done, file_size)

    pretoken_counts = count_file_pretokens(input_path, special_tokens, num_workers, pretoken_progress,
                                           max_pretokens)

    vocab = initial_vocab(special_tokens)
    # Byte b has id len(special_tokens) + b (the special tokens come first). The arrays take a few bytes per
    # token; the counts' dictionary of strings, 100+ bytes per distinct pre-token, is dropped here.
    table = PretokenTable.from_pretoken_counts(pretoken_counts, byte_offset=len(special_tokens))
    del pretoken_counts
    num_merges = vocab_size - len(vocab)
    merge_progress = None if on_progress is None else (lambda done: on_progress("merge", done, num_merges))
    merges = learn_merges(table, vocab, num_merges, merge_progress)
    return vocab, merges
