"""Count the pre-tokens of a text file, in parallel over chunks, in memory bounded by distinct pre-tokens.

The file is never read whole: it is cut into chunks at special tokens (see `parallel.chunking`), each worker
process reads and counts its own chunks (`parallel.processes`), and only the counts (one entry per distinct
pre-token) travel back.

Memory grows with the number of distinct pre-tokens, not with the file, but on web text that number keeps
growing (names, numbers, typos, URLs ...). `max_pretokens` caps it: whenever the running counts hold more
distinct pre-tokens than that, the rarest are dropped (`drop_rarest`). They are the ones that matter least
to BPE, whose merges are decided by the most frequent pairs; BENCHMARKS.md measures what a cap changes.
"""

import os
import re
from collections import Counter
from collections.abc import Callable

import numpy as np

from cs336_bpe.parallel.chunking import chunk_spans, read_span
from cs336_bpe.parallel.processes import map_in_processes, workers_for
from cs336_bpe.pretokenize import count_pretokens, special_tokens_pattern

# Chunks bound each worker's memory (the decoded text of one chunk) while keeping scheduling overhead low.
MAX_CHUNK_BYTES = 16 << 20


def _count_span(job: tuple[str, int, int, re.Pattern[str] | None]) -> Counter[str]:
    path, start, end, special_re = job
    return count_pretokens(read_span(path, start, end), special_re)


def drop_rarest(counts: Counter[str], max_pretokens: int) -> None:
    """Keep the `max_pretokens` most frequent entries of `counts`, in place. Among entries with the same count at
    the cut, the lexicographically greater pre-tokens stay (as BPE breaks its ties), so the result does not depend
    on the order of the entries, and exactly `max_pretokens` remain even when many counts tie.

    >>> counts = Counter({"the": 9, "cat": 2, "sat": 2, "zyx": 1})
    >>> drop_rarest(counts, 2); counts
    Counter({'the': 9, 'sat': 2})
    """
    if len(counts) <= max_pretokens:
        return
    values = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    # the max_pretokens-th largest count: everything above it stays, and ties at it fill the remaining places
    threshold = int(np.partition(values, len(values) - max_pretokens)[len(values) - max_pretokens])
    kept_above = sum(1 for count in counts.values() if count > threshold)
    tied = sorted((pretoken for pretoken, count in counts.items() if count == threshold), reverse=True)
    dropped = tied[max_pretokens - kept_above:]
    dropped += [pretoken for pretoken, count in counts.items() if count < threshold]
    for pretoken in dropped:
        del counts[pretoken]


def count_file_pretokens(
    path: str | os.PathLike,
    special_tokens: list[str],
    num_workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_pretokens: int | None = None,
) -> Counter[str]:
    """Pre-token counts of the whole file; `on_progress(bytes_done)` is called after each chunk.

    With `max_pretokens`, the counts are cut back to at most that many distinct pre-tokens (`drop_rarest`)
    after each chunk that pushes them over it."""
    path = os.fspath(path)
    file_size = os.path.getsize(path)
    num_workers = workers_for(file_size, num_workers)
    # About four chunks per worker keeps both workers busy until the end. With a cap, what is dropped depends
    # on where chunks end, so the chunks must not depend on the number of workers: eight, as with two workers.
    chunks_wanted = 8 if max_pretokens is not None else 4 * num_workers
    chunk_bytes = min(MAX_CHUNK_BYTES, -(-file_size // chunks_wanted))  # rounded up: not one chunk too many
    special_re = special_tokens_pattern(special_tokens)
    jobs = [(path, start, end, special_re) for start, end in chunk_spans(path, chunk_bytes, special_tokens)]

    totals: Counter[str] = Counter()
    for (_, start, end, _), counts in zip(jobs, map_in_processes(_count_span, jobs, num_workers), strict=True):
        totals.update(counts)
        if max_pretokens is not None:
            drop_rarest(totals, max_pretokens)
        if on_progress is not None:
            on_progress(end - start)
    return totals
