"""Errors the trainer raises for problems the user can fix; the CLI prints them without a traceback."""


class TrainError(Exception):
    """Something about the inputs or the environment is wrong; the message says what and how to fix it."""


class ConfigError(TrainError, ValueError):
    """An invalid configuration: an unknown key, a wrong type, a non-positive size or rate."""


class DataError(TrainError, ValueError):
    """A token file that is missing, malformed, or does not match the model or tokenizer."""


class CheckpointError(TrainError):
    """A checkpoint that is corrupt, from a newer format, or from a different configuration."""


class TrainingDiverged(TrainError):
    """The loss became NaN or infinite; the last good checkpoint is kept.

    `step` (where), `last_finite_loss` and `largest_grad_norms` ({parameter group: norm}) say more.
    """

    step: int | None = None
    last_finite_loss: float | None = None
    largest_grad_norms: dict | None = None


class Interrupted(TrainError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved first. The process exits with 128 + the signal number."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number
