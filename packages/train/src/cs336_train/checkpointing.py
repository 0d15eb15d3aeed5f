"""A run's saved state: what a new run writes first, what each training checkpoint holds, and how `resume` puts
it back. (checkpoint.py is the file itself: format, hashes, safe loading; run_directory.py is where files live.)

A training checkpoint holds the `TrainingState` (training_state.py) and what is needed to check and continue it:

    iteration, model, optimizer   what the course hook save_checkpoint writes too
    config                        the whole configuration: a resume refuses a checkpoint of a different run
    rng, data_state               every global random state, and the data sampler's
    progress                      `Progress` as a dict (step, tokens, wall_s, best_val_loss, loss_sum, loss_steps)
    best_val_loss, valid_loss     the best validation loss so far, and this checkpoint's (None between validations)
    tokenizer_fingerprint         which tokenizer made the data: a resume refuses another tokenizer's token files
"""

from pathlib import Path

import torch

from cs336_bpe import BPEInputError, Tokenizer
from cs336_train import runtime
from cs336_train.checkpoint import config_differences, read_checkpoint
from cs336_train.config import TrainConfig
from cs336_train.errors import CheckpointError, ConfigError, DataError
from cs336_train.run_directory import CONFIG_FILE, RunDirectory
from cs336_train.training_state import Progress, TrainingState

# What a checkpoint must hold for `resume` to continue exactly (the course hook's files hold only the first two).
RESUME_KEYS = {"model": "the weights", "optimizer": "the optimizer state", "config": "the configuration",
               "rng": "the random states", "data_state": "the data sampler's state",
               "progress": "the step, token and clock counters"}
# Settings a resume may change: they decide how the run is watched or executed, not what it computes.
RESUMABLE_OVERRIDES = {"time_budget_s", "device", "wandb", "wandb_project", "log_interval", "eval_interval",
                       "checkpoint_interval", "keep_last", "num_threads", "compile", "peak_tflops", "stats_interval",
                       "activation_checkpointing"}


def prepare_run_directory(config: TrainConfig, run: RunDirectory) -> None:
    """A new run: refuse a directory that already holds a run, save the resolved config and the tokenizer."""
    if run.has_checkpoints():
        raise ConfigError(
            f"{str(run.path)!r} already holds a run with checkpoints; continue it with `cs336-train resume "
            f"{run.path}` or choose another --out directory"
        )
    run.write_config(config.to_toml())
    if config.data.tokenizer and Path(config.data.tokenizer).resolve() != run.tokenizer_dir.resolve():
        try:
            Tokenizer.load(config.data.tokenizer).save(run.tokenizer_dir)
        except BPEInputError as error:
            raise DataError(str(error)) from None


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> TrainConfig:
    """The configuration saved in a run directory, with only watch-and-execute settings allowed to change."""
    path = RunDirectory(run_dir).config_path
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory: it has no {CONFIG_FILE}")
    for override in overrides:
        name = override.partition("=")[0].strip()
        section, _, key = name.partition(".")
        if section != "run" or key not in RESUMABLE_OVERRIDES:
            raise ConfigError(
                f"a resumed run cannot change {name}: that would make it a different run. Start a new run with "
                f"`cs336-train fit`, or change only run.{{{', '.join(sorted(RESUMABLE_OVERRIDES))}}}"
            )
    return TrainConfig.from_toml(path, overrides)


def save_training_state(run_directory: RunDirectory, state: TrainingState, config: TrainConfig,
                        tokenizer_fingerprint: str | None, valid_loss: float | None, is_best: bool) -> Path:
    """Write the checkpoint of `state` at its step (and as best.pt when `is_best`); returns its path.

    Reads the interval's loss sum back from the device: call it at a read point only.
    """
    progress = state.progress
    progress.loss_sum = float(state.interval_loss)
    optimizer_state = state.optimizer.state_dict()
    for group in optimizer_state["param_groups"]:  # the rate as a number, as checkpoints have always held it
        group["lr"] = float(group["lr"])
    return run_directory.save_checkpoint({
        "iteration": progress.step, "model": state.model.state_dict(), "optimizer": optimizer_state,
        "config": config.to_dict(), "rng": runtime.rng_states(), "data_state": state.batches.sampler_state(),
        "progress": progress.as_checkpoint_entry(), "best_val_loss": progress.best_val_loss, "valid_loss": valid_loss,
        "tokenizer_fingerprint": tokenizer_fingerprint,
    }, is_best=is_best, keep_last=config.run.keep_last)


def restore_training_state(state: TrainingState, run_directory: RunDirectory, which: str | Path | None,
                           config: TrainConfig, tokenizer_fingerprint: str | None,
                           device: torch.device) -> tuple[Path, dict]:
    """Load the chosen checkpoint (`which`: None = the newest, "best", a step number or a file) into `state` and
    the global random states; returns its path and its dict. Whatever does not fit is a CheckpointError that
    says why and which other checkpoint to resume from: damaged bytes, missing entries, another configuration or
    tokenizer, a malformed entry."""
    path = run_directory.choose(which)
    checkpoint = _read_intact(run_directory, path, device)
    _check_it_continues_this_run(run_directory, path, checkpoint, config, tokenizer_fingerprint)
    try:
        state.model.load_state_dict(checkpoint["model"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        runtime.restore_rng_states(checkpoint["rng"])
        state.batches.set_sampler_state(checkpoint["data_state"])
        state.progress = Progress.from_checkpoint_entry(dict(checkpoint["progress"]))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} holds a malformed training state ({first_line}); resume "
                              "from another checkpoint (--from STEP)") from None
    state.interval_loss.fill_(float(state.progress.loss_sum))
    return path, checkpoint


def _read_intact(run_directory: RunDirectory, path: Path, device: torch.device) -> dict:
    """The checkpoint's dict; a damaged file's error names the newest intact checkpoint to resume from instead."""
    try:
        return read_checkpoint(path, map_location=device)
    except CheckpointError as error:
        alternative = run_directory.newest_good_alternative(path)
        hint = (f"; the newest intact one is {alternative.name}: `cs336-train resume {run_directory.path} --from "
                f"{'best' if alternative.name == 'best.pt' else int(alternative.stem.split('_')[1])}`"
                if alternative else "")
        raise CheckpointError(f"{error}{hint}") from None


def with_current_defaults(saved: dict) -> dict:
    """A checkpoint's saved configuration with the settings added since it was written filled in at their defaults.

    New settings default to the behaviour that came before them (e.g. `model.ffn_impl = "scratch"`), so a run saved
    before they existed is the same run under them and may be resumed. A configuration that no longer validates is
    compared as saved (the comparison then names what differs).
    """
    try:
        return TrainConfig.from_dict(saved).to_dict()
    except (ConfigError, TypeError, ValueError):
        return saved


def _check_it_continues_this_run(run_directory: RunDirectory, path: Path, checkpoint: dict, config: TrainConfig,
                                 tokenizer_fingerprint: str | None) -> None:
    """Refuse a checkpoint that cannot continue this run exactly: entries missing (a course-hook file), another
    configuration (beyond the settings a resume may change), or data from another tokenizer."""
    for key, meaning in RESUME_KEYS.items():
        if key not in checkpoint:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no {key!r} entry ({meaning}), so the run cannot continue exactly; "
                "it was written by the course hook save_checkpoint or edited. Resume from another checkpoint "
                "(--from STEP) or start a new run"
            )
    differences = [line for line in config_differences(with_current_defaults(checkpoint["config"]), config.to_dict())
                   if not any(line.startswith(f"run.{key}:") for key in RESUMABLE_OVERRIDES)]
    if differences:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained with a different configuration: {'; '.join(differences)}. "
            "Resume with the run's own config.toml, or start a new run"
        )
    stored = checkpoint.get("tokenizer_fingerprint")
    if tokenizer_fingerprint is not None and stored not in (None, tokenizer_fingerprint) and \
            run_directory.current_fingerprint(stored) != tokenizer_fingerprint:
        raise CheckpointError(f"checkpoint {str(path)!r} was trained with another tokenizer than the run's")
