"""One writer per output file, and the cleanup after writers that were killed.

Writing ``train.bin`` creates scratch entries beside it (in the same directory, so that the final rename is
atomic): ``.train.bin.<random>.partial`` and ``.train.bin.json.<random>.partial`` (see `atomic`), and the
directory of finished chunks ``.train.bin.chunks-<random>`` (see `corpus`). A writer that fails or is
interrupted removes them. One killed with SIGKILL (``kill -9``, the out-of-memory killer, a job scheduler) runs
no code at all, and they stay, about as large as the output itself.

The next writer of the same output removes them, but only if it knows their writer is dead: removing a live
writer's scratch would break it. Process ids written into the names could tell, but a pid gets reused, and
means nothing to another machine (or container) sharing the directory. A lock has neither problem: every
writer of ``train.bin`` holds an exclusive ``flock`` on ``.train.bin.lock`` for as long as it writes, and the
kernel releases it when the writer dies, however it dies (forked worker processes inherit it, so it is held
until the last of them is gone too). Whoever takes the lock therefore knows that any scratch of ``train.bin``
belongs to a dead writer. A second live writer of the same output does not get the lock: it is refused with a
clear error instead of racing the first (whose rename would then silently replace the second's output).

Where ``fcntl`` is missing (Windows) or the filesystem refuses locks, there is no lock and no cleanup.
"""

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cs336_bpe.errors import BPEInputError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def scratch_directory_prefix(output_path: Path) -> str:
    """The name prefix of the scratch directory a writer of `output_path` creates beside it."""
    return f".{output_path.name}.chunks-"


@contextmanager
def exclusive_writer(output_path: Path, *other_outputs: Path) -> Iterator[list[tuple[Path, int]]]:
    """Be the only writer of `output_path` while the block runs, after removing what killed writers left.

    Yields the leftover entries that were removed, each with the bytes it held (none where locks are
    unavailable). `other_outputs` are files written under the same lock (the token file's metadata): their
    leftovers are removed too.
    """
    lock_path = output_path.with_name(f".{output_path.name}.lock")
    descriptor = _take_lock(lock_path, output_path)
    if descriptor is None:
        yield []
        return
    try:
        yield _remove_leftovers([output_path, *other_outputs])
    finally:
        # Unlinked while still held, so that no lock file outlives the run; `_take_lock` copes with a writer
        # that opened it just before.
        lock_path.unlink(missing_ok=True)
        os.close(descriptor)


def _take_lock(lock_path: Path, output_path: Path) -> int | None:
    """Lock `lock_path`, creating it; return its descriptor, or None where locks are unavailable."""
    if fcntl is None:
        return None
    while True:
        descriptor = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise BPEInputError(
                f"another process is writing {str(output_path)!r} right now (it holds {str(lock_path)!r}); "
                "wait for it to finish, or write to another file"
            ) from None
        except OSError:  # a filesystem without locks (some network mounts): write without one
            os.close(descriptor)
            return None
        # The previous writer may have unlinked the file between our open and our lock: a lock on that
        # nameless file guards nothing, so start again with the file now at that name.
        try:
            if os.path.samestat(os.fstat(descriptor), os.stat(lock_path)):
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


def _leftover_pattern(output_path: Path) -> re.Pattern[str]:
    """Names of the scratch entries of `output_path`: ``.NAME.<random>.partial`` and ``.NAME.chunks-<random>``.

    The random parts (from `tempfile`) contain no dot, so the scratch of ``out.bin.x`` never matches ``out.bin``.
    """
    name = re.escape(output_path.name)
    return re.compile(rf"\.{name}\.[^.]+\.partial|{re.escape(scratch_directory_prefix(output_path))}[^.]+")


def _remove_leftovers(output_paths: list[Path]) -> list[tuple[Path, int]]:
    """Remove the scratch entries of `output_paths`; only call this holding their lock (see the module doc)."""
    removed = []
    for output_path in output_paths:
        pattern = _leftover_pattern(output_path)
        for entry in output_path.parent.iterdir():
            if pattern.fullmatch(entry.name):
                size = _disk_bytes(entry)
                _remove(entry)
                if not os.path.lexists(entry):
                    removed.append((entry, size))
    return removed


def _remove(entry: Path) -> None:
    """Remove a file or a whole directory; what cannot be removed (another user's?) is left as it is."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with suppress(OSError):
            entry.unlink(missing_ok=True)


def _disk_bytes(entry: Path) -> int:
    """The size of a file, or of all the files under a directory (0 for what is already gone)."""
    try:
        if not entry.is_dir():
            return entry.stat().st_size
        return sum(path.stat().st_size for path in entry.rglob("*") if path.is_file())
    except OSError:
        return 0
