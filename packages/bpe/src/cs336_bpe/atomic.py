"""Write files so that a crash never leaves a half-written output behind.

We write to a temporary file in the destination's directory, flush and fsync it, then `os.replace` it over the
destination, and fsync the directory, which holds the name. `os.replace` is atomic on POSIX and Windows, so
readers see either the old file or the new one. If anything fails (an exception, Ctrl-C), the temporary file is
deleted and the destination is untouched. A process killed outright (SIGKILL) runs no cleanup: its
``.NAME.<random>.partial`` stays, and the next `corpus.encode_file` to the same output removes it (see
`writer_lock`).
"""

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from cs336_bpe.errors import BPEInputError


def ensure_writable_directory(directory: str | os.PathLike,
                              error: type[Exception] = BPEInputError) -> Path:
    """Create `directory` if needed and check we can write there; raise `error` (a message saying what to do)
    otherwise. Callers outside cs336-bpe pass their own error class, which their command line reports."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as failure:
        raise error(
            f"cannot create output directory {str(directory)!r}: {failure.strerror}; choose another location"
        ) from failure
    if not os.access(directory, os.W_OK | os.X_OK):
        raise error(f"output directory {str(directory)!r} is not writable; choose another location")
    return directory


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to `path`; on success it replaces `path`, on failure it is removed.

    >>> with atomic_write("out.json", "w", encoding="utf-8") as f:   # doctest: +SKIP
    ...     f.write("{}")
    """
    path = Path(path)
    directory = ensure_writable_directory(path.parent)
    file_descriptor, temporary_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".partial")
    try:
        # mkstemp creates the file readable by us only; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary_name, 0o666 & ~umask)
        with os.fdopen(file_descriptor, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary_name, path)
    except BaseException:
        # BaseException on purpose: Ctrl-C (KeyboardInterrupt) must also leave no partial file.
        Path(temporary_name).unlink(missing_ok=True)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush a directory's entries to disk, so that a rename in it survives a power cut.

    fsync on a file saves its bytes, but its name lives in the directory: without this, after a power cut the
    name could still point to the old file (or, for a new output, to nothing). Where a directory cannot be
    opened (Windows) or fsynced (some filesystems), there is nothing more to do.
    """
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)
