"""What changes as a run trains, in one place: the weights, AdamW's moments, the data sampler and the counters.

A checkpoint saves exactly this (checkpointing.py), with the configuration and the random states, so that a
resumed run continues as if it had never stopped. `Progress` is stored in the checkpoint as a plain dict, the
"progress" entry: `as_checkpoint_entry` and `from_checkpoint_entry` are the two sides of that boundary, so the
checkpoint format stays the same whatever this class looks like.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch

from cs336_nn import TransformerLM
from cs336_train.data import TrainingBatches


@dataclass
class Progress:
    """How far the run has got (all host numbers: reading them never waits for the device)."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens seen
    wall_s: float = 0.0  # training seconds, continued across resumes (validation and saving excluded)
    best_val_loss: float = math.inf  # the lowest validation loss so far (its checkpoint is best.pt)
    # The current log interval: the sum of its training losses as of the last checkpoint, and its steps. Saved so
    # that a resumed run's next log line averages the same steps as the uninterrupted run's.
    loss_sum: float = 0.0
    loss_steps: int = 0

    def count_step(self, tokens: int, seconds: float) -> None:
        """One more optimizer step of `tokens` training tokens that took `seconds`."""
        self.step += 1
        self.tokens += tokens
        self.loss_steps += 1
        self.wall_s += seconds

    def record_validation(self, valid_loss: float | None) -> bool:
        """Remember `valid_loss` if it is the lowest validation loss so far; True when it is (a new best.pt)."""
        if valid_loss is None or not valid_loss < self.best_val_loss:
            return False
        self.best_val_loss = valid_loss
        return True

    def as_checkpoint_entry(self) -> dict:
        """The checkpoint's "progress" entry: a dict of these fields, in this order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint_entry(cls, entry: dict) -> "Progress":
        """The reverse of `as_checkpoint_entry`; KeyError names the fields a damaged entry lacks."""
        names = [field.name for field in dataclasses.fields(cls)]
        missing = set(names) - set(entry)
        if missing:
            raise KeyError(f"progress has no {sorted(missing)}")
        return cls(**{name: entry[name] for name in names})


@dataclass
class TrainingState:
    """Everything the loop changes, and so everything a checkpoint must hold to continue the run exactly."""

    model: TransformerLM
    optimizer: torch.optim.Optimizer
    batches: TrainingBatches  # the data sampler, whose state decides the next windows
    progress: Progress
    # The running sum of the current log interval's training losses, on the device: adding a step's loss to it
    # waits for nothing. It is read only for log lines and checkpoints (into progress.loss_sum).
    interval_loss: torch.Tensor

    def start_log_interval(self) -> None:
        """After a log line: the next one averages the steps from here on."""
        self.interval_loss.zero_()
        self.progress.loss_sum, self.progress.loss_steps = 0.0, 0
