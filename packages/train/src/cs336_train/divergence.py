"""The NaN guard: a loss or gradient norm that turns nan or inf stops the run, before it can damage the weights.

Two halves, because a GPU must never wait for the host between steps:

    every step      `DivergenceWatch.observe` notes on the device whether the step was finite; from the first
                    step that was not, the learning rate AdamW gets is a device 0, so the weights stay those from
                    before that step (nothing is read back to decide it)
    read points     `first_divergence()` reads the flag back; if a step since the last read point was not finite,
                    `divergence_report` is the error the run stops with: where it began, the last finite loss, the
                    parameter groups with the largest gradient norms, the last good checkpoint and what to change
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cs336_train.config import TrainConfig
from cs336_train.errors import TrainingDiverged
from cs336_train.instruments import ParameterGroups
from cs336_train.run_directory import RunDirectory


@dataclass
class Divergence:
    """The first step whose loss or gradient norm was not finite, as read back from a `DivergenceWatch`."""

    step: int
    loss: float
    grad_norm: float
    wall_s: float  # training seconds when that step began
    last_finite_loss: float | None  # the step before's loss (None: the run diverged at its first step)
    parameter_grad_norms: list[float]  # that step's gradient norm of each parameter, before clipping


class DivergenceWatch:
    """Watches every step for a loss or gradient norm that is not finite, on the device, without reading anything.

    On a GPU, checking `math.isfinite(loss)` every step would make the host wait for each step to finish before
    queuing the next one. Instead, `all_finite` is a device flag, True until the first bad step and False from
    then on (sticky): the trainer multiplies each step's learning rate by it, so from that step on the optimizer
    changes nothing, and the weights stay those from before it. What the report needs about that step is recorded
    beside it, and read only where the trainer reads numbers anyway (log lines, validation, checkpoints, the end):
    `first_divergence()` then says whether, and where, the run diverged.
    """

    def __init__(self, device: torch.device, num_parameters: int):
        def zero(*shape, dtype=torch.float32):
            return torch.zeros(shape, dtype=dtype, device=device)

        self.all_finite = torch.ones((), dtype=torch.bool, device=device)
        self.step, self.loss, self.grad_norm, self.wall_s = zero(dtype=torch.int64), zero(), zero(), zero()
        self.last_finite_loss = torch.full((), math.nan, device=device)
        self.parameter_grad_norms = zero(num_parameters)

    def observe(self, step: int, wall_s: float, loss: Tensor, grad_norm: Tensor, parameter_grad_norms: Tensor) -> None:
        """Record step `step` (begun at `wall_s` training seconds): a dozen tiny device operations, no read."""
        step_is_finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        first_bad = self.all_finite & ~step_is_finite  # True at the first bad step only

        def keep_if_first_bad(value, recorded: Tensor) -> Tensor:
            return torch.where(first_bad, value, recorded)

        self.step = keep_if_first_bad(step, self.step)
        self.wall_s = keep_if_first_bad(wall_s, self.wall_s)
        self.loss = keep_if_first_bad(loss.float(), self.loss)
        self.grad_norm = keep_if_first_bad(grad_norm.float(), self.grad_norm)
        if parameter_grad_norms.shape == self.parameter_grad_norms.shape:  # shapes are known on the host: no read
            self.parameter_grad_norms = keep_if_first_bad(parameter_grad_norms.float(), self.parameter_grad_norms)
        self.all_finite = self.all_finite & step_is_finite
        self.last_finite_loss = torch.where(self.all_finite, loss.float(), self.last_finite_loss)

    def gate(self, learning_rate: float) -> Tensor:
        """`learning_rate` as a device tensor, 0 once a step was not finite (the optimizer then changes nothing)."""
        return torch.where(self.all_finite, learning_rate, 0.0)

    def first_divergence(self) -> Divergence | None:
        """None while every step was finite; else the first bad step. Reads the flag back (a sync on a GPU)."""
        if bool(self.all_finite):
            return None
        last = float(self.last_finite_loss)
        return Divergence(int(self.step), float(self.loss), float(self.grad_norm), float(self.wall_s),
                          last if math.isfinite(last) else None, self.parameter_grad_norms.tolist())


def largest(norms: dict[str, float], count: int = 3) -> dict[str, float]:
    """The `count` largest values, non-finite ones first (they are where a divergence shows)."""
    order = sorted(norms, key=lambda name: (math.isfinite(norms[name]), -norms[name] if math.isfinite(norms[name])
                                            else 0.0))
    return {name: norms[name] for name in order[:count]}


def divergence_report(divergence: Divergence, config: TrainConfig, groups: ParameterGroups,
                      run_directory: RunDirectory) -> TrainingDiverged:
    """The report a learner needs when the loss turns nan or inf: where, from what, and which layers."""
    steps_saved = run_directory.step_checkpoints()
    latest = str(steps_saved[-1]) if steps_saved else "none (none saved yet)"
    clipping = "" if config.optimizer.grad_clip else " or set optimizer.grad_clip (e.g. 1.0)"
    norms = divergence.parameter_grad_norms
    culprits = largest(groups.combine(norms) if len(norms) == sum(map(len, groups.parameters)) else {})
    last = divergence.last_finite_loss
    # Both wordings start "the training loss became X at step N": the sweep finds the step by that phrase.
    what = (f"became {divergence.loss} at step {divergence.step}" if not math.isfinite(divergence.loss) else
            f"became unusable at step {divergence.step}: its gradient norm was {divergence.grad_norm}")
    error = TrainingDiverged(
        f"the training loss {what} (the last finite loss was {'none' if last is None else f'{last:.4f}'}; "
        f"largest gradient norms: "
        f"{', '.join(f'{name} {value:.3g}' for name, value in culprits.items()) or 'none'}); the weights are those "
        f"from before that step and the last good checkpoint is {latest}. Lower optimizer.lr "
        f"({config.optimizer.lr:g}), raise optimizer.warmup_fraction{clipping}"
    )
    error.step, error.last_finite_loss, error.largest_grad_norms = divergence.step, last, culprits
    return error
