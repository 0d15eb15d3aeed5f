"""What a run reports as it trains, at its read points: the console, RUN/metrics.jsonl and Weights & Biases.

This module builds the records (their fields are listed in metrics.py) from the training state: a training line
per log interval, the instruments' record, a validation, a divergence. Only the main process reports: on the
others every method returns at once, so they read nothing back from the device either.
"""

import math
from pathlib import Path

import torch

from cs336_nn import perplexity, training_flops_per_token
from cs336_train.config import TrainConfig
from cs336_train.console import TrainingConsole
from cs336_train.data import bytes_per_token
from cs336_train.divergence import Divergence
from cs336_train.errors import TrainingDiverged
from cs336_train.metrics import MetricsLog, bits_per_byte, start_wandb
from cs336_train.optimizer_step import StepResult
from cs336_train.training_state import Progress


class TrainingLog:
    """The reports of one run; `start` opens them on the main process, and `close` ends them."""

    def __init__(self, config: TrainConfig, peak_flops: float, metrics: MetricsLog | None = None,
                 console: TrainingConsole | None = None, wandb_run=None):
        self.metrics, self.console, self.wandb_run = metrics, console, wandb_run
        self.tokens_per_step = config.run.batch_size * config.model.context_length
        self.flops_per_token, self.peak_flops = training_flops_per_token(config.model), peak_flops
        self.valid_bytes_per_token = bytes_per_token(config.data.valid)
        # Throughput counts the training steps since the last log line, not the validations and saves between.
        self.interval_seconds, self.interval_steps = 0.0, 0

    @classmethod
    def start(cls, config: TrainConfig, run_dir: Path, progress: Progress, is_main: bool,
              peak_flops: float) -> "TrainingLog":
        """The console (a progress bar on a terminal, plain lines otherwise), metrics.jsonl and wandb when
        run.wandb is set; on a process other than the main one, nothing."""
        if not is_main:
            return cls(config, peak_flops)
        run = config.run
        wandb_run = start_wandb(run_dir, config.to_dict(), run.wandb_project) if run.wandb else None
        console = TrainingConsole(run.steps, progress.step, progress.wall_s, run.time_budget_s)
        return cls(config, peak_flops, MetricsLog(run_dir, wandb_run, console), console, wandb_run)

    @property
    def writes(self) -> bool:
        """Whether this process reports (the main one)."""
        return self.metrics is not None

    @property
    def output_closed(self) -> bool:
        """Whether the reader of our output went away (`cs336-train fit ... | head`): a host flag, no read."""
        return self.console is not None and self.console.broken

    def say(self, line: str) -> None:
        if self.console is not None:
            self.console.say(line)

    def count_step(self, progress: Progress, seconds: float) -> None:
        """After every optimizer step: the throughput counters, and the progress bar (host numbers only)."""
        self.interval_seconds += seconds
        self.interval_steps += 1
        if self.console is not None:
            self.console.advance(progress.step, progress.wall_s)

    def training(self, progress: Progress, interval_loss: torch.Tensor, result: StepResult) -> None:
        """The log interval's line: its mean training loss, the last step's rate and gradient norm, throughput."""
        tokens_per_s = self.interval_steps * self.tokens_per_step / self.interval_seconds
        self.interval_seconds, self.interval_steps = 0.0, 0
        if self.writes:
            self.metrics.write({"kind": "train", **_position(progress),
                                "loss": float(interval_loss) / progress.loss_steps,
                                "lr": result.lr, "grad_norm": float(result.grad_norm),
                                "tokens_per_s": round(tokens_per_s, 1),
                                "mfu": round(tokens_per_s * self.flops_per_token / self.peak_flops, 4)})

    def dynamics(self, progress: Progress, result: StepResult, measurements: dict) -> None:
        """The instruments' record of a measured step (`optimizer_step.measure_dynamics`)."""
        if self.writes:
            self.metrics.write({"kind": "stats", **_position(progress), "lr": result.lr, **measurements})

    def validation(self, progress: Progress, valid_loss: float) -> None:
        if self.writes:
            self.metrics.write({"kind": "valid", **_position(progress), "loss": valid_loss,
                                "perplexity": perplexity(valid_loss),
                                "bits_per_byte": bits_per_byte(valid_loss, self.valid_bytes_per_token)})

    def divergence(self, divergence: Divergence, report: TrainingDiverged) -> None:
        """What the divergence report says, as a record of the run as it stands: after the last good step."""
        if self.writes:
            before = divergence.step - 1
            self.metrics.write({"kind": "diverged", "step": before, "tokens": before * self.tokens_per_step,
                                "wall_s": round(divergence.wall_s, 3), "loss": _json_number(divergence.loss),
                                "grad_norm": _json_number(divergence.grad_norm),
                                "last_finite_loss": divergence.last_finite_loss,
                                "largest_grad_norms": {name: _json_number(value)
                                                       for name, value in report.largest_grad_norms.items()}})

    def close(self) -> None:
        if self.console is not None:
            self.console.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _position(progress: Progress) -> dict:
    """Where the run stands, the first fields of every record."""
    return {"step": progress.step, "tokens": progress.tokens, "wall_s": round(progress.wall_s, 3)}


def _json_number(value: float) -> float | str:
    """A float for metrics.jsonl: JSON has no nan or inf, so those are written as the strings "nan", "inf"."""
    return value if math.isfinite(value) else str(value)
