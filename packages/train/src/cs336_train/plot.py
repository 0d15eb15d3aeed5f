"""Loss curves of one or more runs on one figure: loss against steps, and loss against wall-clock time.

    >>> from cs336_train.plot import plot_runs
    >>> plot_runs(["runs/lr3e-3", "runs/lr1e-3"], "lr-sweep.png", smoothing=0.9)   # doctest: +SKIP
    PosixPath('lr-sweep.png')

Each run directory holds the `metrics.jsonl` the trainer writes, one JSON object per line:

    {"kind": "train", "step": 100, "tokens": 819200, "wall_s": 41.2, "loss": 3.91, "lr": 0.003, ...}
    {"kind": "valid", "step": 100, "tokens": 819200, "wall_s": 44.0, "loss": 3.87, "perplexity": 47.9}

Two panels, because they answer different questions. Against steps (tokens seen, at a fixed batch size), a
curve shows what a setting does to learning; against wall-clock seconds it shows what it costs: a bigger model
may win per step and lose per hour, and the course's leaderboard is a time budget. Training loss is a thin line
(noisy: every point is one batch); validation loss, measured on the whole validation file, is markers.

matplotlib is an optional extra: `pip install "cs336-train[plot]"`.
"""

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cs336_train.errors import TrainError

METRICS_FILE = "metrics.jsonl"


class PlotError(TrainError):
    """Plotting failed; the message says what was wrong and what to do."""


class MetricsWarning(UserWarning):
    """A line of metrics.jsonl was skipped (typically the last one, cut short when a run was killed)."""


@dataclass
class RunMetrics:
    """The records of one run, each kind in step order: what the run's final timeline says happened."""

    name: str
    train: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)

    def series(self, kind: str, x: str, y: str = "loss") -> tuple[list[float], list[float]]:
        """The (x values, y values) of one kind of record, e.g. series("valid", "wall_s")."""
        records = getattr(self, kind)
        return [record[x] for record in records], [record[y] for record in records]


def load_metrics(run_dir: str | os.PathLike) -> RunMetrics:
    """Read RUN_DIR/metrics.jsonl into a RunMetrics named after the directory.

    Lines that are not a JSON object with "kind", "step", "wall_s" and "loss" are skipped with a MetricsWarning
    (a run killed mid-write leaves its last line cut short). Kinds other than "train" and "valid" are ignored.

    Resumed runs: the trainer appends to the same file, and resuming from a checkpoint older than the last
    record makes steps repeat. The last record written for a step wins, and a train record whose step goes
    back (a resume) also drops the abandoned run's records from that step on, so the curve is the timeline the
    run really followed.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        raise PlotError(f"run directory {str(run_dir)!r} does not exist; pass directories made by `cs336-train fit`")
    if not path.is_file():
        raise PlotError(
            f"{path} not found: {str(run_dir)!r} is not a run directory, or its run has not logged yet; "
            f"pass directories made by `cs336-train fit`"
        )
    metrics = RunMetrics(name=run_dir.resolve().name)
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = _parse_record(line)
            if record is None:
                warnings.warn(f"{path}:{line_number}: skipping a malformed or partial record", MetricsWarning,
                              stacklevel=2)
                continue
            if record["kind"] == "train":
                _rewind(metrics.train, record["step"])
                _rewind(metrics.valid, record["step"] + 1)  # the valid record at this step may stand
                metrics.train.append(record)
            elif record["kind"] == "valid":
                _rewind(metrics.valid, record["step"])
                metrics.valid.append(record)
    if not metrics.train and not metrics.valid:
        raise PlotError(f"{path} has no train or valid records yet; let the run log at least once, then plot")
    return metrics


def _parse_record(line: str) -> dict | None:
    """The record on `line`, or None when it is not a complete metrics record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        return None
    if record["kind"] not in ("train", "valid"):
        return record  # another kind: well-formed, ignored by the caller
    numbers_ok = all(isinstance(record.get(key), int | float) for key in ("step", "wall_s", "loss"))
    return record if numbers_ok else None


def _rewind(records: list[dict], step: int) -> None:
    """Drop the records at `step` or later (they belong to a timeline a resume abandoned, or are rewritten)."""
    while records and records[-1]["step"] >= step:
        records.pop()


def ema(values: Sequence[float], smoothing: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing: smoothing 0 returns the values, 0.9 is heavy.

    Without debiasing the average starts at 0 and crawls up; dividing by (1 - smoothing**n) removes that bias.
    """
    if not 0 <= smoothing < 1:
        raise PlotError(f"smoothing must be in [0, 1), got {smoothing}")
    averaged, running = [], 0.0
    for count, value in enumerate(values, start=1):
        running = smoothing * running + (1 - smoothing) * value
        averaged.append(running / (1 - smoothing**count))
    return averaged


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    *,
    smoothing: float = 0.0,
    log_loss: bool = False,
    title: str | None = None,
) -> Path:
    """Draw the loss curves of `run_dirs` on one figure and save it to `out_png`; return its path.

    smoothing: exponential moving average of the training loss (0 = raw, 0.9 = heavy); the raw curve stays
               as a faint line behind the smoothed one.
    log_loss:  logarithmic loss axis, to see late differences between runs that all started near ln(vocab).
    """
    if not run_dirs:
        raise PlotError("no run directories given; pass one or more directories made by `cs336-train fit`")
    runs = [load_metrics(run_dir) for run_dir in run_dirs]
    _disambiguate_names(runs, run_dirs)
    figure = draw_figure(runs, smoothing=smoothing, log_loss=log_loss, title=title)
    return _save_png(figure, Path(out_png))


def draw_figure(runs: Sequence[RunMetrics], *, smoothing: float = 0.0, log_loss: bool = False,
                title: str | None = None):
    """The matplotlib Figure for `runs`: panel 0 loss against step, panel 1 loss against wall-clock time."""
    figure_class = _import_matplotlib_figure()
    figure = figure_class(figsize=(12, 4.8), layout="constrained")
    by_step, by_time = figure.subplots(1, 2, sharey=True)
    seconds = max((record["wall_s"] for run in runs for record in run.train + run.valid), default=0.0)
    unit, per_unit = (("s", 1.0) if seconds < 600 else ("min", 60.0) if seconds < 3 * 3600 else ("h", 3600.0))

    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        for axes, x, scale in ((by_step, "step", 1.0), (by_time, "wall_s", per_unit)):
            train_x, train_loss = run.series("train", x)
            train_x = [value / scale for value in train_x]
            if smoothing > 0:
                axes.plot(train_x, train_loss, color=color, linewidth=0.6, alpha=0.25)
                axes.plot(train_x, ema(train_loss, smoothing), color=color, linewidth=1.0, label=f"{run.name} train")
            else:
                axes.plot(train_x, train_loss, color=color, linewidth=0.8, label=f"{run.name} train")
            valid_x, valid_loss = run.series("valid", x)
            axes.plot([value / scale for value in valid_x], valid_loss, color=color, marker="o", markersize=4,
                      linestyle="--", linewidth=0.8, label=f"{run.name} valid")

    by_step.set_xlabel("step (optimizer updates)")
    by_time.set_xlabel(f"wall-clock training time ({unit})")
    by_step.set_ylabel("loss (cross-entropy, nats per token)")
    for axes in (by_step, by_time):
        axes.grid(True, alpha=0.3)
        if log_loss:
            axes.set_yscale("log")
    by_time.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def _import_matplotlib_figure():
    """matplotlib's Figure class, or a PlotError saying how to install the optional extra.

    We build a bare `matplotlib.figure.Figure` instead of going through pyplot: it renders with the Agg
    backend, needs no display, and leaves the global pyplot state of a notebook alone.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlotError(
            'plotting needs matplotlib, an optional extra: pip install "cs336-train[plot]" '
            "(or `uv sync` in the cs336 workspace)"
        ) from error
    return Figure


def _disambiguate_names(runs: list[RunMetrics], run_dirs: Sequence[str | os.PathLike]) -> None:
    """Two runs named alike (sweep-a/lr1, sweep-b/lr1) are labelled by the paths given instead."""
    names = [run.name for run in runs]
    for run, run_dir in zip(runs, run_dirs):
        if names.count(run.name) > 1:
            run.name = str(run_dir)


def _save_png(figure, out_png: Path) -> Path:
    """Save as PNG through a temporary file renamed into place: an old plot is never replaced by half a new one."""
    if out_png.suffix.lower() != ".png":
        raise PlotError(f"the output must be a .png file, got {str(out_png)!r}")
    try:
        out_png.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=out_png.parent, prefix=f".{out_png.name}.", suffix=".partial")
    except OSError as error:
        raise PlotError(f"cannot write {out_png}: {error.strerror or error}; choose another location") from error
    try:
        with os.fdopen(descriptor, "wb") as handle:
            figure.savefig(handle, format="png", dpi=120)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, out_png)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise PlotError(f"cannot write {out_png}: {error.strerror or error}") from error
        raise
    return out_png
