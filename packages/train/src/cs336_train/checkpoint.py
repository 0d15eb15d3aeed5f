"""The checkpoint file (handout §5.2): one `torch.save` file that never loses a run and never lies about itself.

A checkpoint holds a dict:

    format, format_version   "cs336-checkpoint", 2   (a newer version is refused, not misread)
    sha256                   SHA-256 of everything below (see `content_sha256`): damage is detected on load
    iteration                optimizer steps done
    model, optimizer         state dicts (the model's keys are the course's names)
    config                   the whole resolved TrainConfig as a dict: a resume checks it still matches
    rng                      torch, numpy and python random states: a resumed run continues exactly
    data_state               the training-window sampler's state
    progress, best_val_loss, valid_loss, tokenizer_fingerprint

Safety, four ways:
- Writes are atomic (temporary file, flush, fsync, rename, fsync of the directory): a crash or a full disk
  mid-save leaves the previous checkpoint as it was, and at worst a hidden `.NAME.*.partial` that the next
  `fit`/`resume` removes (`run_directory.py`).
- Damage is detected before anything is used. torch.save writes a zip whose entries carry CRC-32s that
  torch.load ignores; we check them first (a flipped bit is refused before unpickling can misbehave), then
  recompute the SHA-256 of the loaded content and compare it with the stored one.
- Loading uses `torch.load(weights_only=True)`, which rebuilds tensors and plain containers only and never runs
  code from the file (a plain `torch.load` unpickles arbitrary objects, so a checkpoint could run anything).
- Version 1 files (before the SHA-256) still load: their CRC-32s are checked.

A weights file (`save_weights`, `cs336-train export --format safetensors`) is the other kind of file
`read_checkpoint` reads: a ``.safetensors`` file with the model's weights under our names, and in its text
metadata what is needed to rebuild and check the model (configuration, step, tokenizer fingerprint, SHA-256).
Why safetensors: the file is a JSON header plus raw tensor bytes, so loading it can never run code (a pickle
can, and `torch.load(weights_only=True)` is a guard around a format that could), it loads without torch
(numpy, JAX, Rust, llama.cpp's converters read it) and it can be memory-mapped. It cannot hold the optimizer
state or random states, so a run cannot *resume* from it: it is for sampling, evaluating and sharing.
"""

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import IO, BinaryIO

import torch

from cs336_bpe import atomic_write
from cs336_train.errors import CheckpointError

FORMAT = "cs336-checkpoint"
FORMAT_VERSION = 2
CHECKSUM_KEY = "sha256"
WEIGHTS_FORMAT = "cs336-weights"  # a .safetensors file from `save_weights`
WEIGHTS_FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"

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


def content_sha256(state: dict) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every other value's repr.

    The walk follows the dict's own order, which torch.save/torch.load keep, so the hash of a loaded state equals
    the hash of the saved one exactly when nothing changed.

    >>> content_sha256({"w": torch.zeros(2)}) == content_sha256({"w": torch.zeros(2)})
    True
    >>> content_sha256({"w": torch.zeros(2)}) == content_sha256({"w": torch.tensor([0.0, 1e-30])})
    False
    """
    hasher = hashlib.sha256()
    _hash_value(hasher, state)
    return hasher.hexdigest()


def _hash_value(hasher, value) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().to("cpu").contiguous().reshape(-1)
        hasher.update(f"tensor {data.dtype} {tuple(value.shape)}:".encode())
        hasher.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    elif isinstance(value, dict):
        hasher.update(f"dict {len(value)}:".encode())
        for key, item in value.items():
            _hash_value(hasher, key)
            _hash_value(hasher, item)
    elif isinstance(value, list | tuple):
        hasher.update(f"{type(value).__name__} {len(value)}:".encode())
        for item in value:
            _hash_value(hasher, item)
    else:  # int, float, str, bool, None: repr is exact (floats round-trip) and names the type's spelling
        hasher.update(f"{type(value).__name__} {value!r};".encode())


def write_checkpoint(state: dict, out: PathOrFile) -> None:
    """Save `state` (plus the format tag and its content hash) to `out`; a path is written atomically.

    A write that fails for lack of space raises a CheckpointError saying so, however torch reports it (an
    OSError, or a RuntimeError from its zip writer).
    """
    content = {key: value for key, value in state.items() if key not in ("format", "format_version", CHECKSUM_KEY)}
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, CHECKSUM_KEY: content_sha256(content), **content}
    if not isinstance(out, str | os.PathLike):
        torch.save(state, out)
        return
    try:
        with atomic_write(out, "wb") as handle:
            torch.save(state, handle)
    except (OSError, RuntimeError) as error:
        needed = _size_estimate(state)
        if _disk_is_full(error, Path(out).parent, needed):
            raise DiskFullError(Path(out), needed) from None
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"cannot write checkpoint {os.fspath(out)!r}: {first_line}") from None


class DiskFullError(CheckpointError):
    """The disk ran out of space while a checkpoint was written; nothing that was there before is touched."""

    def __init__(self, path: Path, needed_bytes: int, kept: list[str] = ()):
        self.path, self.needed_bytes = path, needed_bytes
        free = _free_bytes(path.parent)
        kept_text = f"kept: {', '.join(kept)}" if kept else "the previous checkpoints are intact"
        super().__init__(
            f"the disk is full: checkpoint {str(path)!r} was not written (it needs about {_megabytes(needed_bytes)}, "
            f"{_megabytes(free)} free on the disk holding {str(path.parent)!r}); {kept_text}. Free some space or "
            "lower run.keep_last, then `cs336-train resume`"
        )

    def with_kept(self, kept: list[str]) -> "DiskFullError":
        return DiskFullError(self.path, self.needed_bytes, kept)


def _disk_is_full(error: Exception, directory: Path, needed_bytes: int) -> bool:
    # torch's zip writer turns a failed write into RuntimeError("[enforce fail at inline_container.cc] ...
    # unexpected pos ..."), without the errno; so when the errno is missing we ask the disk itself.
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left" in str(error) or _free_bytes(directory) < needed_bytes


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def _size_estimate(state: dict) -> int:
    """Bytes of the tensors in `state`: close to the file size (the rest is a small pickle)."""
    total = 0
    stack = [state]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return total


def _megabytes(count: int) -> str:
    """A size a person reads at a glance: 4.0 kB, 33.6 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} bytes"


def read_checkpoint(src: PathOrFile, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely and check that it is whole; a CheckpointError naming the file otherwise.

    Order matters: the zip's CRC-32s first (damage is caught before anything is unpickled), then
    `torch.load(weights_only=True)`, then the format tag and version, then the stored SHA-256 of the content.
    """
    name = os.fspath(src) if isinstance(src, str | os.PathLike) else getattr(src, "name", "<file object>")
    if isinstance(src, str | os.PathLike) and Path(src).suffix == WEIGHTS_SUFFIX:
        return read_weights(src, map_location)
    if isinstance(src, str | os.PathLike):
        if not Path(src).is_file():
            raise CheckpointError(f"checkpoint {name!r} does not exist")
        damaged = damaged_entry(src)
        if damaged:
            raise CheckpointError(f"checkpoint {name!r} is corrupt or truncated: its bytes are damaged ({damaged}); "
                                  "use an earlier one")
    state = _unpickle(src, name, map_location)
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise CheckpointError(f"{name!r} is not a checkpoint: it has no model state and iteration, so it is not a "
                              "cs336 checkpoint written by cs336-train")
    version = state.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise NewerFormatError(name, version)
    if version >= 2:
        stored = state.pop(CHECKSUM_KEY, None)
        content = {key: value for key, value in state.items() if key not in ("format", "format_version")}
        if stored is None or stored != content_sha256(content):
            raise CheckpointError(
                f"checkpoint {name!r} is damaged: its content does not match the SHA-256 stored in it; "
                "use an earlier one"
            )
    return state


class NewerFormatError(CheckpointError):
    """A checkpoint written by a newer cs336-train, in a format this one cannot read."""

    def __init__(self, name: str, version):
        self.version = version
        super().__init__(f"checkpoint {name!r} has format version {version!r}, newer than this cs336-train "
                         f"understands ({FORMAT_VERSION}); upgrade cs336-train")


def damaged_entry(path: str | os.PathLike) -> str | None:
    """Why the zip container of `path` is damaged (a bad CRC-32, a broken header), or None if it is whole.

    A file that does not start like a zip is left to torch.load to refuse (older torch formats are not zips).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every entry and compares its CRC-32
    except (OSError, EOFError) as error:
        return f"unreadable: {error}"
    except Exception as error:  # damaged headers fail in many ways: BadZipFile, struct.error, ValueError ...
        with open(path, "rb") as handle:
            looks_like_zip = handle.read(4) == b"PK\x03\x04"
        return f"broken zip structure: {type(error).__name__}: {error}" if looks_like_zip else None
    return f"the CRC-32 of its entry {bad!r} does not match its bytes" if bad else None


def _unpickle(src: PathOrFile, name: str, map_location) -> object:
    try:
        return torch.load(src, map_location=map_location, weights_only=True)
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
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {name!r} is corrupt or truncated ({first_line}); use an earlier one") \
            from None
    except Exception as error:  # unpickling damaged bytes can fail in almost any way (IndexError, KeyError ...)
        raise CheckpointError(
            f"checkpoint {name!r} is corrupt ({type(error).__name__} while unpickling); use an earlier one"
        ) from None


def save_weights(state: dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint's weights, with its configuration, step and tokenizer fingerprint, as safetensors.

    Tied embeddings are one tensor under two names; safetensors refuses shared tensors, so `lm_head.weight` is
    left out and `read_weights` puts it back. Written atomically, like checkpoints.
    """
    from safetensors.torch import save

    config = state.get("config") or {}
    weights = {key.removeprefix("_orig_mod."): value.detach().to("cpu").contiguous()
               for key, value in state["model"].items()}
    if config.get("model", {}).get("tie_embeddings"):
        weights.pop("lm_head.weight", None)
    progress = state.get("progress") or {}
    metadata = {
        "format": "pt",  # what transformers and other readers of safetensors expect
        "cs336_format": WEIGHTS_FORMAT, "cs336_format_version": str(WEIGHTS_FORMAT_VERSION),
        "config": json.dumps(config), "iteration": str(state["iteration"]),
        "tokens": str(progress.get("tokens", "")), "valid_loss": json.dumps(state.get("valid_loss")),
        "tokenizer_fingerprint": state.get("tokenizer_fingerprint") or "",
        CHECKSUM_KEY: content_sha256(dict(sorted(weights.items()))),
    }
    path = Path(path)
    try:
        with atomic_write(path, "wb") as handle:
            handle.write(save(weights, metadata=metadata))
    except OSError as error:
        raise CheckpointError(f"cannot write weights file {str(path)!r}: {error.strerror or error}") from None
    return path


def read_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A weights file from `save_weights`, verified, as a checkpoint-shaped dict (model, config, iteration ...)
    that `cs336-sample` and `cs336-train eval` use as they use a checkpoint."""
    from safetensors import SafetensorError, safe_open

    name = os.fspath(path)
    if not Path(path).is_file():
        raise CheckpointError(f"weights file {name!r} does not exist")
    try:
        with safe_open(name, framework="pt", device=str(map_location)) as handle:
            metadata = handle.metadata() or {}
            weights = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not iterable)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{name!r} is not a readable safetensors file ({error}); export it again") from None
    if metadata.get("cs336_format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{name!r} holds weights without cs336's configuration (no cs336_format in its "
                              "metadata); give a file written by `cs336-train export --format safetensors`")
    if int(metadata.get("cs336_format_version", 0)) > WEIGHTS_FORMAT_VERSION:
        raise NewerFormatError(name, int(metadata["cs336_format_version"]))
    if metadata.get(CHECKSUM_KEY) != content_sha256(dict(sorted(weights.items()))):
        raise CheckpointError(f"weights file {name!r} is damaged: its tensors do not match the SHA-256 stored in it; "
                              "export it again")
    config = json.loads(metadata["config"])
    if config.get("model", {}).get("tie_embeddings"):
        weights["lm_head.weight"] = weights["token_embeddings.weight"]
    return {
        "format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION, "iteration": int(metadata["iteration"]),
        "model": weights, "config": config, "valid_loss": json.loads(metadata.get("valid_loss", "null")),
        "tokenizer_fingerprint": metadata.get("tokenizer_fingerprint") or None,
        "progress": {"tokens": int(metadata["tokens"])} if metadata.get("tokens") else {},
    }


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
