"""`cs336-train sweep --jobs N`: N runs at once, each a `python -m cs336_train fit|resume` process of its own.

Each process is exactly the command a user would type (`fit BASE --out RUN --set ...` for a new run, `resume RUN`
for one that started before), with its output in RUN/train.log. How it ended is read from its exit status:

    0                 finished: the numbers come from RUN/metrics.jsonl
    1 + "loss became" diverged: the step comes from the trainer's message in RUN/train.log
    128 + signal      interrupted (Ctrl-C): it saved a checkpoint; the sweep stops once every process has
    anything else     failed: no more runs start, and the sweep ends with the process's last line

On a CPU the processes share the cores: each gets cores / N threads (OMP_NUM_THREADS), since N processes that
each take every core slow each other down more than they gain.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cs336_train.errors import Interrupted, TrainError
from cs336_train.experiment import Experiment, PlannedRun
from cs336_train.plot import load_metrics
from cs336_train.run_directory import RunDirectory
from cs336_train.stop_signal import StopSignal
from cs336_train.sweep import describe_settings
from cs336_train.sweep_records import finished_result, write_result

LOG_FILE = "train.log"
DIVERGED = re.compile(r"the training loss became \S+ at step (\d+)")
STOPPED_BY = re.compile(r"\(stopped by ([^)]+)\)")
POLL_S = 0.2


def train_in_subprocesses(experiment: Experiment, runs: list[PlannedRun], jobs: int,
                          say: Callable[[str], None]) -> None:
    pending = list(runs)
    running: dict[subprocess.Popen, PlannedRun] = {}
    failure: str | None = None
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")
                   or str(max(1, (os.cpu_count() or 1) // jobs))}
    with _ForwardedStop(lambda: list(running)) as stop:
        while running or (pending and stop.received is None and failure is None):
            while pending and len(running) < jobs and stop.received is None and failure is None:
                run = pending.pop(0)
                running[_start(experiment, run, environment)] = run
                say(f"sweep: {run.name}: started ({describe_settings(experiment, run)}); log in "
                    f"{experiment.run_dir(run.name) / LOG_FILE}")
            time.sleep(POLL_S)
            for process in [process for process in running if process.poll() is not None]:
                run = running.pop(process)
                outcome = _conclude(experiment, run, process.returncode)
                say(f"sweep: {run.name}: {outcome}")
                if outcome.startswith("failed") and failure is None:
                    failure = f"run {run.name} {outcome}"
    if stop.received is not None:
        raise Interrupted(f"the sweep stopped on {signal.Signals(stop.received).name}; the runs saved checkpoints. "
                          "Run the same `cs336-train sweep` command again to continue", stop.received)
    if failure is not None:
        raise TrainError(failure)


def _start(experiment: Experiment, run: PlannedRun, environment: dict) -> subprocess.Popen:
    run_dir = experiment.run_dir(run.name)
    started = RunDirectory(run_dir).config_path.is_file()
    arguments = ["resume", str(run_dir)] if started else run.fit_command(experiment.base, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG_FILE, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "cs336_train", *arguments], stdout=log,
                                stderr=subprocess.STDOUT, env=environment)


def _conclude(experiment: Experiment, run: PlannedRun, returncode: int) -> str:
    """Write result.json for a run that ended (finished or diverged); returns how it ended, in words."""
    run_dir = experiment.run_dir(run.name)
    last_lines = _tail(run_dir / LOG_FILE)
    if returncode == 0:
        metrics = load_metrics(run_dir)
        last = (metrics.valid or metrics.train)[-1]
        loss = metrics.valid[-1]["loss"] if metrics.valid else None
        stopped_by = STOPPED_BY.findall(last_lines)
        write_result(run_dir, finished_result(last["step"], last.get("tokens", 0), last["wall_s"], loss,
                                              stopped_by[-1] if stopped_by else "steps"))
        return f"finished, validation loss {loss:.4f}" if loss is not None else "finished"
    diverged = DIVERGED.search(last_lines)
    if returncode == 1 and diverged:
        message = next(line for line in last_lines.splitlines() if DIVERGED.search(line))
        write_result(run_dir, {"status": "diverged", "diverged_at_step": int(diverged.group(1)),
                               "last_finite_loss": None, "message": message.removeprefix("Error: ")})
        return f"diverged at step {diverged.group(1)}"
    if returncode > 128:
        return f"interrupted (exit status {returncode}); it saved a checkpoint"
    if returncode < 0:  # killed outright (SIGKILL, the out-of-memory killer): no checkpoint was saved just now
        return f"failed: killed by {signal.Signals(-returncode).name}"
    line = next((line for line in reversed(last_lines.splitlines()) if line.strip()), "no output")
    return f"failed (exit status {returncode}): {line.removeprefix('Error: ')}"


def _tail(path: Path, size: int = 8192) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode("utf-8", "replace")


class _ForwardedStop(StopSignal):
    """Catch SIGINT/SIGTERM in the sweep and pass them on to the runs, which save a checkpoint and exit.

    A Ctrl-C in a terminal reaches the runs directly too (same process group); a second signal is harmless.
    """

    def __init__(self, processes: Callable[[], list[subprocess.Popen]]):
        super().__init__()
        self.processes = processes

    def _handle(self, number, frame) -> None:
        super()._handle(number, frame)
        for process in self.processes():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(number)
