"""cs336-train: data loading, checkpoints, the training loop and the `cs336-train` CLI (handout §5).

    >>> from cs336_train import TrainConfig, train
    >>> overrides = ["data.train=train.bin", "data.valid=valid.bin"]
    >>> config = TrainConfig.from_toml("configs/tinystories_cpu.toml", overrides)  # doctest: +SKIP
    >>> result = train(config, "runs/first")                                      # doctest: +SKIP
"""

from cs336_train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, write_checkpoint
from cs336_train.config import DataConfig, OptimizerConfig, RunConfig, TrainConfig
from cs336_train.data import get_batch, open_tokens, validation_batches
from cs336_train.errors import CheckpointError, ConfigError, DataError, TrainError, TrainingDiverged
from cs336_train.trainer import TrainResult, evaluate, learning_rate, train

__all__ = [
    "CheckpointError", "ConfigError", "DataConfig", "DataError", "OptimizerConfig", "RunConfig", "TrainConfig",
    "TrainError", "TrainResult", "TrainingDiverged", "evaluate", "get_batch", "learning_rate", "load_checkpoint",
    "open_tokens", "read_checkpoint", "save_checkpoint", "train", "validation_batches", "write_checkpoint",
]
__version__ = "0.1.0"
