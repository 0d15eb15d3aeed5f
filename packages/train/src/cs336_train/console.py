"""What a learner sees while a run trains: a progress bar on a terminal, plain log lines everywhere else.

On a terminal (stderr is a tty), one bar at the bottom of the screen moves every step and shows the ETA, the
training tokens per second and the latest logged loss; each logged record prints as a line above it:

    step    100  tokens     819,200     61.2s  loss  3.9100  lr 2.90e-03  grad-norm  0.840    13,402 tok/s  MFU 21.0%
    training  39%|███████▍           | 100/256 [01:01<01:35, 1.63 step/s, loss 3.9100, 13,402 tok/s]

Piped into a file or another program, there is no bar (its carriage returns would garble the file); the same
record lines print, each training line ending with the ETA (`ETA 1m35s`).

The bar knows only what the host already knows (the step number, the clock): the loss it shows is the one of the
latest log line, so drawing it never waits for the GPU.

When the reader goes away (`cs336-train fit ... 2>&1 | head` once `head` has its lines), writing raises
BrokenPipeError. The console then stops writing (what it would print is still in metrics.jsonl) and sets `broken`;
the trainer treats that like Ctrl-C: it finishes the step, saves a checkpoint and stops, so `resume` continues it.
"""

import errno
import os
import sys
from typing import TextIO

from tqdm import tqdm

from cs336_train.metrics import format_record


def format_duration(seconds: float) -> str:
    """A short human duration.

    >>> format_duration(95), format_duration(3725), format_duration(4.2)
    ('1m35s', '1h02m', '4s')
    """
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class TrainingConsole:
    """The console side of one training run (see the module docstring).

    `total_steps` and `start_step` place the bar (a resumed run starts part-way); with `time_budget_s` the run ends
    when its training clock reaches the budget, so the bar and the ETA follow the clock instead of the steps.
    `interactive` defaults to "is `stream` a terminal".
    """

    def __init__(self, total_steps: int, start_step: int = 0, start_wall_s: float = 0.0,
                 time_budget_s: float | None = None, stream: TextIO | None = None, interactive: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.total_steps, self.time_budget_s = total_steps, time_budget_s or None
        self.start_step, self.start_wall_s = start_step, start_wall_s
        self.step, self.wall_s = start_step, start_wall_s
        self.broken = False
        self._postfix = ""
        if interactive is None:
            interactive = _is_terminal(self.stream)
        self._bar = self._make_bar() if interactive else None

    def _make_bar(self) -> tqdm:
        if self.time_budget_s:
            # The run ends on the clock: the bar counts training seconds of the budget.
            return tqdm(total=round(self.time_budget_s), initial=round(self.start_wall_s), unit="s", desc="training",
                        file=self.stream, dynamic_ncols=True, leave=True, mininterval=0.25,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}"
                                   "{postfix}]")
        return tqdm(total=self.total_steps, initial=self.start_step, unit="step", desc="training", file=self.stream,
                    dynamic_ncols=True, leave=True, mininterval=0.25)

    def say(self, line: str) -> None:
        """A line of text (above the bar on a terminal)."""
        if self.broken:
            return
        try:
            if self._bar is not None:
                self._bar.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)
        except OSError as error:
            self._on_write_error(error)

    def advance(self, step: int, wall_s: float) -> None:
        """Called after every optimizer step with the host's own counters (no device values)."""
        self.step, self.wall_s = step, wall_s
        if self._bar is None or self.broken:
            return
        try:
            if self.time_budget_s:
                self._bar.update(min(round(wall_s), self._bar.total) - self._bar.n)
            else:
                self._bar.update(step - self._bar.n)
        except OSError as error:
            self._on_write_error(error)

    def record(self, record: dict) -> None:
        """A metrics record (metrics.py): its line, and on a terminal the bar's latest loss and throughput."""
        line = format_record(record)
        if record["kind"] == "train":
            if self._bar is not None:
                self._postfix = f"loss {record['loss']:.4f}, {record['tokens_per_s']:,.0f} tok/s"
                if not self.broken:
                    try:
                        self._bar.set_postfix_str(self._postfix, refresh=False)
                    except OSError as error:
                        self._on_write_error(error)
            else:
                remaining = self.eta_seconds(record["step"], record["wall_s"])
                if remaining is not None:
                    line += f"  ETA {format_duration(remaining)}"
        self.say(line)

    def eta_seconds(self, step: int, wall_s: float) -> float | None:
        """Training seconds left: the budget's rest, or the remaining steps at this session's pace so far."""
        if self.time_budget_s:
            return max(0.0, self.time_budget_s - wall_s)
        done = step - self.start_step
        if done <= 0:
            return None
        return (wall_s - self.start_wall_s) / done * max(0, self.total_steps - step)

    def close(self) -> None:
        if self._bar is not None:
            try:
                self._bar.close()
            except OSError as error:
                self._on_write_error(error)

    def _on_write_error(self, error: OSError) -> None:
        if error.errno not in (errno.EPIPE, errno.EINVAL):  # EINVAL: Windows' broken pipe on flush
            raise error
        self.broken = True
        if self._bar is not None:
            self._bar.disable = True
        _silence(self.stream)


def _is_terminal(stream: TextIO) -> bool:
    """A terminal with a width: a pseudo-terminal of zero columns (some job runners) cannot draw a bar."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):
        return False


def _silence(stream: TextIO) -> None:
    """Point the closed pipe's file descriptor (and stdout's, if it is the same pipe) at /dev/null.

    Without this Python itself writes to the dead pipe once more at exit and prints "Exception ignored ...
    BrokenPipeError"; with it, the rest of the run's output (the stop message included) goes nowhere, quietly.
    """
    try:
        broken = stream.fileno()
        broken_stat = os.fstat(broken)
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for descriptor in {broken, 1, 2}:
            try:
                same = os.path.samestat(os.fstat(descriptor), broken_stat)
            except OSError:
                continue
            if same:
                os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)
