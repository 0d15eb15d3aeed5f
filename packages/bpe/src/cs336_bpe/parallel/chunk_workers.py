"""Encode a file's chunks in parallel: each process takes the next unclaimed chunk until none is left.

The main process and ``num_workers - 1`` worker processes share one counter: the index of the next chunk
nobody has claimed yet. A process claims a chunk, encodes it, writes its ids to ``<scratch>/<index>.bin`` and
claims the next. A slow chunk therefore delays only the process that has it. The main process appends the
finished files to the output in chunk order (see `file_encoding`).

Two choices here are about speed on a small machine:

- The main process encodes too. If it only waited for results, it would be a third process competing for
  two cores whenever it woke up to receive a result.
- Results travel through files, not pipes. A worker sending a chunk's ids (hundreds of KB) through a pipe
  blocks until the main process reads them, and the main process is busy encoding its own chunk.
- The processes share the words they run BPE on (`word_sharing`), so that a word met by several processes
  goes through BPE once.

Measured on the 4 MB TinyStories file with 2 processes, best of 12 alternating runs (BENCHMARKS.md): 0.212 s
with a `multiprocessing.Pool` of two workers sending their results through pipes, 0.191 s like this.

A worker dies with the main process, even when that one is killed outright (see `_exit_with_parent`).
"""

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Iterator
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import numpy as np

from cs336_bpe.errors import BPEInputError
from cs336_bpe.parallel.chunking import read_span
from cs336_bpe.parallel.processes import fork_context
from cs336_bpe.parallel.word_sharing import WordExchange, sharing_words
from cs336_bpe.tokenizer import Tokenizer

Span = tuple[int, int]
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def claim_chunks(num_chunks: int, next_chunk: Synchronized | None) -> Iterator[int]:
    """The indices of the chunks this process claims, in increasing order, until none is left.

    `next_chunk` is the counter shared by all processes; None means this process is the only one.
    """
    if next_chunk is None:
        yield from range(num_chunks)
        return
    while True:
        with next_chunk.get_lock():
            index = next_chunk.value
            next_chunk.value += 1
        if index >= num_chunks:
            return
        yield index


def encode_span(tokenizer: Tokenizer, path: str, span: Span, dtype: np.dtype) -> np.ndarray:
    """The token ids of bytes ``[start, end)`` of the file, as little-endian `dtype` (the token file's format)."""
    ids = tokenizer.encode_array(read_span(path, *span))
    # The array holds machine integers; the file is little-endian whatever machine writes or reads it.
    return np.frombuffer(ids, dtype=ids.typecode).astype(dtype.newbyteorder("<"), copy=False)


def chunk_path(scratch: Path, index: int) -> Path:
    return scratch / f"{index}.bin"


def write_chunk(scratch: Path, index: int, tokens: np.ndarray) -> None:
    """Write a chunk's ids under a temporary name, then rename: a ``.bin`` file that exists is complete."""
    partial = scratch / f"{index}.partial"
    tokens.tofile(partial)
    os.replace(partial, chunk_path(scratch, index))


def _exit_with_parent(parent_pid: int) -> None:
    """Make this worker die with the main process, however that one dies.

    An orderly exit of the main process (an error, Ctrl-C) stops the workers. SIGKILL (``kill -9``, the
    out-of-memory killer, a job scheduler) runs no code in it, and an orphaned worker would go on encoding
    chunks that nobody will read, for minutes. On Linux, the kernel can send this process SIGKILL when its
    parent dies. (Strictly, when the parent *thread* that forked it ends: that is the one running
    `encode_file`, which does not return before the workers are joined.)
    """
    _ask_kernel_for_sigkill_on_parent_death()
    # The parent may have died before the request above: then no signal will ever come.
    _exit_if_orphaned(parent_pid)


def _ask_kernel_for_sigkill_on_parent_death() -> None:
    """Linux's ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere (or without a usable libc) nothing."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # then the check between chunks still applies
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _exit_if_orphaned(parent_pid: int) -> None:
    """Exit at once if the process that started this one has died (an orphan gets a new parent).

    Outside Linux, this check between chunks is what stops an orphaned worker: after its current chunk.
    """
    if os.getppid() != parent_pid:
        os._exit(1)  # nobody is left to report to, and the next encode removes our scratch files


def _work(tokenizer: Tokenizer, path: str, spans: list[Span], dtype: np.dtype, scratch: Path,
          next_chunk: Synchronized, messages: multiprocessing.connection.Connection,
          exchange: WordExchange | None, process_number: int, parent_pid: int | None) -> None:
    """A worker process: encode claimed chunks into `scratch`; send each one's index, or the error that stopped it.

    `exchange` is the one the tokenizer shares through (`sharing_words`), inherited through fork: this process
    writes its log `process_number`.
    `parent_pid` is the main process, which this one must not outlive (None: do not watch it).
    """
    try:
        if parent_pid is not None:
            _exit_with_parent(parent_pid)
        if exchange is not None:
            exchange.join(process_number)
        for index in claim_chunks(len(spans), next_chunk):
            if parent_pid is not None:
                _exit_if_orphaned(parent_pid)
            write_chunk(scratch, index, encode_span(tokenizer, path, spans[index], dtype))
            messages.send(index)  # wakes the main process, which may be waiting for this very chunk
    except KeyboardInterrupt:
        raise SystemExit(1) from None  # Ctrl-C reaches every process; the main process reports it
    except BaseException as error:
        # The main process re-raises it: a BPEInputError keeps its message (e.g. invalid UTF-8 at an offset).
        messages.send(error if isinstance(error, BPEInputError) else RuntimeError(f"encoding worker failed: {error!r}"))
        raise SystemExit(1) from None


class ChunkWorkers:
    """`count` worker processes encoding claimed chunks. On exit they are joined; after an error, stopped first.

    With fork, the workers inherit the tokenizer as it is: nothing is pickled or rebuilt. Where fork is
    unavailable (the default on macOS and Windows), the tokenizer is pickled to them.
    """

    def __init__(self, count: int, tokenizer: Tokenizer, path: str, spans: list[Span], dtype: np.dtype,
                 scratch: Path):
        context = fork_context()
        self.next_chunk = context.Value("q", 0) if count else None
        # Forked processes share the words they encode (see `word_sharing`); the main process is number 0.
        self.tokenizer = tokenizer
        self.exchange = WordExchange(count + 1, context) if count and context.get_start_method() == "fork" else None
        self._processes, self._messages, self._senders = [], [], []
        for process_number in range(1, count + 1):
            receiver, sender = context.Pipe(duplex=False)
            self._processes.append(context.Process(
                target=_work, args=(tokenizer, path, spans, dtype, scratch, self.next_chunk, sender, self.exchange,
                                    process_number, os.getpid()), daemon=True))
            self._messages.append(receiver)
            self._senders.append(sender)

    def __enter__(self) -> "ChunkWorkers":
        self._sharing = sharing_words(self.tokenizer, self.exchange)
        self._sharing.__enter__()  # before the fork, so that the workers inherit it
        try:
            for process, sender in zip(self._processes, self._senders, strict=True):
                process.start()
                sender.close()  # the worker has its own copy; once it exits, reading from the pipe gives EOFError
        except BaseException as error:  # e.g. the system refused another process: stop the ones already started
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def raise_failure(self) -> None:
        """Read what the workers have sent so far; re-raise a worker's error."""
        for messages in self._messages:
            while not messages.closed and messages.poll():
                try:
                    message = messages.recv()
                except EOFError:  # the worker has exited
                    messages.close()
                else:
                    if isinstance(message, BaseException):
                        raise message

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for news from a worker (a finished chunk, an error, an exit).

        Returns False, at once, when no worker is left to hear from.
        """
        listening = [messages for messages in self._messages if not messages.closed]
        if not listening:
            return False
        multiprocessing.connection.wait(listening, timeout)
        self.raise_failure()
        return True

    def raise_death(self) -> None:
        """Once every worker has ended: report one that died without a word (killed, e.g. out of memory)."""
        for process in self._processes:
            process.join()
            if process.exitcode != 0:
                raise RuntimeError(f"an encoding worker exited with code {process.exitcode}; was it killed "
                                   "(out of memory?)")

    def __exit__(self, exc_type, *_) -> None:
        self._sharing.__exit__(None, None, None)
        if self.exchange is not None:
            self.exchange.close()
        for process in self._processes:
            if process.pid is None:  # never started
                continue
            if exc_type is not None and process.is_alive():
                process.terminate()
            process.join()
