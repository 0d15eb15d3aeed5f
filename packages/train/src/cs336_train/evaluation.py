"""`cs336-train eval`: the exact validation loss, perplexity and bits per byte of a saved checkpoint on a token
file (bits per byte compares models with different tokenizers)."""

from pathlib import Path

from cs336_nn import TransformerLM, perplexity
from cs336_train import runtime
from cs336_train.checkpoint import read_checkpoint
from cs336_train.config import TrainConfig
from cs336_train.data import bytes_per_token, open_tokens, tokenizer_fingerprint_of
from cs336_train.errors import CheckpointError
from cs336_train.metrics import bits_per_byte
from cs336_train.run_directory import RunDirectory
from cs336_train.trainer import evaluate


def resolve_checkpoint(path: str | Path, which: str | None = None) -> Path:
    """A checkpoint file as given, or the chosen checkpoint of a run directory (default: its newest)."""
    path = Path(path)
    if path.is_dir():
        return RunDirectory(path).choose(which)
    if not path.exists():
        raise CheckpointError(f"{str(path)!r} does not exist; give a run directory or a checkpoint file (.pt)")
    return path


def evaluate_checkpoint(checkpoint: str | Path, token_file: str | Path, device: str = "auto",
                        batch_size: int = 16, which: str | None = None) -> dict:
    path = resolve_checkpoint(checkpoint, which)
    device = runtime.resolve_device(device)
    state = read_checkpoint(path, map_location=device)
    if "config" not in state:
        raise CheckpointError(f"{str(path)!r} has no saved configuration (it is a bare hook checkpoint)")
    config = TrainConfig.from_dict(state["config"], [f"run.valid_batch_size={batch_size}"])
    model = TransformerLM(config.model, device=device)
    model.load_state_dict(state["model"])
    expected = state.get("tokenizer_fingerprint")
    if expected is not None and expected != tokenizer_fingerprint_of(token_file):
        # an older checkpoint's fingerprint, translated by its run's tokenizer: <run>/checkpoints/x.pt
        expected = RunDirectory(path.parent.parent).current_fingerprint(expected)
    tokens = open_tokens(token_file, config.model.vocab_size, expected)
    loss = evaluate(model, tokens, config, device)
    return {"checkpoint": str(path), "iteration": state["iteration"], "tokens": len(tokens), "loss": loss,
            "perplexity": perplexity(loss), "bits_per_byte": bits_per_byte(loss, bytes_per_token(token_file))}
