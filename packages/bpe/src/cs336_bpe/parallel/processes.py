"""Starting worker processes: how many, with which start method, and a pool that maps jobs in order."""

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.context import BaseContext
from typing import TypeVar

Job, Result = TypeVar("Job"), TypeVar("Result")

# Below this size one process is faster than starting workers.
PARALLEL_MIN_BYTES = 1 << 20


def default_num_workers() -> int:
    """The number of CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def workers_for(file_size: int, num_workers: int | None) -> int:
    """The processes to use on a file of `file_size` bytes: `num_workers` (default: one per core), or one for a
    small file."""
    return 1 if file_size < PARALLEL_MIN_BYTES else (num_workers or default_num_workers())


def fork_context() -> BaseContext:
    """"fork" where it exists: workers inherit the already-imported modules and objects, nothing is pickled.
    Elsewhere (Windows) the platform's default."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


def map_in_processes(function: Callable[[Job], Result], jobs: Iterable[Job], num_workers: int) -> Iterator[Result]:
    """``map(function, jobs)``, in order, computed by `num_workers` processes (in this one if it is 1)."""
    if num_workers == 1:
        yield from map(function, jobs)
        return
    with fork_context().Pool(num_workers) as pool:
        yield from pool.imap(function, jobs)
