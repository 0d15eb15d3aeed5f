"""A run directory and what it promises: the one place that knows its layout and its rules.

    RUN/config.toml                      the resolved configuration (`fit` writes it once; `resume` reads it)
    RUN/tokenizer/                       the run's tokenizer (samples and evaluations decode with it)
    RUN/metrics.jsonl                    one JSON record per logged step and per validation (appended)
    RUN/checkpoints/step_00000128.pt     the newest `run.keep_last` step checkpoints (8-digit step numbers)
    RUN/checkpoints/best.pt              a copy of the checkpoint with the lowest validation loss (its own bytes)
    RUN/checkpoints/superseded/          step checkpoints set aside by `resume --from` an earlier step
    RUN/.lock                            pid and host of the process writing the run (an fcntl lock)
    RUN/samples.txt                      samples written by `pipeline`

Promises (each one tested):
- **Atomic**: every file appears whole or not at all (`atomic_write`: temporary file, fsync, rename, fsync of
  the directory). A kill mid-save leaves at most a hidden `.NAME.*.partial`, which the next writer removes.
- **Whole**: every checkpoint carries the SHA-256 of its content and is verified when loaded (checkpoint.py).
- **One writer**: `fit`, `resume` and `pipeline` hold `RUN/.lock`; a second writer is refused with the owner's
  pid. The kernel drops the lock when its owner dies, so a killed run never blocks the next command.
- **Found the same way by everyone**: `cs336-train resume/eval` and `cs336-sample` pick checkpoints through
  `RunDirectory.choose` (the newest step, `best`, a step number, or a file).
"""

import contextlib
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cs336_bpe import BPEInputError, Tokenizer, atomic_write
from cs336_train.checkpoint import DiskFullError, damaged_entry, write_checkpoint
from cs336_train.errors import CheckpointError, DataError, TrainError

CONFIG_FILE = "config.toml"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
SUPERSEDED_DIR = "superseded"
BEST_FILE = "best.pt"
LOCK_FILE = ".lock"
STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")
PARTIAL_FILE = re.compile(r"^\..+\.partial$")  # what `atomic_write` leaves when killed mid-write

try:
    import fcntl
except ImportError:  # Windows: no fcntl; runs are then not protected against a second writer
    fcntl = None


class RunLockedError(TrainError):
    """Another live process is writing this run directory."""


def step_file_name(step: int) -> str:
    return f"step_{step:08d}.pt"


class RunDirectory:
    """The files of one run, and the rules for finding, writing and protecting them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    # ---- finding checkpoints ---------------------------------------------------------------------------------

    def step_checkpoints(self) -> list[Path]:
        """Step checkpoints, oldest first (half-written `.partial` files never count)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(path for path in self.checkpoints_dir.iterdir() if STEP_FILE.match(path.name))

    def best_checkpoint(self) -> Path | None:
        path = self.checkpoints_dir / BEST_FILE
        return path if path.is_file() else None

    def has_checkpoints(self) -> bool:
        return bool(self.step_checkpoints()) or self.best_checkpoint() is not None

    def choose(self, which: str | os.PathLike | None = None) -> Path:
        """The checkpoint to load: None = the newest step (best.pt when there is none), "best", a step number
        ("128"), or the path of a checkpoint file."""
        if which is None:
            steps = self.step_checkpoints()
            if steps:
                return steps[-1]
            if self.best_checkpoint() is not None:
                return self.best_checkpoint()
            raise CheckpointError(f"{str(self.path)!r} is a directory without checkpoints (no "
                                  f"{CHECKPOINTS_DIR}/step_*.pt or {BEST_FILE}); train it first (`cs336-train fit`)")
        text = os.fspath(which)
        if text == "best":
            if self.best_checkpoint() is None:
                raise CheckpointError(f"run directory {str(self.path)!r} has no {BEST_FILE} (no validation has "
                                      f"been saved yet); choose a step: {self._available()}")
            return self.best_checkpoint()
        if text.isdigit():
            path = self.checkpoints_dir / step_file_name(int(text))
            if not path.is_file():
                raise CheckpointError(f"run directory {str(self.path)!r} has no checkpoint of step {int(text)}; "
                                      f"available: {self._available()}")
            return path
        path = Path(text)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {text!r} does not exist; give a step number, 'best' or a .pt file "
                                  f"(available in {str(self.path)!r}: {self._available()})")
        return path

    def _available(self) -> str:
        steps = [str(int(STEP_FILE.match(path.name).group(1))) for path in self.step_checkpoints()]
        names = steps + (["best"] if self.best_checkpoint() else [])
        return ", ".join(names) if names else "none"

    def newest_good_alternative(self, damaged: Path) -> Path | None:
        """The newest other checkpoint whose zip container is whole (what to use when `damaged` is refused)."""
        candidates = [path for path in reversed(self.step_checkpoints()) if path != damaged]
        if self.best_checkpoint() is not None and self.best_checkpoint() != damaged:
            candidates.append(self.best_checkpoint())
        return next((path for path in candidates if damaged_entry(path) is None), None)

    # ---- writing checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self, state: dict, is_best: bool, keep_last: int) -> Path:
        """Write `state` as the step checkpoint of its iteration (and as best.pt), then prune old step files.

        best.pt is a copy with its own bytes, never a hard link: pruning or damaging a step file must not
        take the best checkpoint with it.
        """
        path = self.checkpoints_dir / step_file_name(state["iteration"])
        try:
            write_checkpoint(state, path)
            if is_best:
                with atomic_write(self.checkpoints_dir / BEST_FILE, "wb") as handle, open(path, "rb") as source:
                    shutil.copyfileobj(source, handle)
        except DiskFullError as error:
            kept = [file.name for file in self.step_checkpoints() if file != path]
            kept += [BEST_FILE] if self.best_checkpoint() is not None else []
            raise error.with_kept(kept) from None
        except OSError as error:
            raise CheckpointError(f"cannot write checkpoint {str(path)!r}: {error}") from None
        for old in self.step_checkpoints()[:-keep_last]:
            old.unlink(missing_ok=True)
        return path

    def set_aside_checkpoints_after(self, step: int) -> list[Path]:
        """Move step checkpoints newer than `step` into checkpoints/superseded/ (a resume from an earlier step
        starts a new history; the old one is kept, not deleted, and no longer counts as the newest)."""
        later = [path for path in self.step_checkpoints() if int(STEP_FILE.match(path.name).group(1)) > step]
        if not later:
            return []
        destination = self.checkpoints_dir / SUPERSEDED_DIR / time.strftime("%Y%m%d-%H%M%S")
        destination.mkdir(parents=True, exist_ok=True)
        moved = []
        for path in later:
            os.replace(path, destination / path.name)
            moved.append(destination / path.name)
        return moved

    # ---- the configuration and the tokenizer ----------------------------------------------------------------

    def write_config(self, toml_text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(toml_text)

    def tokenizer(self) -> Tokenizer | None:
        """The run's saved tokenizer, or None when the run has none."""
        if not self.tokenizer_dir.is_dir():
            return None
        try:
            return Tokenizer.load(self.tokenizer_dir)
        except BPEInputError as error:
            raise DataError(str(error)) from None

    def current_fingerprint(self, stored: str | None) -> str | None:
        """A tokenizer fingerprint stored in one of this run's checkpoints, in today's form.

        Checkpoints saved before cs336-bpe's token-file format v2 store an older form of the same hash; the run's
        saved tokenizer, if it recognizes it, gives today's. Anything else comes back as it was.
        """
        tokenizer = self.tokenizer() if stored is not None else None
        if tokenizer is not None and tokenizer.has_fingerprint(stored):
            return tokenizer.fingerprint()
        return stored

    # ---- one writer at a time, and what dead writers left behind --------------------------------------------

    def remove_stale_partials(self) -> list[Path]:
        """Delete the `.NAME.*.partial` files that killed writers left in the run and its checkpoints.

        Only safe while holding the lock: then no live process of ours is writing them.
        """
        removed = []
        for directory in (self.path, self.checkpoints_dir):
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                if PARTIAL_FILE.match(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    @contextlib.contextmanager
    def lock(self) -> Iterator[str | None]:
        """Hold `RUN/.lock` while writing the run; yields a note when a dead owner's lock was taken over.

        `fcntl.flock` belongs to the open file: the kernel releases it when the process exits however it exits
        (SIGKILL included), so a lock can never outlive its owner. The pid and host written into the file are
        for the messages only: what is left there after a crash tells whose lock we took over.
        """
        key = self.path.resolve()
        if key in _HELD or fcntl is None:  # already ours (pipeline -> train), or no locking on this system
            _HELD[key] = _HELD.get(key, 0) + 1
            try:
                yield None
            finally:
                _HELD[key] -= 1
                if not _HELD[key]:
                    del _HELD[key]
            return
        self.path.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(descriptor) or "another process"
                raise RunLockedError(
                    f"run directory {str(self.path)!r} is being written by {owner}; wait for it to finish, stop it "
                    "(Ctrl-C saves a checkpoint), or choose another --out directory"
                ) from None
            previous = _read_owner(descriptor)
            note = (f"took over the lock of {previous}, which is no longer running" if previous else None)
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
            _HELD[key] = 1
            try:
                yield note
            finally:
                del _HELD[key]
                os.ftruncate(descriptor, 0)  # a clean exit leaves an empty lock file: nothing to take over
        finally:
            os.close(descriptor)  # closing releases the flock


_HELD: dict[Path, int] = {}  # run directories whose lock this process holds, with the nesting depth


def _read_owner(descriptor: int) -> str:
    return os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip()
