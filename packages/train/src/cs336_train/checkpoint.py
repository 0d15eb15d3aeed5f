"""Checkpoints (handout §5.2) that never lose a run.

A checkpoint is one `torch.save` file holding a dict:

    format, format_version   "cs336-checkpoint", 1   (a newer version is refused, not misread)
    iteration                optimizer steps done
    model, optimizer         state dicts (the model's keys are the course's names)
    config                   the whole resolved TrainConfig as a dict: a resume checks it still matches
    rng                      torch, numpy and python random states: a resumed run continues exactly
    data_state               the training-window sampler's state
    best_val_loss, tokenizer_fingerprint, wall_s, tokens

Safety, three ways:
- Writes are atomic (temporary file, flush, fsync, rename): a crash or a full disk mid-save leaves the previous
  checkpoint as it was.
- Loading uses `torch.load(weights_only=True)`, which rebuilds tensors and plain containers only and never runs
  code from the file (a plain `torch.load` unpickles arbitrary objects, so a checkpoint could run anything).
- A run directory keeps the last N step checkpoints plus `best.pt` (lowest validation loss).
"""

import errno
import io
import os
import pickle
import re
from pathlib import Path
from typing import IO, BinaryIO

import torch

from cs336_bpe import atomic_write
from cs336_train.errors import CheckpointError

FORMAT = "cs336-checkpoint"
FORMAT_VERSION = 1
STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")
BEST_FILE = "best.pt"

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                    out: PathOrFile) -> None:
    """The course's hook: model, optimizer and iteration to a path (atomically) or an open binary file."""
    write_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration}, out)


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """The course's hook: restore model (and optimizer) state from `src`; returns the saved iteration."""
    state = read_checkpoint(src)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["iteration"]


def write_checkpoint(state: dict, out: PathOrFile) -> None:
    """Save `state` (plus the format tag) to `out`; a path is written atomically."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    if not isinstance(out, str | os.PathLike):
        torch.save(state, out)
        return
    try:
        with atomic_write(out, "wb") as handle:
            torch.save(state, handle)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise CheckpointError(
                f"the disk is full: checkpoint {os.fspath(out)!r} was not written (the previous checkpoints are "
                "intact); free some space or lower run.keep_last, then resume"
            ) from None
        raise CheckpointError(f"cannot write checkpoint {os.fspath(out)!r}: {error}") from None


def read_checkpoint(src: PathOrFile, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (`weights_only=True`) and check its format; clear errors otherwise."""
    name = os.fspath(src) if isinstance(src, str | os.PathLike) else getattr(src, "name", "<file object>")
    if isinstance(src, str | os.PathLike) and not Path(src).is_file():
        raise CheckpointError(f"checkpoint {name!r} does not exist")
    try:
        state = torch.load(src, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "GLOBAL" in message or "global" in message:  # the file names a function or class to call
            offender = next((line for line in message.splitlines() if "GLOBAL" in line or "global" in line), "")
            raise CheckpointError(
                f"checkpoint {name!r} holds more than tensors and plain containers, so it is not loaded: "
                f"loading could run code from the file ({offender.strip()})"
            ) from None
        raise CheckpointError(f"checkpoint {name!r} is corrupt or truncated (not a torch.save file)") from None
    except (RuntimeError, EOFError, OSError, ValueError, io.UnsupportedOperation) as error:
        raise CheckpointError(
            f"checkpoint {name!r} is corrupt or truncated ({str(error).splitlines()[0]}); use an earlier one"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise CheckpointError(f"{name!r} is not a checkpoint: it has no model state and iteration")
    version = state.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {name!r} has format version {version}, newer than this cs336-train understands "
            f"({FORMAT_VERSION}); upgrade cs336-train"
        )
    return state


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Settings that differ between two nested config dicts, as 'section.key: saved -> current' lines."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new and not (isinstance(old, list | tuple) and isinstance(new, list | tuple)
                                 and list(old) == list(new)):
            differences.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return differences


class CheckpointDirectory:
    """`RUN/checkpoints/`: step_00000100.pt ... (the newest `keep_last` are kept) and best.pt."""

    def __init__(self, directory: str | Path, keep_last: int):
        self.directory = Path(directory)
        self.keep_last = keep_last

    def step_files(self) -> list[Path]:
        """Step checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(path for path in self.directory.iterdir() if STEP_FILE.match(path.name))

    def latest(self) -> Path | None:
        files = self.step_files()
        return files[-1] if files else None

    def save(self, state: dict, is_best: bool) -> Path:
        path = self.directory / f"step_{state['iteration']:08d}.pt"
        write_checkpoint(state, path)
        if is_best:
            self._link_best(path)
        for old in self.step_files()[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def _link_best(self, path: Path) -> None:
        # A hard link shares the bytes already written; the rename makes replacing best.pt atomic.
        temporary = self.directory / f".{BEST_FILE}.partial"
        temporary.unlink(missing_ok=True)
        try:
            os.link(path, temporary)
        except OSError:  # file systems without hard links: copy the bytes instead
            with atomic_write(temporary, "wb") as handle:
                handle.write(path.read_bytes())
        os.replace(temporary, self.directory / BEST_FILE)
