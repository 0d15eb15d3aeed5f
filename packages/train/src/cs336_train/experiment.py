"""An experiment (handout §7): one base configuration and the runs that vary it, read from a small TOML file.

    [experiment]
    name = "learning_rate"                        # names the figures and the report section
    problem = "learning_rate (handout §7.2.1)"    # the handout problem it answers
    question = "Which peak learning rate is best, and how far is it from the one that diverges?"

    [scale.cpu]                                   # --scale cpu (the default): minutes on a laptop
    base = "tinystories_cpu"                      # a bundled configuration, or a TOML file (paths: relative to
                                                  # the project root, or absolute)
    set = ["run.log_interval=16"]                 # overrides for every run at this scale
    tokens = 1_048_576                            # per run: sets run.steps = tokens / (batch_size x context_length)
    validations = 4                               # evenly spaced: sets run.eval_interval = steps / validations
    train_text = "$CS336_DATA/tinystories/train.txt"   # raw text; $CS336_DATA defaults to ../shared/data
    valid_text = "$CS336_DATA/tinystories/valid.txt"

    [scale.gpu]                                   # --scale gpu: the handout's runs on one GPU (same keys), or
    refuse = "why this scale cannot run"          # ... a line saying why there is none

    [[runs]]                                      # one table per run; its `set` comes after the scale's
    name = "base"

    [[runs]]
    name = "lr-1e-3"
    set = ["optimizer.lr=1e-3"]
    scales = ["cpu"]                              # optional: only at these scales (default: every scale)

    [grid]                                        # optional: every combination is a run named from its values
    "optimizer.lr" = [4e-3, 8e-3]                 # -> runs lr-0.004 and lr-0.008

    [samples]                                     # optional: what the report generates from each trained run
    prompts = ["Once upon a time", "Lily wanted to"]
    max_new_tokens = 60

The runner (sweep.py) trains one tokenizer per vocabulary size on `train_text` and fills in `data.train`,
`data.valid` and `data.tokenizer` of every run, so a run may change `model.vocab_size` (257 = byte-level).

    >>> experiment = load_experiment("experiments/learning_rate.toml", "cpu")   # doctest: +SKIP
    >>> [run.name for run in experiment.runs]                                   # doctest: +SKIP
    ['base', 'base-seed-1', 'lr-0.001', 'lr-0.004', 'lr-0.008', 'lr-0.1']
    >>> experiment.runs[2].overrides[:3]                                        # doctest: +SKIP
    ['run.log_interval=16', 'run.stats_interval=32', 'optimizer.lr=0.001']
"""

import itertools
import json
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cs336_train.config import TrainConfig, parse_override
from cs336_train.config_files import resolve_config
from cs336_train.errors import ConfigError

SCALES = ("cpu", "gpu")
TABLES = {"experiment": ("name", "problem", "question"), "scale": SCALES, "runs": (), "grid": (),
          "samples": ("prompts", "max_new_tokens", "temperature", "top_p", "seed")}
SCALE_KEYS = ("base", "set", "tokens", "validations", "train_text", "valid_text", "refuse")
RUN_KEYS = ("name", "set", "scales")
DEFAULT_SAMPLES = {"prompts": ["Once upon a time", "Lily wanted to"], "max_new_tokens": 60, "temperature": 0.8,
                   "top_p": 0.95, "seed": 0}
# Run names become directory names: keep them to characters every file system and shell takes as they are.
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class PlannedRun:
    """One run of an experiment: its name, every override applied to the base config, and the config they make."""

    name: str
    overrides: list[str]  # in order: the scale's set, the run's set, the derived steps/intervals, the data paths
    config: TrainConfig

    def fit_command(self, base: Path, run_dir: Path) -> list[str]:
        """The `cs336-train fit` arguments that train exactly this run (what --jobs N starts)."""
        settings = [argument for override in self.overrides for argument in ("--set", override)]
        return ["fit", str(base), "--out", str(run_dir), *settings]


@dataclass
class Experiment:
    name: str
    problem: str
    question: str
    source: Path  # the experiment file
    scale: str
    base: Path  # the base configuration file
    out_dir: Path  # DIR: runs/, data/, figures/, report.md
    train_text: Path
    valid_text: Path
    samples: dict
    reference: PlannedRun | None = None  # the scale's settings alone: what "differs from the base" is measured
    runs: list[PlannedRun] = field(default_factory=list)

    def data_dir(self, vocab_size: int) -> Path:
        return self.out_dir / "data" / f"vocab-{vocab_size}"

    def run_dir(self, name: str) -> Path:
        return self.out_dir / "runs" / name

    def vocab_sizes(self, runs: list[PlannedRun] | None = None) -> list[int]:
        return sorted({run.config.model.vocab_size for run in (self.runs if runs is None else runs)})


def load_experiment(path: str | os.PathLike, scale: str, out_dir: Path | None = None) -> Experiment:
    """Read, check and resolve an experiment file at `scale`; any problem is a ConfigError of one line.

    Nothing is trained and no data is read: every run's configuration is built (`TrainConfig.from_toml`) so
    that a typo in the last run fails before the first one starts.
    """
    path = Path(path)
    where = str(path)
    values = _read_toml(path)
    _check_keys(where, values, TABLES)
    header = values.get("experiment", {})
    _check_keys(f"{where} [experiment]", header, TABLES["experiment"])
    name = header.get("name") or path.stem
    _check_name(where, "experiment name", name)
    table = scale_table(where, values, scale, name)
    root = project_root(path)
    experiment = Experiment(
        name=name, problem=header.get("problem", ""), question=header.get("question", ""), source=path.resolve(),
        scale=scale, base=resolve_base(where, table["base"], root),
        # resolved: the data paths saved in each run's config must not depend on the working directory
        out_dir=Path(out_dir or Path("runs/experiments") / scale).resolve(),
        train_text=resolve_path(table["train_text"], root), valid_text=resolve_path(table["valid_text"], root),
        samples=_samples(where, values.get("samples", {})),
    )
    scale_set = _string_list(f"{where} [scale.{scale}] set", table.get("set", []))
    derived = {"tokens": table.get("tokens"), "validations": table.get("validations")}
    experiment.reference = _plan(experiment, "base settings", scale_set, [], derived, where)
    for run_name, run_set in run_specs(where, values, scale):
        if any(run.name == run_name for run in experiment.runs):
            raise ConfigError(f"{where}: two runs are named {run_name!r}; give each run its own name")
        experiment.runs.append(_plan(experiment, run_name, scale_set, run_set, derived, where))
    if not experiment.runs:
        raise ConfigError(f"{where} defines no runs at the {scale} scale: add [[runs]] tables or a [grid]")
    return experiment


def scale_table(where: str, values: dict, scale: str, name: str) -> dict:
    """The [scale.cpu] or [scale.gpu] table, checked; a scale that says `refuse = "..."` is refused with it."""
    if scale not in SCALES:
        raise ConfigError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    scales = values.get("scale", {})
    _check_keys(f"{where} [scale]", scales, SCALES)
    if scale not in scales:
        raise ConfigError(f"{where} has no [scale.{scale}] table; it defines {', '.join(scales) or 'no scale'}")
    table = scales[scale]
    _check_keys(f"{where} [scale.{scale}]", table, SCALE_KEYS)
    if "refuse" in table:
        raise ConfigError(f"{name} has no {scale} scale: {table['refuse']}")
    for key in ("base", "train_text", "valid_text"):
        if not isinstance(table.get(key), str):
            raise ConfigError(f"{where} [scale.{scale}] needs {key} = \"path\"")
    return table


def run_specs(where: str, values: dict, scale: str) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every run at `scale`: the [[runs]] tables in order, then the [grid] combinations."""
    runs = values.get("runs", [])
    if not isinstance(runs, list):
        raise ConfigError(f"{where}: runs must be [[runs]] tables, each with a name and a set list")
    specs = []
    for index, run in enumerate(runs):
        _check_keys(f"{where} [[runs]] #{index + 1}", run, RUN_KEYS)
        if "name" not in run:
            raise ConfigError(f"{where}: run #{index + 1} has no name; add name = \"...\" to its [[runs]] table")
        _check_name(where, "run name", run["name"])
        scales = run.get("scales", list(SCALES))
        if not isinstance(scales, list) or not set(scales) <= set(SCALES):
            raise ConfigError(f"{where}: run {run['name']!r}: scales must be a list of {', '.join(SCALES)}, "
                              f"got {scales!r}")
        if scale in scales:
            specs.append((run["name"], _string_list(f"{where} run {run['name']!r} set", run.get("set", []))))
    return specs + grid_runs(where, values.get("grid", {}))


def grid_runs(where: str, grid: dict) -> list[tuple[str, list[str]]]:
    """Every combination of the grid's values, named from them: {"optimizer.lr": [1e-3]} -> ("lr-0.001", [...]).

    >>> grid_runs("x.toml", {"optimizer.lr": [1e-3, 2e-3], "run.seed": [0, 1]})[1]
    ('lr-0.001_seed-1', ['optimizer.lr=0.001', 'run.seed=1'])
    """
    for key, choices in grid.items():
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where} [grid] {key!r} must be a non-empty list of values, e.g. [1e-3, 2e-3]")
    runs = []
    for combination in itertools.product(*grid.values()) if grid else ():  # product() of nothing is one empty run
        pairs = list(zip(grid, combination))
        name = "_".join(f"{key.rpartition('.')[2]}-{_short(value)}" for key, value in pairs)
        runs.append((name, [f"{key}={json.dumps(value)}" for key, value in pairs]))
    return runs


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def _plan(experiment: Experiment, name: str, scale_set: list[str], run_set: list[str], derived: dict,
          where: str) -> PlannedRun:
    """Resolve one run: base config + scale set + run set, then the steps and intervals the scale derives, then
    the data paths of its vocabulary size."""
    def resolve(overrides: list[str]) -> TrainConfig:
        try:
            return TrainConfig.from_toml(experiment.base, overrides)
        except ConfigError as error:
            raise ConfigError(f"{where}: run {name!r}: {error}") from None

    overrides = scale_set + run_set
    placeholder = ['data.train="-"', 'data.valid="-"']
    config = resolve(overrides + placeholder)
    overrides = overrides + _derived_overrides(where, name, config, overrides, derived)
    vocab = resolve(overrides + placeholder).model.vocab_size
    data_dir = experiment.data_dir(vocab)
    overrides += [f"data.train={json.dumps(str(data_dir / 'train.bin'))}",
                  f"data.valid={json.dumps(str(data_dir / 'valid.bin'))}",
                  f"data.tokenizer={json.dumps(str(data_dir / 'tokenizer'))}"]
    return PlannedRun(name, overrides, resolve(overrides))


def _derived_overrides(where: str, name: str, config: TrainConfig, overrides: list[str], derived: dict) -> list[str]:
    """run.steps from the scale's token budget and run.eval_interval from its number of validations."""
    tokens, validations = derived["tokens"], derived["validations"]
    named = {".".join(parse_override(override)[:2]) for override in overrides}
    result = []
    steps = config.run.steps
    if tokens is not None:
        if not isinstance(tokens, int) or tokens < 1:
            raise ConfigError(f"{where}: tokens must be a positive integer, got {tokens!r}")
        if "run.steps" in named:
            raise ConfigError(f"{where}: run {name!r} sets run.steps, but its scale fixes tokens = {tokens:,}; "
                              f"remove one of them")
        per_step = config.run.batch_size * config.model.context_length
        steps, remainder = divmod(tokens, per_step)
        if remainder or steps == 0:
            raise ConfigError(f"{where}: run {name!r}: tokens = {tokens:,} is not a whole number of steps of "
                              f"{config.run.batch_size} x {config.model.context_length} = {per_step:,} tokens")
        result.append(f"run.steps={steps}")
    if validations is not None and "run.eval_interval" not in named:
        if not isinstance(validations, int) or validations < 1:
            raise ConfigError(f"{where}: validations must be a positive integer, got {validations!r}")
        result.append(f"run.eval_interval={max(1, steps // validations)}")
    return result


def project_root(path: Path) -> Path:
    """The nearest folder above `path` that holds a pyproject.toml (relative paths start there), else its own."""
    for folder in Path(path).resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    return Path(path).resolve().parent


def resolve_base(where: str, text: str, root: Path) -> Path:
    """The base configuration: a TOML file (relative to `root`, the project root) or a bundled configuration's
    name (tinystories_cpu, see `cs336-train configs`)."""
    path = resolve_path(text, root)
    if path.is_file():
        return path
    try:
        return resolve_config(text).resolve()
    except ConfigError as error:
        raise ConfigError(f"{where}: base: {error}") from None


def resolve_path(text: str, root: Path) -> Path:
    """Expand $CS336_DATA (default: ../shared/data beside the project), other $VARS and ~; relative to `root`.

    On a machine with neither, $CS336_DATA/tinystories/{train,valid}.txt are the TinyStories sample bundled in
    cs336-train (the same text as ../shared/data's), so the CPU-scale experiments run on a fresh clone too.
    """
    data = os.environ.get("CS336_DATA") or str(root.parent / "shared" / "data")
    if not os.environ.get("CS336_DATA") and not Path(data).is_dir():
        split = BUNDLED_SPLITS.get(text.replace("${CS336_DATA}", "$CS336_DATA"))
        if split:
            from cs336_train.datasets.bundled import tinystories_sample

            return tinystories_sample()[split]
    expanded = os.path.expanduser(os.path.expandvars(text.replace("$CS336_DATA", data)))
    return (root / expanded).resolve()


# The data paths the bundled TinyStories sample stands in for when there is no ../shared/data (resolve_path).
BUNDLED_SPLITS = {"$CS336_DATA/tinystories/train.txt": "train", "$CS336_DATA/tinystories/valid.txt": "valid"}


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist; see experiments/ for examples")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{str(path)!r} is not valid TOML: {error}") from None


def _check_keys(where: str, table, valid: Iterable[str]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    valid = list(valid)
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid ones are {list(valid)}")


def _check_name(where: str, what: str, name) -> None:
    if not isinstance(name, str) or not RUN_NAME.match(name):
        raise ConfigError(f"{where}: {what} {name!r} must be letters, digits, '.', '_', '+' or '-' (it names a "
                          "directory)")


def _string_list(where: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where} must be a list of \"section.key=value\" strings, got {value!r}")
    return value


def _samples(where: str, table: dict) -> dict:
    _check_keys(f"{where} [samples]", table, DEFAULT_SAMPLES)
    samples = {**DEFAULT_SAMPLES, **table}
    if not isinstance(samples["prompts"], list) or not all(isinstance(p, str) for p in samples["prompts"]):
        raise ConfigError(f"{where} [samples] prompts must be a list of strings")
    return samples
