"""Encode a whole text file into a flat array of token ids on disk, plus a small metadata file.

Output, for ``encode_file(tokenizer, "train.txt", "train.bin")``:

- ``train.bin``: the token ids, one after another, as raw little-endian ``uint16`` (vocabularies up to
  65,536 tokens: 2 bytes a token) or ``uint32``. Open it with ``numpy.memmap`` (or `open_token_file`), which
  maps it into memory without reading it.
- ``train.bin.json``: ``{"format": ..., "dtype": "uint16", "num_tokens": ..., "vocab_size": ...,
  "tokenizer_fingerprint": ..., "source": ..., "source_bytes": ...}``. The trainer checks it before use.

The file is processed in chunks cut at special tokens (see `chunking`), encoded in parallel worker processes
and written in order, so memory stays bounded by a few chunks whatever the file size. Output goes to a
temporary name and is renamed only when complete: an interrupted run leaves no partial ``.bin`` behind.
"""

import contextlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cs336_bpe.atomic import atomic_write
from cs336_bpe.chunking import check_text_file, chunk_spans, read_span
from cs336_bpe.counting import PARALLEL_MIN_BYTES, default_num_workers
from cs336_bpe.errors import BPEInputError
from cs336_bpe.tokenizer import Tokenizer

TOKEN_FILE_FORMAT = "cs336-tokens-v1"
ENCODE_CHUNK_BYTES = 4 << 20

_worker_tokenizer: Tokenizer | None = None


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id: uint16 up to 65,536 tokens, else uint32."""
    if vocab_size > 1 << 32:
        raise BPEInputError(
            f"the tokenizer's largest id is {vocab_size - 1:,}, which a uint32 token file cannot hold; "
            "renumber the vocabulary with ids below 4,294,967,296"
        )
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def metadata_path(token_path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(token_path)}.json")


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_span(job: tuple[str, int, int, str]) -> np.ndarray:
    path, start, end, dtype = job
    ids = _worker_tokenizer.encode_array(read_span(path, start, end))
    # The array holds machine integers; the file is little-endian whatever machine wrote it.
    return np.frombuffer(ids, dtype=ids.typecode).astype(dtype, copy=False)


@contextlib.contextmanager
def _encoded_chunks(tokenizer: Tokenizer, jobs: list, num_workers: int) -> Iterator[Iterator[np.ndarray]]:
    """An iterator over the token ids of each job's span, in file order; worker processes run ahead of it."""
    _init_worker(tokenizer)
    if num_workers == 1 or len(jobs) == 1:
        yield map(_encode_span, jobs)
        return
    if "fork" in multiprocessing.get_all_start_methods():
        # Forked workers inherit the tokenizer as it is: nothing is pickled, nothing rebuilt.
        pool = multiprocessing.get_context("fork").Pool(num_workers)
    else:
        pool = multiprocessing.get_context().Pool(num_workers, _init_worker, (tokenizer,))
    with pool:
        yield pool.imap(_encode_span, jobs)


def encode_file(
    tokenizer: Tokenizer,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    num_workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Encode `input_path` to `output_path` (+ ``.json`` metadata); returns the metadata.

    `on_progress(bytes_done, bytes_total)` is called as chunks complete.
    """
    input_path, output_path = os.fspath(input_path), Path(output_path)
    file_size = check_text_file(input_path)
    dtype = token_dtype(tokenizer.vocab_size)
    num_workers = num_workers or default_num_workers()
    if file_size < PARALLEL_MIN_BYTES:
        num_workers = 1
    chunk_bytes = min(ENCODE_CHUNK_BYTES, max(1, file_size // (4 * num_workers)))
    jobs = [(input_path, start, end, dtype.str)
            for start, end in chunk_spans(input_path, chunk_bytes, tokenizer.special_tokens)]

    num_tokens, bytes_done = 0, 0
    with _encoded_chunks(tokenizer, jobs, num_workers) as chunks, atomic_write(output_path, "wb") as handle:
        fingerprint = tokenizer.fingerprint()  # computed here, while the workers are already encoding
        for job, token_ids in zip(jobs, chunks, strict=True):
            handle.write(token_ids.tobytes())
            num_tokens += len(token_ids)
            bytes_done += job[2] - job[1]
            if on_progress is not None:
                on_progress(bytes_done, file_size)

    metadata = {
        "format": TOKEN_FILE_FORMAT,
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_fingerprint": fingerprint,
        "special_tokens": tokenizer.special_tokens,
        "source": os.path.abspath(input_path),
        "source_bytes": file_size,
    }
    with atomic_write(metadata_path(output_path), "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=2)
        handle.write("\n")
    return metadata


def read_token_metadata(token_path: str | os.PathLike) -> dict:
    """The metadata written beside a token file; a clear error if it is missing or malformed."""
    path = metadata_path(token_path)
    if not path.exists():
        raise BPEInputError(
            f"token file {os.fspath(token_path)!r} has no metadata file {str(path)!r}; "
            "(re-)create it with `cs336-bpe encode`"
        )
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BPEInputError(f"metadata file {str(path)!r} is not valid JSON ({error}); re-run the encoding") from None
    if metadata.get("format") != TOKEN_FILE_FORMAT:
        raise BPEInputError(
            f"metadata file {str(path)!r} has format {metadata.get('format')!r}, expected {TOKEN_FILE_FORMAT!r}"
        )
    return metadata


def open_token_file(token_path: str | os.PathLike, expected_fingerprint: str | None = None) -> np.ndarray:
    """Memory-map a token file after checking it against its metadata (and a tokenizer, if given)."""
    metadata = read_token_metadata(token_path)
    dtype = np.dtype(metadata["dtype"])
    expected_bytes = metadata["num_tokens"] * dtype.itemsize
    actual_bytes = os.path.getsize(token_path)
    if actual_bytes != expected_bytes:
        raise BPEInputError(
            f"token file {os.fspath(token_path)!r} has {actual_bytes} bytes but its metadata promises "
            f"{metadata['num_tokens']} {dtype.name} tokens ({expected_bytes} bytes); re-run the encoding"
        )
    if expected_fingerprint is not None and metadata["tokenizer_fingerprint"] != expected_fingerprint:
        raise BPEInputError(
            f"token file {os.fspath(token_path)!r} was encoded with tokenizer {metadata['tokenizer_fingerprint']}, "
            f"not {expected_fingerprint}; encode it again with this tokenizer"
        )
    if metadata["num_tokens"] == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(token_path, dtype=dtype, mode="r")
