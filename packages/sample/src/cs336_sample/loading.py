"""Load a trained model and its tokenizer from a run directory or a checkpoint file (as `cs336-train` writes).

A run directory:

    RUN/checkpoints/step_00005000.pt   one per saved iteration (8 digits); the largest number is the newest
    RUN/checkpoints/best.pt            optional: the lowest validation loss so far
    RUN/tokenizer/                     the tokenizer (`cs336_bpe.Tokenizer.save`)

A checkpoint is a `torch.save`d dict: "format" == "cs336-checkpoint", "format_version" (1), "iteration",
"model" (the TransformerLM state dict), "config" (the run configuration; config["model"] is
`ModelConfig.to_dict()`), "tokenizer_fingerprint" (`Tokenizer.fingerprint()`, or None) and training state we
ignore here. It is read with weights_only=True: a checkpoint from elsewhere cannot run code on load.

Every problem is a `SampleError` naming the file and what to do, because a wrong tokenizer does not crash:
it silently produces nonsense text.
"""

import re
from pathlib import Path

import torch

from cs336_bpe import BPEInputError, Tokenizer
from cs336_nn import ModelConfig, TransformerLM
from cs336_sample.errors import SampleError

CHECKPOINT_FORMAT = "cs336-checkpoint"
SUPPORTED_FORMAT_VERSION = 1
STEP_CHECKPOINT_RE = re.compile(r"step_(\d+)\.pt")


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as is; for a run directory, its newest step checkpoint (best.pt if it has none)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise SampleError(f"{str(path)!r} does not exist; give a run directory (with checkpoints/ inside) or a "
                          "checkpoint file (.pt)")
    checkpoint_dir = path / "checkpoints"
    steps = sorted((int(match.group(1)), file) for file in checkpoint_dir.glob("step_*.pt")
                   if (match := STEP_CHECKPOINT_RE.fullmatch(file.name)))
    if steps:
        return steps[-1][1]
    if (checkpoint_dir / "best.pt").is_file():
        return checkpoint_dir / "best.pt"
    raise SampleError(f"{str(path)!r} is a directory without checkpoints: expected {checkpoint_dir}/step_*.pt; "
                      "train first (cs336-train) or give a checkpoint file")


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """The checkpoint's dict, checked for our format and a version we can read."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # unpickling arbitrary bytes can fail in almost any way (IndexError, KeyError ...)
        raise SampleError(f"{str(path)!r} is not a readable checkpoint ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else 'empty'}); give a file written by "
                          "cs336-train") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise SampleError(f"{str(path)!r} is not a cs336 checkpoint (no \"format\": {CHECKPOINT_FORMAT!r}); "
                          "give a checkpoint written by cs336-train")
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version > SUPPORTED_FORMAT_VERSION:
        raise SampleError(f"{str(path)!r} has checkpoint format version {version!r}, but this cs336-sample reads "
                          f"up to version {SUPPORTED_FORMAT_VERSION}; upgrade cs336-sample")
    for key in ("model", "config"):
        if key not in checkpoint:
            raise SampleError(f"{str(path)!r} has no {key!r} entry; it is incomplete, use another checkpoint")
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
    directory = Path(tokenizer_dir) if tokenizer_dir is not None else checkpoint_path.parent.parent / "tokenizer"
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
