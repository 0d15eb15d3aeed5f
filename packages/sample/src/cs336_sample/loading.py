"""Load a trained model and its tokenizer from a run directory or a checkpoint file (as `cs336-train` writes).

What a run directory holds, how its checkpoints are found and how a checkpoint file is verified are written
once, in cs336-train (`cs336_train.run_directory`, `cs336_train.checkpoint`); this module only asks it:

    RUN/checkpoints/step_00005000.pt   the newest step checkpoint is used (best.pt when there is none)
    RUN/tokenizer/                     the run's tokenizer

A weights file from `cs336-train export --format safetensors` loads the same way (cs336-train reads it into the
same dict), but it holds no tokenizer and sits in no run directory: give its tokenizer (`tokenizer_dir`).

A checkpoint is read with weights_only=True (it cannot run code on load) and its SHA-256 is checked, so a
damaged file is refused instead of silently giving other text. Every problem is a `SampleError` naming the file
and what to do, because a wrong tokenizer does not crash: it silently produces nonsense text.
"""

from pathlib import Path

import torch

from cs336_bpe import BPEInputError, Tokenizer
from cs336_nn import ModelConfig, TransformerLM
from cs336_sample.errors import SampleError
from cs336_train import CheckpointError, RunDirectory
from cs336_train import read_checkpoint as read_verified_checkpoint
from cs336_train.checkpoint import FORMAT_VERSION as CHECKPOINT_FORMAT_VERSION
from cs336_train.checkpoint import WEIGHTS_SUFFIX, NewerFormatError


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as is; for a run directory, its newest step checkpoint (best.pt if it has none)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise SampleError(f"{str(path)!r} does not exist; give a run directory (with checkpoints/ inside) or a "
                          "checkpoint file (.pt)")
    try:
        return RunDirectory(path).choose()
    except CheckpointError as error:
        raise SampleError(f"{error}; or give a checkpoint file") from None


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """The checkpoint's dict, verified (format, version, SHA-256) by cs336-train, with the entries we need."""
    try:
        checkpoint = read_verified_checkpoint(path, map_location=device)
    except NewerFormatError as error:
        raise SampleError(f"{str(path)!r} has checkpoint format version {error.version!r}, but this cs336-sample "
                          f"reads up to version {CHECKPOINT_FORMAT_VERSION}; upgrade cs336-sample") from None
    except CheckpointError as error:
        raise SampleError(f"{str(path)!r} is not a readable checkpoint: {error}") from None
    if checkpoint.get("format") is None:
        raise SampleError(f"{str(path)!r} is not a cs336 checkpoint (no \"format\" tag); give a checkpoint "
                          "written by cs336-train")
    if "config" not in checkpoint:
        raise SampleError(f"{str(path)!r} has no 'config' entry; it is incomplete, use another checkpoint")
    return checkpoint


def build_model(checkpoint: dict, path: Path, device: str | torch.device) -> TransformerLM:
    """The TransformerLM described by the checkpoint's config, with its weights."""
    try:
        model_config = ModelConfig.from_dict(checkpoint["config"]["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise SampleError(f"{str(path)!r} has no valid model configuration (config['model']): {error}") from None
    if not isinstance(checkpoint["model"], dict):
        raise SampleError(f"{str(path)!r} holds no state dict under 'model'; use a checkpoint written by cs336-train")
    model = TransformerLM(model_config, device=device)
    # A state dict saved from a torch.compile'd model prefixes every key with "_orig_mod.".
    state = {key.removeprefix("_orig_mod."): value for key, value in checkpoint["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise SampleError(f"the weights in {str(path)!r} do not fit its model configuration: "
                          f"{str(error).splitlines()[0]} ...; the checkpoint is damaged or was edited") from None
    return model.eval()


def load_tokenizer(checkpoint_path: Path, tokenizer_dir: str | Path | None) -> Tokenizer:
    """The tokenizer in `tokenizer_dir`, by default the run's: <checkpoint's parent's parent>/tokenizer."""
    if tokenizer_dir is None and checkpoint_path.suffix == WEIGHTS_SUFFIX:
        raise SampleError(f"{str(checkpoint_path)!r} holds weights only, no tokenizer; pass the tokenizer the model "
                          "was trained with (--tokenizer RUN/tokenizer in the CLI)")
    directory = (Path(tokenizer_dir) if tokenizer_dir is not None
                 else RunDirectory(checkpoint_path.parent.parent).tokenizer_dir)
    if not directory.is_dir():
        raise SampleError(f"no tokenizer at {str(directory)!r}; pass the directory the tokenizer was saved in "
                          "(--tokenizer DIR in the CLI)")
    try:
        return Tokenizer.load(directory)
    except (BPEInputError, OSError, ValueError) as error:
        raise SampleError(f"cannot load the tokenizer in {str(directory)!r}: {error}") from None


def check_compatible(tokenizer: Tokenizer, checkpoint: dict, model_config: ModelConfig, path: Path) -> None:
    expected = checkpoint.get("tokenizer_fingerprint")
    if expected is not None and not tokenizer.has_fingerprint(expected):
        raise SampleError(f"the tokenizer (fingerprint {tokenizer.fingerprint()}) is not the one {str(path)!r} "
                          f"was trained with (fingerprint {expected}); pass the run's own tokenizer directory")
    if tokenizer.vocab_size > model_config.vocab_size:
        raise SampleError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model in {str(path)!r} only "
                          f"{model_config.vocab_size}; pass the tokenizer the model was trained with")


def load_model_and_tokenizer(path: str | Path, device: str | torch.device = "cpu",
                             tokenizer_dir: str | Path | None = None) -> tuple[TransformerLM, Tokenizer, dict]:
    """(model in eval mode on `device`, its tokenizer, the run configuration dict) from a run directory or a
    checkpoint file. Raises `SampleError` with the reason and the fix when anything does not fit."""
    checkpoint_path = find_checkpoint(path)
    checkpoint = read_checkpoint(checkpoint_path, device)
    model = build_model(checkpoint, checkpoint_path, device)
    tokenizer = load_tokenizer(checkpoint_path, tokenizer_dir)
    check_compatible(tokenizer, checkpoint, model.config, checkpoint_path)
    return model, tokenizer, checkpoint["config"]
