"""Figures of one or more runs: loss curves (`plot_runs`) and training dynamics (`plot_dynamics`).

    >>> from cs336_train.plot import plot_dynamics, plot_runs
    >>> plot_runs(["runs/lr3e-3", "runs/lr1e-3"], "lr-sweep.png", smoothing=0.9, x_axis="tokens")  # doctest: +SKIP
    PosixPath('lr-sweep.png')
    >>> plot_dynamics(["runs/lr3e-3", "runs/lr1e-3"], "lr-sweep-dynamics.png")  # doctest: +SKIP
    PosixPath('lr-sweep-dynamics.png')

Each run directory holds the `config.toml` it ran with and the `metrics.jsonl` the trainer writes, one JSON object
per line (records of kind "stats" every `run.stats_interval` steps, when that is above 0):

    {"kind": "train", "step": 100, "tokens": 819200, "wall_s": 41.2, "loss": 3.91, "lr": 0.003, "grad_norm": 0.8, ...}
    {"kind": "valid", "step": 100, "tokens": 819200, "wall_s": 44.0, "loss": 3.87, "perplexity": 47.9}
    {"kind": "stats", "step": 100, "tokens": 819200, "wall_s": 41.2, "lr": 0.003,
     "grad_norm": {"token_embeddings": 0.1, "layers.0.attn": 0.2, "layers.0.ffn": 0.3, ..., "lm_head": 0.4},
     "weight_norm": {the same groups}, "update_ratio": {the same groups: ||this step's change|| / ||weights||},
     "activation_rms": {"layers.0": 1.2, ...}, "attention_entropy": {"layers.0": 2.1, ...}}

The loss figure has two panels, because they answer different questions. Against steps or tokens a curve shows
what a setting does to learning (choose tokens when batch sizes differ: equal steps are then unequal data);
against wall-clock seconds it shows what it costs: a bigger model may win per step and lose per hour, and the
course's leaderboard is a time budget. With x_axis="wall_s" the first panel already is the cost view, so the
figure has that one panel. Training loss is a thin line (noisy: every point is one batch); validation loss,
measured on the whole validation file, is markers. A faint line marks ln(vocab_size), the loss of a uniform guess:
an untrained model starts there (the trainer logs step 1), and a run that stays near it learns nothing.

The dynamics figure shows why a loss curve looks as it does, in six panels:

    global gradient norm, learning rate (dotted) | gradient norm per block  | weight norm per block
    update / weight ratio per block              | activation RMS per block | attention entropy per block

A block is one depth of the model: "input" (token_embeddings, positions), each "layers.{i}" (its attn, ffn and
norms groups) and "output" (ln_final, lm_head). The norms of a block's groups add in quadrature (the norm of all
its parameters as one vector), and its update ratio is ||all its changes|| / ||all its weights||, rebuilt from each
group's ratio times its weight norm. Colour tells the run, shade the depth (light near the input, dark near the
output). Norms and ratios span decades between blocks (the embeddings' weight norm dwarfs a layer's), so their
axes are logarithmic. With more than PER_BLOCK_MAX_RUNS runs that many lines would tangle, so each panel then
draws one line per run, aggregated over depth (the panel titles say how); look at one or two runs at a time for
the blocks.

Reading it: gradient-norm spikes come before loss spikes, and a norm above the clip line means clipping is
shortening that step. The update ratio follows the learning rate: it is how far a step moves the weights relative
to their size, and a block far above the others is the one a lower rate would calm. Weight norms grow with the
rate and shrink with weight decay. Activation RMS growing step after step (try model.norm = "none") comes before
divergence. Attention entropy starts near uniform attention (its faint line) and falls as heads learn where to
look; a collapse toward 0 is a known sign of instability.

matplotlib is an optional extra: `pip install "cs336-train[plot]"`.
"""

import io
import json
import math
import os
import re
import tempfile
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cs336_train.errors import TrainError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.toml"
X_AXES = ("steps", "tokens", "wall_s")
PER_BLOCK_MAX_RUNS = 2  # more runs than this: one line per run in each dynamics panel instead of one per block
DPI = 100  # the project commits figures (docs/figures/): with a 256-colour palette, a few hundred KB at most

INPUT_GROUPS = ("token_embeddings", "positions")
OUTPUT_GROUPS = ("ln_final", "lm_head")
LAYER_PATTERN = re.compile(r"layers\.(\d+)")  # "layers.3.ffn" -> block "layers.3"


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
    stats: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # RUN/config.toml; {} when absent: it only adds reference lines

    def series(self, kind: str, x: str, y: str = "loss") -> tuple[list[float], list[float]]:
        """The (x values, y values) of one kind of record, e.g. series("valid", "wall_s")."""
        records = getattr(self, kind)
        for record in records:
            for key in (x, y):
                if not _is_number(record.get(key)):
                    raise PlotError(f"run {self.name!r}: its {kind} record at step {record['step']} has no number "
                                    f"{key!r} (an older trainer's log?); plot another x axis or quantity")
        return [record[x] for record in records], [record[y] for record in records]

    def setting(self, section: str, key: str) -> float | None:
        """A positive number from the run's config.toml (e.g. setting("model", "vocab_size")), or None."""
        value = self.config.get(section, {}).get(key)
        return value if _is_number(value) and value > 0 else None


def load_metrics(run_dir: str | os.PathLike) -> RunMetrics:
    """Read RUN_DIR/metrics.jsonl (and RUN_DIR/config.toml, if there) into a RunMetrics named after the directory.

    Lines that are not a JSON object with "kind", "step", "wall_s" and "loss" (or, for "stats", "step" and
    "wall_s") are skipped with a MetricsWarning (a run killed mid-write leaves its last line cut short). Kinds other
    than "train", "valid" and "stats" are ignored.

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
    metrics = RunMetrics(name=run_dir.resolve().name, config=_read_config(run_dir / CONFIG_FILE))
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
                _rewind(metrics.stats, record["step"] + 1)  # so may the stats record (written before or after)
                metrics.train.append(record)
            elif record["kind"] in ("valid", "stats"):
                records = getattr(metrics, record["kind"])
                _rewind(records, record["step"])
                records.append(record)
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
    required = {"train": ("step", "wall_s", "loss"), "valid": ("step", "wall_s", "loss"), "stats": ("step", "wall_s")}
    if record["kind"] not in required:
        return record  # another kind: well-formed, ignored by the caller
    numbers_ok = all(_is_number(record.get(key)) for key in required[record["kind"]])
    return record if numbers_ok else None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_config(path: Path) -> dict:
    """The run's configuration, or {} when it is missing or unreadable (the figures then skip reference lines)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


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


# ---------------------------------------------------------------------------------------------------------------
# The loss figure


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    *,
    smoothing: float = 0.0,
    log_loss: bool = False,
    x_axis: str = "steps",
    title: str | None = None,
) -> Path:
    """Draw the loss curves of `run_dirs` on one figure and save it to `out_png`; return its path.

    smoothing: exponential moving average of the training loss (0 = raw, 0.9 = heavy); the raw curve stays
               as a faint line behind the smoothed one.
    log_loss:  logarithmic loss axis, to see late differences between runs that all started near ln(vocab).
    x_axis:    "steps", "tokens" (compare runs of different batch sizes) or "wall_s" (one panel only).
    title:     the figure's title.
    """
    runs = _load_runs(run_dirs)
    figure = draw_figure(runs, smoothing=smoothing, log_loss=log_loss, x_axis=x_axis, title=title)
    return _save_png(figure, Path(out_png))


def draw_figure(runs: Sequence[RunMetrics], *, smoothing: float = 0.0, log_loss: bool = False,
                x_axis: str = "steps", title: str | None = None):
    """The matplotlib Figure for `runs`: loss against `x_axis`, then (unless that is "wall_s") against wall-clock."""
    figure_class = _import_matplotlib_figure()
    horizontals = [_XAxis.of(x_axis, runs)] + ([] if x_axis == "wall_s" else [_XAxis.of("wall_s", runs)])
    figure = figure_class(figsize=(3 + 5 * len(horizontals), 4.8), layout="constrained")
    panels = list(figure.subplots(1, len(horizontals), sharey=True, squeeze=False)[0])

    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        for axes, horizontal in zip(panels, horizontals):
            train_x, train_loss = run.series("train", horizontal.field)
            train_x = horizontal.scaled(train_x)
            if smoothing > 0:
                axes.plot(train_x, train_loss, color=color, linewidth=0.6, alpha=0.25)
                axes.plot(train_x, ema(train_loss, smoothing), color=color, linewidth=1.0, label=f"{run.name} train")
            else:
                axes.plot(train_x, train_loss, color=color, linewidth=0.8, label=f"{run.name} train")
            valid_x, valid_loss = run.series("valid", horizontal.field)
            axes.plot(horizontal.scaled(valid_x), valid_loss, color=color, marker="o", markersize=4,
                      linestyle="--", linewidth=0.8, label=f"{run.name} valid")

    vocab_sizes = sorted({size for run in runs if (size := run.setting("model", "vocab_size"))})
    for axes, horizontal in zip(panels, horizontals):
        for vocab_size in vocab_sizes:  # axhline stretches the y limits to include it: the start stays in view
            axes.axhline(math.log(vocab_size), color="0.4", linewidth=0.8, linestyle=":", alpha=0.6,
                         label=f"uniform guess: ln({vocab_size:,}) = {math.log(vocab_size):.2f}")
        horizontal.label_axis(axes)
        axes.grid(True, alpha=0.3)
        if log_loss:
            axes.set_yscale("log")
    panels[0].set_ylabel("loss (cross-entropy, nats per token)")
    _figure_legend(figure, *panels[0].get_legend_handles_labels())
    if title:
        figure.suptitle(title)
    return figure


# ---------------------------------------------------------------------------------------------------------------
# The training-dynamics figure


@dataclass(frozen=True)
class _Panel:
    quantity: str  # the field of the stats records it draws
    title: str  # with one line per block
    summary_title: str  # with one line per run, aggregated over depth
    log_scale: bool


DYNAMICS_PANELS = (
    _Panel("grad_norm", "gradient norm per block", "gradient norm of all layers.* blocks", log_scale=True),
    _Panel("weight_norm", "weight norm per block", "weight norm of the whole model", log_scale=True),
    _Panel("update_ratio", "update / weight norm per step, per block", "update / weight norm per step, whole model",
           log_scale=True),
    _Panel("activation_rms", "activation RMS of each block's output", "activation RMS of the last block's output",
           log_scale=False),
    _Panel("attention_entropy", "attention entropy per layer (nats)", "attention entropy, mean over layers (nats)",
           log_scale=False),
)


def plot_dynamics(
    run_dirs: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    *,
    x_axis: str = "steps",
    title: str | None = None,
) -> Path:
    """Draw the training dynamics of `run_dirs` (their "stats" records) on one figure, save it to `out_png`.

    Runs without stats records still show their global gradient norm and learning rate (from the train
    records); a PlotError says what to do when no run has any.
    """
    runs = _load_runs(run_dirs)
    figure = draw_dynamics(runs, x_axis=x_axis, title=title)
    return _save_png(figure, Path(out_png))


def draw_dynamics(runs: Sequence[RunMetrics], *, x_axis: str = "steps", title: str | None = None):
    """The matplotlib Figure of six panels for `runs`; panel titles name what each one draws."""
    if not any(run.stats for run in runs):
        names = ", ".join(repr(run.name) for run in runs)
        raise PlotError(f"no training-dynamics records in {names}: train with run.stats_interval > 0 "
                        f'(records of kind "stats" in metrics.jsonl)')
    figure_class = _import_matplotlib_figure()
    horizontal = _XAxis.of(x_axis, runs)
    figure = figure_class(figsize=(16, 8), layout="constrained")
    grid = figure.subplots(2, 3, sharex=True)
    global_panel, stats_panels = grid[0][0], [grid[0][1], grid[0][2], *grid[1]]
    rate_panel = global_panel.twinx()
    per_block = len(runs) <= PER_BLOCK_MAX_RUNS
    depths = _depths(runs)
    run_handles = []

    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        steps, grad_norms = run.series("train", horizontal.field, "grad_norm")
        (handle,) = global_panel.plot(horizontal.scaled(steps), grad_norms, color=color, linewidth=0.9,
                                      label=run.name if run.stats else f"{run.name} (no stats records)")
        run_handles.append(handle)
        rate_kind = "train" if run.train and all(_is_number(record.get("lr")) for record in run.train) else "stats"
        steps, rates = run.series(rate_kind, horizontal.field, "lr")
        rate_panel.plot(horizontal.scaled(steps), rates, color=color, linewidth=1.0, linestyle=":")
        for axes, panel in zip(stats_panels, DYNAMICS_PANELS):
            for depth, (steps, values) in dynamics_curves(run, panel.quantity, horizontal.field, per_block).items():
                if panel.log_scale:  # a zero (step 1's update at warm-up lr 0) has no place on a log axis: a gap
                    values = [value if value > 0 else math.nan for value in values]
                shade = _shade(color, depths.index(depth) / max(len(depths) - 1, 1)) if per_block else color
                axes.plot(horizontal.scaled(steps), values, color=shade, linewidth=0.9, label=f"{run.name} {depth}")

    global_panel.set_title("global gradient norm (solid, pre-clip) and learning rate (dotted)", fontsize="medium")
    global_panel.set_yscale("log")
    global_panel.set_ylabel("gradient norm")
    rate_panel.set_ylabel("learning rate")
    rate_panel.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    panel_axes = {panel.quantity: axes for panel, axes in zip(DYNAMICS_PANELS, stats_panels)}
    references = _reference_lines(runs, global_panel, panel_axes["attention_entropy"])
    for axes, panel in zip(stats_panels, DYNAMICS_PANELS):
        axes.set_title(panel.title if per_block else panel.summary_title, fontsize="medium")
        if panel.log_scale:
            axes.set_yscale("log")
    for axes in [global_panel, *stats_panels]:
        axes.grid(True, alpha=0.3)
    for axes in grid[1]:  # the panels share their x axis: only the bottom row shows it
        horizontal.label_axis(axes)

    handles = run_handles + references
    if per_block:
        handles += _depth_key(depths)
        legend_title = None
    else:
        legend_title = (f"{len(runs)} runs: one line each,\naggregated over depth\n"
                        f"(per block: at most {PER_BLOCK_MAX_RUNS} runs)")
    _figure_legend(figure, handles, [handle.get_label() for handle in handles], title=legend_title)
    if title:
        figure.suptitle(title)
    return figure


def dynamics_curves(run: RunMetrics, quantity: str, x: str, per_block: bool) -> dict[str, tuple[list, list]]:
    """{depth: (x values, values)} of one stats quantity, in depth order; one "all" curve unless `per_block`."""
    run.series("stats", x, "step")  # every stats record has its x value, or a PlotError says which has not
    curves: dict[str, tuple[list, list]] = {}
    for record in run.stats:
        values = per_block_values(record, quantity) if per_block else {"all": whole_model_value(record, quantity)}
        for depth, value in values.items():
            if value is not None:
                xs, ys = curves.setdefault(depth, ([], []))
                xs.append(record[x])
                ys.append(value)
    return dict(sorted(curves.items(), key=lambda item: _depth_order(item[0])))


def per_block_values(record: dict, quantity: str) -> dict[str, float | None]:
    """One stats record's `quantity` per depth: {"input": ..., "layers.0": ..., "output": ...}.

    Activation RMS and attention entropy are recorded per layer already; norms and update ratios are per
    parameter group, and the groups of a depth are combined (see `combine`).
    """
    groups = _numbers(record.get(quantity))
    if quantity in ("activation_rms", "attention_entropy"):
        return groups
    members: dict[str, list[str]] = {}
    for group in groups:
        members.setdefault(_depth_of(group), []).append(group)
    return {depth: combine(record, quantity, names) for depth, names in members.items()}


def whole_model_value(record: dict, quantity: str) -> float | None:
    """One number per record for the many-runs view; the panel's summary title says which."""
    groups = _numbers(record.get(quantity))
    if not groups:
        return None
    if quantity == "activation_rms":
        return groups[max(groups, key=_depth_order)]  # the residual stream as it reaches the final norm
    if quantity == "attention_entropy":
        return sum(groups.values()) / len(groups)
    if quantity == "grad_norm":  # the whole model's is the first panel already: this one is the blocks' alone
        return combine(record, quantity, [group for group in groups if LAYER_PATTERN.match(group)] or list(groups))
    return combine(record, quantity, list(groups))


def combine(record: dict, quantity: str, groups: Sequence[str]) -> float | None:
    """The norm (or update ratio) of several parameter groups taken as one vector.

    Norms add in quadrature: sqrt(sum of squares). An update ratio r_g = ||change_g|| / ||w_g|| does not add,
    but its change does: ratio = sqrt(sum (r_g ||w_g||)^2) / sqrt(sum ||w_g||^2), which needs each group's weight
    norm (groups without one are left out). None when nothing is left.
    """
    values = _numbers(record.get(quantity))
    if quantity != "update_ratio":
        present = [values[group] for group in groups if group in values]
        return math.hypot(*present) if present else None
    weight_norms = _numbers(record.get("weight_norm"))
    present = [group for group in groups if group in values and group in weight_norms]
    weight_norm = math.hypot(*(weight_norms[group] for group in present))
    if weight_norm == 0:
        return None
    return math.hypot(*(values[group] * weight_norms[group] for group in present)) / weight_norm


def _numbers(mapping) -> dict[str, float]:
    """The numeric entries of a stats field (a missing or malformed field reads as empty)."""
    if not isinstance(mapping, dict):
        return {}
    return {str(key): float(value) for key, value in mapping.items() if _is_number(value)}


def _depth_of(group: str) -> str:
    """The depth a parameter group belongs to: "layers.3.ffn" -> "layers.3", "lm_head" -> "output"."""
    if match := LAYER_PATTERN.match(group):
        return match.group(0)
    if group in INPUT_GROUPS:
        return "input"
    if group in OUTPUT_GROUPS:
        return "output"
    return group  # a group this module does not know yet: its own line, after the layers


def _depth_order(depth: str) -> tuple:
    """Sort key from the input to the output: input, layers.0, layers.1, ..., layers.10, (others), output."""
    if depth == "input":
        return (0, 0)
    if match := LAYER_PATTERN.fullmatch(depth):
        return (1, int(match.group(1)))
    return (3, "") if depth == "output" else (2, depth)


def _depths(runs: Sequence[RunMetrics]) -> list[str]:
    """Every depth any run's stats mention, input first: the shade of a line is its place in this list."""
    depths = set()
    for run in runs:
        for record in run.stats:
            for panel in DYNAMICS_PANELS:
                depths.update(_depth_of(group) for group in _numbers(record.get(panel.quantity)))
    return sorted(depths, key=_depth_order)


def _shade(color, depth_fraction: float) -> tuple[float, float, float]:
    """`color` light near the input (depth 0: a quarter of it on white), itself halfway, dark near the output (1)."""
    from matplotlib.colors import to_rgb

    rgb = to_rgb(color)
    if depth_fraction <= 0.5:
        strength = 0.25 + 1.5 * depth_fraction
        return tuple(1 - strength * (1 - channel) for channel in rgb)
    darkness = 1 - 1.1 * (depth_fraction - 0.5)
    return tuple(channel * darkness for channel in rgb)


def _depth_key(depths: list[str]) -> list:
    """Legend entries explaining the shades, in grey (at most 9 of them, evenly spread)."""
    from matplotlib.lines import Line2D

    names = {"input": "input (token_embeddings, positions)", "output": "output (ln_final, lm_head)"}
    stride = math.ceil(len(depths) / 8)
    shown = sorted(set(range(0, len(depths), stride)) | {len(depths) - 1})
    header = Line2D([], [], linestyle="none", label="depth (shade):")
    return [header] + [Line2D([], [], color=_shade("0.5", index / max(len(depths) - 1, 1)), linewidth=1.5,
                              label=names.get(depths[index], depths[index])) for index in shown]


def _reference_lines(runs: Sequence[RunMetrics], gradient_axes, entropy_axes) -> list:
    """Faint lines from the runs' configs: the gradient-clip threshold, the entropy of uniform causal attention.

    Uniform attention over the t positions a query may see has entropy ln(t); averaged over the positions
    t = 1..T of a full context that is ln(T!) / T = lgamma(T + 1) / T.
    """
    lines = []
    for clip in sorted({value for run in runs if (value := run.setting("optimizer", "grad_clip"))}):
        lines.append(gradient_axes.axhline(clip, color="0.4", linewidth=0.8, linestyle="--", alpha=0.6,
                                           label=f"gradient clip at {clip:g}"))
    for context in sorted({int(value) for run in runs if (value := run.setting("model", "context_length"))}):
        lines.append(entropy_axes.axhline(math.lgamma(context + 1) / context, color="0.4", linewidth=0.8,
                                          linestyle=":", alpha=0.6, label=f"uniform attention, context {context}"))
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Shared by both figures


@dataclass(frozen=True)
class _XAxis:
    """What the horizontal axis reads from each record, the unit it is drawn in, and its label."""

    field: str
    per_unit: float
    label: str

    @classmethod
    def of(cls, x_axis: str, runs: Sequence[RunMetrics]) -> "_XAxis":
        if x_axis == "steps":
            return cls("step", 1.0, "step (optimizer updates)")
        if x_axis == "tokens":
            return cls("tokens", 1.0, "training tokens seen")
        if x_axis == "wall_s":
            seconds = max((record["wall_s"] for run in runs for record in run.train + run.valid + run.stats),
                          default=0.0)
            unit, per_unit = ("s", 1.0) if seconds < 600 else ("min", 60.0) if seconds < 3 * 3600 else ("h", 3600.0)
            return cls("wall_s", per_unit, f"wall-clock training time ({unit})")
        raise PlotError(f"x_axis must be one of {', '.join(X_AXES)}, got {x_axis!r}")

    def scaled(self, values: Sequence[float]) -> list[float]:
        return [value / self.per_unit for value in values]

    def label_axis(self, axes) -> None:
        """Label the axis and start it at 0, so that the first logged step (step 1) is at its left edge."""
        axes.set_xlabel(self.label)
        axes.set_xlim(left=0)
        if self.field == "tokens":
            from matplotlib.ticker import EngFormatter

            axes.xaxis.set_major_formatter(EngFormatter(sep=""))  # 2M, not 2000000 or 2e6


def _load_runs(run_dirs: Sequence[str | os.PathLike]) -> list[RunMetrics]:
    if not run_dirs:
        raise PlotError("no run directories given; pass one or more directories made by `cs336-train fit`")
    runs = [load_metrics(run_dir) for run_dir in run_dirs]
    _disambiguate_names(runs, run_dirs)
    return runs


def _figure_legend(figure, handles: list, labels: list[str], title: str | None = None) -> None:
    """One legend for the whole figure, right of the panels, each label once."""
    unique = dict(zip(labels, handles))
    figure.legend(list(unique.values()), list(unique), loc="outside right upper", fontsize="small", title=title,
                  title_fontsize="small")


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


def _png_bytes(figure) -> bytes:
    """The figure as a PNG of 256 colours at most.

    Noisy curves drawn with antialiasing leave tens of thousands of distinct colours, which PNG compresses badly
    (two runs of noisy per-block curves pass 1 MB); a 256-colour palette looks the same and is 2-3x smaller.
    Pillow comes with matplotlib.
    """
    from PIL import Image

    rendered = io.BytesIO()
    figure.savefig(rendered, format="png", dpi=DPI)
    rendered.seek(0)
    palette_image = Image.open(rendered).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    compressed = io.BytesIO()
    palette_image.save(compressed, format="png", optimize=True)
    return compressed.getvalue()


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
            handle.write(_png_bytes(figure))
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
