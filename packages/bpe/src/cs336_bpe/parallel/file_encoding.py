"""Encode a file's chunks in several processes into one token file, in file order.

The main process claims and encodes chunks like the workers do (`chunk_workers`); whichever process finishes a
chunk, `ChunksInOrder` appends it to the output only once every chunk before it is in. Only `corpus.encode_file`
uses this: it checks the input, takes the output's writer lock, and writes the metadata.
"""

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cs336_bpe.atomic import atomic_write
from cs336_bpe.parallel.chunk_workers import ChunkWorkers, chunk_path, claim_chunks, encode_span, write_chunk
from cs336_bpe.tokenizer import Tokenizer
from cs336_bpe.writer_lock import scratch_directory_prefix


class ChunksInOrder:
    """Writes each chunk's ids to the output in file order, whichever process finished the chunk first.

    A chunk that arrives in turn goes straight into the output; the others wait in the scratch directory (where
    the worker processes also put theirs) until every chunk before them is in.
    """

    def __init__(self, handle: BinaryIO, scratch: Path, spans: list[tuple[int, int]], dtype: np.dtype,
                 on_progress: Callable[[int, int], None] | None, file_size: int):
        self.handle, self.scratch, self.spans, self.dtype = handle, scratch, spans, dtype
        self.on_progress, self.file_size = on_progress, file_size
        self.appended, self.num_tokens, self.bytes_done = 0, 0, 0  # chunks [0, appended) are in the output

    def add(self, index: int, tokens: np.ndarray) -> None:
        """Take a chunk this process encoded."""
        if index == self.appended:
            self.handle.write(tokens)
            self._appended(len(tokens))
        else:
            write_chunk(self.scratch, index, tokens)
        self.append_finished()

    def append_finished(self) -> None:
        """Append the finished chunks waiting in the scratch directory, as far as the order allows."""
        while self.appended < len(self.spans) and (part := chunk_path(self.scratch, self.appended)).exists():
            with open(part, "rb") as chunk_file:
                shutil.copyfileobj(chunk_file, self.handle)
            num_tokens = part.stat().st_size // self.dtype.itemsize
            part.unlink()
            self._appended(num_tokens)

    def _appended(self, num_tokens: int) -> None:
        start, end = self.spans[self.appended]
        self.appended += 1
        self.num_tokens += num_tokens
        self.bytes_done += end - start
        if self.on_progress is not None:
            self.on_progress(self.bytes_done, self.file_size)


def encode_spans(tokenizer: Tokenizer, input_path: str, spans: list[tuple[int, int]], dtype: np.dtype,
                  output_path: Path, num_workers: int, on_progress: Callable[[int, int], None] | None) -> int:
    """Encode the spans of the input in `num_workers` processes into the token file, atomically; return the
    number of tokens written. The caller writes the metadata (`corpus.encode_file`)."""
    file_size = spans[-1][1]  # the spans cover the whole file
    # Left in reverse order: the token file is complete and renamed before the workers are joined.
    with (
        tempfile.TemporaryDirectory(dir=output_path.parent, prefix=scratch_directory_prefix(output_path)) as scratch,
        ChunkWorkers(num_workers - 1, tokenizer, input_path, spans, dtype, Path(scratch)) as workers,
        atomic_write(output_path, "wb") as handle,
    ):
        output = ChunksInOrder(handle, Path(scratch), spans, dtype, on_progress, file_size)
        tokenizer.fingerprint()  # computed (and remembered) while the workers start, for the metadata
        for index in claim_chunks(len(spans), workers.next_chunk):
            output.add(index, encode_span(tokenizer, input_path, spans[index], dtype))
            workers.raise_failure()
        while output.appended < len(spans) and workers.wait(timeout=1.0):
            output.append_finished()
        output.append_finished()
        if output.appended < len(spans):
            workers.raise_death()
            raise RuntimeError(f"only {output.appended} of {len(spans)} chunks were encoded")
    return output.num_tokens
