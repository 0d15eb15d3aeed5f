"""`cs336-train eval`: the exact validation loss and perplexity of a saved checkpoint on a token file."""

from pathlib import Path

from cs336_nn import TransformerLM, perplexity
from cs336_train import runtime
from cs336_train.checkpoint import CheckpointDirectory, read_checkpoint
from cs336_train.config import TrainConfig
from cs336_train.data import open_tokens, tokenizer_fingerprint_of
from cs336_train.errors import CheckpointError
from cs336_train.trainer import current_fingerprint, evaluate


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the newest step checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        latest = CheckpointDirectory(path / "checkpoints", keep_last=1).latest()
        if latest is None:
            raise CheckpointError(f"run directory {str(path)!r} has no checkpoints yet")
        return latest
    return path


def evaluate_checkpoint(checkpoint: str | Path, token_file: str | Path, device: str = "auto",
                        batch_size: int = 16) -> dict:
    path = resolve_checkpoint(checkpoint)
    device = runtime.resolve_device(device)
    state = read_checkpoint(path, map_location=device)
    if "config" not in state:
        raise CheckpointError(f"{str(path)!r} has no saved configuration (it is a bare hook checkpoint)")
    config = TrainConfig.from_dict(state["config"], [f"run.valid_batch_size={batch_size}"])
    model = TransformerLM(config.model, device=device)
    model.load_state_dict(state["model"])
    expected = state.get("tokenizer_fingerprint")
    if expected is not None and expected != tokenizer_fingerprint_of(token_file):
        expected = current_fingerprint(expected, path.parent.parent)  # an older checkpoint: <run>/checkpoints/x.pt
    tokens = open_tokens(token_file, config.model.vocab_size, expected)
    loss = evaluate(model, tokens, config, device)
    return {"checkpoint": str(path), "iteration": state["iteration"], "tokens": len(tokens), "loss": loss,
            "perplexity": perplexity(loss)}
