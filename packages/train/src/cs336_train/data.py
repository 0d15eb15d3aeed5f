"""Training data: random windows for training (handout §5.1) and one ordered pass for validation.

A token file is one long 1-D array of ids (all documents joined, `<|endoftext|>` between them), memory-mapped so
that only the windows we touch are read from disk. A training example is a window of `context_length + 1`
tokens: the first `context_length` are the input, the last `context_length` the targets (each input position
predicts the next token).

    tokens  = [5, 9, 2, 7, 3, 8]   context_length = 3, window starting at 1
    inputs  = [9, 2, 7]
    targets = [2, 7, 3]
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from cs336_bpe import BPEInputError, open_token_file, read_token_metadata
from cs336_train.errors import DataError

# Windows are checked for ids >= vocab_size this many tokens at a time, so checking never reads a file whole.
_SCAN_TOKENS = 1 << 24


def get_batch(tokens: npt.NDArray, batch_size: int, context_length: int, device: str | torch.device,
              rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows -> (inputs, targets), both (batch_size, context_length) int64 on `device`."""
    rng = rng if rng is not None else np.random.default_rng()
    starts = sample_window_starts(len(tokens), batch_size, context_length, rng)
    return windows_at(tokens, starts, context_length, device)


def sample_window_starts(num_tokens: int, batch_size: int, context_length: int,
                         rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Uniform random start positions of windows that fit: 0 <= start <= num_tokens - context_length - 1."""
    require_one_window(num_tokens, context_length)
    return rng.integers(0, num_tokens - context_length, size=batch_size)


def require_one_window(num_tokens: int, context_length: int) -> None:
    """A training file needs at least one window of context_length inputs plus the target after them."""
    if num_tokens < context_length + 1:
        raise DataError(
            f"the token file has {num_tokens} tokens, fewer than context_length + 1 = {context_length + 1}; "
            "use more text or a shorter model.context_length"
        )


def windows_at(tokens: npt.NDArray, starts: npt.NDArray, context_length: int,
               device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows beginning at `starts` -> (inputs, targets) on `device`."""
    # (batch, context_length + 1) via fancy indexing: one gather from the memory map, no Python loop.
    offsets = np.arange(context_length + 1)
    gathered = tokens[starts[:, None] + offsets]
    device = torch.device(device)
    if device.type == "cuda":
        # Converted straight into pinned (page-locked) host memory, whose copy to the GPU is asynchronous: it is
        # queued behind the GPU's current work and the host moves on. From ordinary memory the host would wait.
        windows = torch.empty(gathered.shape, dtype=torch.int64, pin_memory=True)
        windows.numpy()[...] = gathered
        windows = windows.to(device, non_blocking=True)
    else:
        windows = torch.from_numpy(np.asarray(gathered, dtype=np.int64)).to(device)
    return windows[:, :-1], windows[:, 1:]


class TrainingBatches:
    """Every optimizer step's training windows, in step order; with `prefetch` (default: on CUDA) one step ahead.

    Each step is one draw of `batch_size` window starts from `sampler`, the same on every rank: the global batch,
    laid out (grad_accum_steps, world_size, micro-batch). This rank takes its column, one micro-batch per
    accumulation step.

    Prefetching: when step s takes its windows, step s+1's are drawn, gathered and their copy to the GPU queued
    (`windows_at`), so the GPU never waits for the memory map between steps. The draws come in the same order
    either way; `sampler_state()` is the state before any draw made ahead, the one a checkpoint must hold for a
    resumed run to see the same windows.

        >>> batches = TrainingBatches(tokens, 8, 256, np.random.default_rng(0), "cpu")  # doctest: +SKIP
        >>> (inputs, targets), = batches.next_step()   # one micro-batch: (8, 256) each  # doctest: +SKIP
    """

    def __init__(self, tokens: npt.NDArray, batch_size: int, context_length: int, sampler: np.random.Generator,
                 device: str | torch.device, grad_accum_steps: int = 1, world_size: int = 1, rank: int = 0,
                 prefetch: bool | None = None):
        self.tokens, self.batch_size, self.context_length = tokens, batch_size, context_length
        self.sampler, self.device = sampler, torch.device(device)
        self.grad_accum_steps, self.world_size, self.rank = grad_accum_steps, world_size, rank
        self.prefetch = self.device.type == "cuda" if prefetch is None else prefetch
        self._ahead: tuple[dict, list] | None = None  # (sampler state before its draw, micro-batches) of the next step

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The next step's micro-batches of (inputs, targets), each (micro-batch, context_length) on the device."""
        micro_batches = self._ahead[1] if self._ahead else self._draw()
        self._ahead = (self.sampler.bit_generator.state, self._draw()) if self.prefetch else None
        return micro_batches

    def sampler_state(self) -> dict:
        """The sampler's state as of the last step taken: what a checkpoint saves."""
        return self._ahead[0] if self._ahead else self.sampler.bit_generator.state

    def set_sampler_state(self, state: dict) -> None:
        """Continue from a saved `sampler_state()`: the next step draws what it drew after that step."""
        self.sampler.bit_generator.state = state
        self._ahead = None

    def _draw(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        starts = sample_window_starts(len(self.tokens), self.batch_size, self.context_length, self.sampler)
        starts = starts.reshape(self.grad_accum_steps, self.world_size, -1)[:, self.rank]
        return [windows_at(self.tokens, micro_starts, self.context_length, self.device) for micro_starts in starts]


def validation_batches(tokens: npt.NDArray, context_length: int, batch_size: int,
                       device: str | torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every token of `tokens` predicted exactly once, in order: consecutive windows, the last one shorter.

    A file of n tokens has n - 1 targets; summing the loss over all of them and dividing by n - 1 gives the
    exact validation loss, the same number however the batches are cut.
    """
    num_targets = len(tokens) - 1
    full_windows = num_targets // context_length
    for first in range(0, full_windows, batch_size):
        starts = np.arange(first, min(first + batch_size, full_windows), dtype=np.int64) * context_length
        yield windows_at(tokens, starts, context_length, device)
    remainder = num_targets - full_windows * context_length
    if remainder:
        yield windows_at(tokens, np.array([full_windows * context_length]), remainder, device)


def open_tokens(path: str | Path, model_vocab_size: int, tokenizer_fingerprint: str | None = None) -> npt.NDArray:
    """Memory-map a token file after checking its metadata, the tokenizer that made it and its ids.

    Errors name the file and the fix: a missing file or metadata, a size that does not match the metadata,
    another tokenizer's fingerprint, a vocabulary larger than the model's, or any id >= the model's vocab_size.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"token file {str(path)!r} does not exist; create it with `cs336-bpe encode`")
    try:
        metadata = read_token_metadata(path)
        tokens = open_token_file(path, expected_fingerprint=tokenizer_fingerprint)
    except BPEInputError as error:
        raise DataError(str(error)) from None
    if metadata["vocab_size"] > model_vocab_size:
        raise DataError(
            f"token file {str(path)!r} was made by a tokenizer with {metadata['vocab_size']} ids but the model has "
            f"model.vocab_size = {model_vocab_size}; set model.vocab_size to at least {metadata['vocab_size']}"
        )
    largest = max((int(tokens[i:i + _SCAN_TOKENS].max()) for i in range(0, len(tokens), _SCAN_TOKENS)), default=-1)
    if largest >= model_vocab_size:
        raise DataError(
            f"token file {str(path)!r} contains id {largest}, but the model only has ids below "
            f"model.vocab_size = {model_vocab_size}; the file is corrupt or from another tokenizer: re-encode it"
        )
    return tokens


def tokenizer_fingerprint_of(path: str | Path) -> str:
    """The fingerprint recorded in a token file's metadata (to check train and valid files agree)."""
    if not Path(path).is_file():
        raise DataError(f"token file {str(path)!r} does not exist; create it with `cs336-bpe encode`")
    try:
        return read_token_metadata(path)["tokenizer_fingerprint"]
    except BPEInputError as error:
        raise DataError(str(error)) from None


def bytes_per_token(path: str | Path) -> float | None:
    """Bytes of source text per token of a token file (its metadata's source_bytes / num_tokens), or None when
    the metadata does not say. Loss per token times tokens per byte is loss per byte: comparable across
    tokenizers."""
    try:
        metadata = read_token_metadata(path)
    except BPEInputError:
        return None
    source_bytes, num_tokens = metadata.get("source_bytes"), metadata["num_tokens"]
    if not isinstance(source_bytes, int) or source_bytes <= 0 or not num_tokens:
        return None
    return source_bytes / num_tokens
