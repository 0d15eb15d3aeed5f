"""cs336-train: data loading, checkpoints, the training loop and the `cs336-train` CLI (handout §5).

    >>> from cs336_train import TrainConfig, resolve_config, train
    >>> overrides = ["data.train=train.bin", "data.valid=valid.bin"]
    >>> config = TrainConfig.from_toml(resolve_config("tinystories_cpu"), overrides)  # doctest: +SKIP
    >>> result = train(config, "runs/first")                                      # doctest: +SKIP

The names below are imported on first use (PEP 562 `__getattr__`), not when the package is imported: torch
takes seconds to load, and `cs336-train --help`, or a Ctrl-C during start-up, should not wait for it.
"""

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "load_checkpoint": "checkpoint", "read_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "write_checkpoint": "checkpoint",
    "DataConfig": "config", "OptimizerConfig": "config", "RunConfig": "config", "TrainConfig": "config",
    "bundled_configs": "config_files", "resolve_config": "config_files", "tinystories_sample": "datasets.bundled",
    "get_batch": "data", "open_tokens": "data", "validation_batches": "data",
    "CheckpointError": "errors", "ConfigError": "errors", "DataError": "errors", "TrainError": "errors",
    "TrainingDiverged": "errors",
    "RunDirectory": "run_directory", "RunLockedError": "run_directory", "resolve_device": "runtime",
    "TrainResult": "trainer", "train": "trainer", "evaluate": "evaluation", "learning_rate": "schedule",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cs336_train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cs336_train.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
