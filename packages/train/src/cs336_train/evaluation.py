"""The exact validation loss of a model on a token file: the trainer's validations, and `cs336-train eval`, which
also gives the perplexity and bits per byte of a saved checkpoint (bits per byte compares models with different
tokenizers)."""

from pathlib import Path

import numpy as np
import torch

from cs336_nn import TransformerLM, loss_function, perplexity
from cs336_train import distributed, runtime
from cs336_train.checkpoint import read_checkpoint
from cs336_train.config import TrainConfig
from cs336_train.data import bytes_per_token, open_tokens, tokenizer_fingerprint_of, validation_batches
from cs336_train.errors import CheckpointError
from cs336_train.metrics import bits_per_byte
from cs336_train.run_directory import RunDirectory

SINGLE_PROCESS = distributed.Distributed()


def evaluate(model: torch.nn.Module, tokens: np.ndarray, config: TrainConfig, device: torch.device,
             dist: distributed.Distributed = SINGLE_PROCESS) -> float:
    """Mean loss over every token of `tokens`, in order (exact, comparable across runs); ranks share the work."""
    loss_fn = loss_function(config.run.loss_impl)
    was_training = model.training
    model.eval()
    # Summed on the device and read once at the end: a read per batch would make the host wait for each one.
    # In float64 (as a Python sum would be), except on MPS, which has no float64.
    loss_sum = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    count = 0
    with torch.no_grad(), runtime.autocast(device, config.run.precision):
        batches = validation_batches(tokens, config.model.context_length, config.run.valid_batch_size, device)
        for index, (inputs, targets) in enumerate(batches):
            if index % dist.world_size != dist.rank:
                continue
            logits = model(inputs)
            loss_sum += loss_fn(logits.float(), targets).to(loss_sum.dtype) * targets.numel()
            count += targets.numel()
    model.train(was_training)
    loss_sum, count = distributed.sum_across_ranks([float(loss_sum), float(count)], device)
    return loss_sum / count


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
    """`cs336-train eval`: the loss, perplexity and bits per byte of a checkpoint (or a run's chosen one)."""
    path = resolve_checkpoint(checkpoint, which)
    device = runtime.resolve_device(device, setting="--device")
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
