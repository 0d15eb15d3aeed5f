"""The training configuration: four dataclasses read from one TOML file, with command-line overrides.

    [model]      architecture (cs336_nn.ModelConfig)
    [optimizer]  AdamW hyperparameters, the learning-rate schedule and gradient clipping
    [data]       token files (from `cs336-bpe encode`) and the tokenizer that made them
    [run]        steps, batch size, precision, device, logging, checkpoints, budgets

    >>> config = TrainConfig.from_toml("configs/tinystories_cpu.toml", ["optimizer.lr=1e-3"])  # doctest: +SKIP

Unknown keys are errors that list the valid ones (a typo must never be silently ignored), and every size or
rate is checked when the configuration is built, before any data is read.
"""

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cs336_nn import IMPLEMENTATIONS as LOSS_IMPLEMENTATIONS
from cs336_nn import ModelConfig
from cs336_optim import IMPLEMENTATIONS as OPTIMIZER_IMPLEMENTATIONS
from cs336_train.errors import ConfigError

SCHEDULES = ("cosine", "wsd", "constant")
PRECISIONS = ("fp32", "bf16")


@dataclass
class OptimizerConfig:
    impl: str = "scratch"  # our AdamW; "reference": Algorithm 1, one parameter at a time; "torch": torch's fused one
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # on matrices only; norms and embeddings are not decayed
    schedule: str = "cosine"
    warmup_fraction: float = 0.05  # of all steps (of run.time_budget_s, when it is set)
    decay_fraction: float = 0.2  # wsd only: the final fraction of steps (or of the time budget) spent decaying
    grad_clip: float = 1.0  # global L2 norm; 0 disables clipping

    def validate(self) -> None:
        _choice("optimizer.impl", self.impl, OPTIMIZER_IMPLEMENTATIONS)
        _choice("optimizer.schedule", self.schedule, SCHEDULES)
        _positive("optimizer.lr", self.lr)
        _in_range("optimizer.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {list(self.betas)}")
        _non_negative("optimizer.eps", self.eps)
        _non_negative("optimizer.weight_decay", self.weight_decay)
        _in_range("optimizer.warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        _in_range("optimizer.decay_fraction", self.decay_fraction, 0.0, 1.0)
        _non_negative("optimizer.grad_clip", self.grad_clip)


@dataclass
class DataConfig:
    train: str = ""  # token file written by `cs336-bpe encode` (its .json metadata must sit beside it)
    valid: str = ""
    tokenizer: str = ""  # tokenizer directory; copied into the run so samples can be decoded later

    def validate(self) -> None:
        for name in ("train", "valid"):
            if not getattr(self, name):
                raise ConfigError(f"data.{name} is not set: give the path of a token file from `cs336-bpe encode`")


@dataclass
class RunConfig:
    steps: int = 256  # optimizer steps
    batch_size: int = 32  # sequences per optimizer step, over all processes and accumulation steps
    grad_accum_steps: int = 1  # micro-batches per step: same result, less memory
    precision: str = "bf16"  # bf16 = bfloat16 autocast (weights and optimizer stay float32)
    compile: bool = False  # torch.compile the model (ignored on mps; slow to start on a CPU)
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 slower
    device: str = "auto"  # auto = cuda, then mps, then cpu
    seed: int = 0
    loss_impl: str = "scratch"  # our cross-entropy; "reference": the plain one; "torch": F.cross_entropy
    log_interval: int = 10  # steps between console/metrics lines
    eval_interval: int = 0  # steps between validations; 0 = only at the end
    checkpoint_interval: int = 0  # steps between checkpoints; 0 = only at the end
    keep_last: int = 3  # step checkpoints kept (plus best.pt)
    time_budget_s: float = 0.0  # stop after this many training seconds; the lr schedule then runs on time; 0 = none
    valid_batch_size: int = 16  # sequences per validation forward pass
    num_threads: int = 0  # CPU threads for torch; 0 = torch's default
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-identical reruns on any thread count
    stats_interval: int = 64  # steps between training-dynamics records (instruments.py); 0 = none
    peak_tflops: float = 0.0  # for MFU; 0 = measure a matrix product at start-up (CPU) or look it up (CUDA)
    wandb: bool = False  # also log to Weights & Biases (offline when no account is configured)
    wandb_project: str = "cs336"

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum_steps", "log_interval", "keep_last", "valid_batch_size"):
            _positive_int(f"run.{name}", getattr(self, name))
        for name in ("eval_interval", "checkpoint_interval", "num_threads", "stats_interval"):
            _non_negative_int(f"run.{name}", getattr(self, name))
        _choice("run.precision", self.precision, PRECISIONS)
        _choice("run.loss_impl", self.loss_impl, LOSS_IMPLEMENTATIONS)
        _non_negative("run.time_budget_s", self.time_budget_s)
        _non_negative("run.peak_tflops", self.peak_tflops)
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(
                f"run.batch_size {self.batch_size} must be divisible by run.grad_accum_steps {self.grad_accum_steps}"
            )


SECTIONS = {"model": ModelConfig, "optimizer": OptimizerConfig, "data": DataConfig, "run": RunConfig}


@dataclass
class TrainConfig:
    model: ModelConfig
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "TrainConfig":
        self.optimizer.validate()
        self.data.validate()
        self.run.validate()
        return self

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "optimizer": asdict(self.optimizer), "data": asdict(self.data),
                "run": asdict(self.run)}

    @classmethod
    def from_dict(cls, values: dict, overrides: list[str] = ()) -> "TrainConfig":
        """Build from nested dicts ({"model": {...}, "run": {...}}), then apply "section.key=value" overrides."""
        values = {section: dict(table) for section, table in values.items()}
        for override in overrides:
            section, key, value = parse_override(override)
            values.setdefault(section, {})[key] = value
        unknown = sorted(set(values) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown configuration sections {unknown}; valid ones are {list(SECTIONS)}")
        if "model" not in values:
            raise ConfigError("the configuration has no [model] section; see configs/ for examples")
        sections = {}
        for name, section_class in SECTIONS.items():
            table = values.get(name, {})
            _check_keys(name, table, section_class)
            try:
                sections[name] = section_class(**_typed(section_class, table))
            except (TypeError, ValueError) as error:  # ModelConfig validates itself in __post_init__
                raise ConfigError(str(error)) from None
        return cls(**sections).validate()

    @classmethod
    def from_toml(cls, path: str | Path, overrides: list[str] = ()) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file {str(path)!r} does not exist; see configs/ for examples")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{str(path)!r} is not valid TOML: {error}") from None
        return cls.from_dict(values, overrides)

    def to_toml(self) -> str:
        """The resolved configuration as TOML (saved in every run directory; `fit` reads it back)."""
        lines = []
        for section, table in self.to_dict().items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items() if value is not None)
            lines.append("")
        return "\n".join(lines)


def parse_override(override: str) -> tuple[str, str, object]:
    """"optimizer.lr=1e-3" -> ("optimizer", "lr", 0.001). Values are TOML (strings may omit their quotes)."""
    name, equals, text = override.partition("=")
    section, dot, key = name.strip().partition(".")
    if not equals or not dot or not key:
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. optimizer.lr=1e-3")
    try:
        value = tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word such as cpu or bf16
    return section, key, value


def _check_keys(section: str, table: dict, section_class) -> None:
    valid = [f.name for f in fields(section_class)]
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ConfigError(f"unknown {section} settings {unknown}; valid ones are {valid}")


def _typed(section_class, table: dict) -> dict:
    """Convert TOML values to the field's type where that is lossless (an int for a float, a list for a tuple)."""
    kinds = {f.name: f.type for f in fields(section_class)}
    typed = {}
    for key, value in table.items():
        kind = kinds[key]
        if kind in (float, "float") and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(value, list):
            value = tuple(value)
        expected = {"float": float, "int": int, "str": str, "bool": bool}.get(kind, kind)
        if expected in (float, int, str, bool) and (
            not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        ):
            raise ConfigError(f"{section_class.__name__} setting {key} = {value!r} should be a {expected.__name__}")
        typed[key] = value
    return typed


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} = {value!r} is not one of {', '.join(allowed)}")


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be zero or positive, got {value!r}")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value!r}")


def _positive_int(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _non_negative_int(name: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"{name} must be zero or a positive integer, got {value!r}")
