"""What each optimizer step is, decided before it runs: its number, its learning rate, and its read points.

On a GPU the host queues work and the device runs it later. Reading a number back (`float(loss)`, `.item()`, an
`if` on a tensor) makes the host wait until the device has done everything queued so far, so it cannot queue the
next step meanwhile. The loop therefore reads numbers only after some steps, its read points, which the run's
intervals fix in advance:

    measures     every run.stats_interval steps and step 1: the instruments' record (instruments.py)
    logs         every run.log_interval steps, step 1 (the curve starts near ln(vocab_size)) and the last step
    validates    every run.eval_interval steps (after the last step the loop validates anyway)
    checkpoints  every run.checkpoint_interval steps

    >>> run = RunConfig(steps=100, log_interval=10, eval_interval=50, checkpoint_interval=0, stats_interval=0)
    >>> [step for step in range(1, 101) if read_points(step, run).any]
    [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    >>> read_points(50, run)
    ReadPoints(measures=False, logs=True, validates=True, checkpoints=False)

Three things make a step a read point only once it has run, and the loop checks them itself (trainer.py): the
time budget may be spent, a stop signal arrived, or the reader of the output went away.
"""

from dataclasses import dataclass, field

from cs336_train.config import RunConfig, TrainConfig
from cs336_train.schedule import learning_rate
from cs336_train.training_state import Progress


@dataclass(frozen=True)
class ReadPoints:
    """What follows an optimizer step and reads numbers back from the device (see the module docstring)."""

    measures: bool = False
    logs: bool = False
    validates: bool = False
    checkpoints: bool = False

    @property
    def any(self) -> bool:
        return self.measures or self.logs or self.validates or self.checkpoints


def read_points(step: int, run: RunConfig) -> ReadPoints:
    """The read points after optimizer step number `step` (1 for the first) of a run with these intervals."""
    return ReadPoints(
        measures=bool(run.stats_interval) and (step % run.stats_interval == 0 or step == 1),
        logs=step % run.log_interval == 0 or step == run.steps or step == 1,
        validates=bool(run.eval_interval) and step % run.eval_interval == 0 and step < run.steps,
        # The last step's validation and checkpoint are the run's final ones, written once by the loop's `finish`.
        checkpoints=bool(run.checkpoint_interval) and step % run.checkpoint_interval == 0 and step < run.steps,
    )


@dataclass(frozen=True)
class StepPlan:
    """One optimizer step, before it runs."""

    step: int  # its number: 1 for the first step of the run
    lr: float  # its learning rate, from the schedule
    started_at_s: float = 0.0  # training seconds when it begins (a divergence report says when it began)
    reads: ReadPoints = field(default_factory=ReadPoints)


def plan_step(config: TrainConfig, progress: Progress) -> StepPlan:
    """The next step of a run that has made `progress`."""
    step = progress.step + 1
    return StepPlan(step, learning_rate(config, progress.step, progress.wall_s), progress.wall_s,
                    read_points(step, config.run))
