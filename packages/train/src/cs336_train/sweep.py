"""`cs336-train sweep`: train every run of an experiment (experiment.py), one after another, then report.

    >>> experiment = load_experiment("experiments/learning_rate.toml", "cpu")   # doctest: +SKIP
    >>> run_sweep(experiment)                                                   # doctest: +SKIP

    DIR/runs/<run>/      one run directory per run (config.toml, metrics.jsonl, checkpoints/, result.json)
    DIR/data/vocab-N/    the tokenizer and token files of each vocabulary size (sweep_data.py)
    DIR/report.md        the table, the figures and samples (report.py); report.json holds the same table

What makes a sweep safe to stop at any moment:
- A finished or diverged run has a result.json and is skipped; an interrupted one is continued from its newest
  checkpoint (the trainer restarts a run that never saved one).
- A divergence is a result ("diverged at step N"), not a crash: the sweep goes on with the next run.
- Ctrl-C lets the current run save a checkpoint, then stops the whole sweep with the run's exit status (130).
- Everything is checked before the first step: every run's configuration, the texts, and that a run directory
  left by an earlier sweep holds the same settings (several experiments may share DIR and its runs).
- One sweep at a time writes DIR (it holds DIR/.lock).
"""

import json
from collections.abc import Callable, Sequence

from cs336_train.checkpointing import RESUMABLE_OVERRIDES
from cs336_train.config import TrainConfig
from cs336_train.errors import ConfigError, Interrupted, TrainingDiverged
from cs336_train.experiment import Experiment, PlannedRun
from cs336_train.run_directory import RunDirectory
from cs336_train.sweep_data import prepare_token_files, require_texts
from cs336_train.sweep_records import diverged_result, finished_result, read_result, write_record, write_result
from cs336_train.trainer import train


def run_sweep(experiment: Experiment, jobs: int = 1, only: Sequence[str] = (), say: Callable[[str], None] = print,
              report: bool = True) -> list[PlannedRun]:
    """Train the runs of `experiment` (those named in `only`, when given) that have not ended; returns them.

    jobs > 1 trains that many runs at once, each in its own `python -m cs336_train` process (sweep_jobs.py).
    """
    selected = select_runs(experiment, only)
    sweep_dir = RunDirectory(experiment.out_dir)  # its lock and its clean-up of half-written files serve DIR too
    with sweep_dir.lock():
        sweep_dir.remove_stale_partials()
        check_before_training(experiment)
        write_record(experiment.out_dir, experiment_record(experiment))
        todo = []
        for run in selected:
            result = read_result(experiment.run_dir(run.name))
            if result is None:
                todo.append(run)
            else:
                say(f"sweep: {run.name}: already {describe_result(result)}; skipped")
        for vocab_size in experiment.vocab_sizes(todo):
            prepare_token_files(experiment.data_dir(vocab_size), experiment.train_text, experiment.valid_text,
                                vocab_size, say)
        if jobs > 1 and len(todo) > 1:  # a single run gains nothing from a process of its own
            from cs336_train.sweep_jobs import train_in_subprocesses

            train_in_subprocesses(experiment, todo, jobs, say)
        else:
            for index, run in enumerate(todo, start=1):
                say(f"sweep: [{index}/{len(todo)}] {run.name}: {describe_settings(experiment, run)}")
                result = train_one(experiment, run)
                say(f"sweep: {run.name}: {describe_result(result)}")
    if report:
        from cs336_train.report import write_report

        write_report(experiment.out_dir, say)
    return todo


def select_runs(experiment: Experiment, only: Sequence[str]) -> list[PlannedRun]:
    names = [run.name for run in experiment.runs]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise ConfigError(f"--only {', '.join(unknown)}: no such run in {experiment.name}; its runs are "
                          f"{', '.join(names)}")
    return [run for run in experiment.runs if not only or run.name in only]


def train_one(experiment: Experiment, run: PlannedRun) -> dict:
    """Train (or continue) one run in this process and write its result.json; returns the result."""
    run_dir = experiment.run_dir(run.name)
    resume = RunDirectory(run_dir).config_path.is_file()  # started before: continue from its newest checkpoint
    try:
        trained = train(run.config, run_dir, resume=resume)
    except TrainingDiverged as error:
        result = diverged_result(error)
    except Interrupted as error:
        raise Interrupted(f"the sweep stopped during run {run.name} ({error}); run the same `cs336-train sweep` "
                          "command again to continue where it stopped", error.exit_code - 128) from None
    else:
        result = finished_result(trained.steps, trained.tokens, trained.wall_s, trained.valid_loss,
                                 trained.stopped_by)
    write_result(run_dir, result)
    return result


def check_before_training(experiment: Experiment) -> None:
    """Refuse, before anything trains: missing texts, and run directories that hold a run with other settings."""
    require_texts(experiment.train_text, experiment.valid_text)
    for run in experiment.runs:
        saved = RunDirectory(experiment.run_dir(run.name)).config_path
        if not saved.is_file():
            continue
        differences = setting_differences(TrainConfig.from_toml(saved).to_dict(), run.config.to_dict())
        if differences:
            raise ConfigError(
                f"{str(saved.parent)!r} holds a run trained with other settings "
                f"({'; '.join(f'{key}: {old!r} -> {new!r}' for key, (old, new) in differences.items())}), by "
                f"another experiment or an earlier version of this one: rename run {run.name!r}, or give the sweep "
                "another --out directory"
            )


def setting_differences(before: dict, after: dict) -> dict[str, tuple]:
    """{"section.key": (before, after)} for the settings that change what a run computes.

    Settings that only decide how a run is watched (intervals, logging, device) are left out, as `resume`
    allows changing them.
    """
    old, new = flatten(before), flatten(after)
    watched = {f"run.{key}" for key in RESUMABLE_OVERRIDES}
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key) and key not in watched}


def flatten(config: dict) -> dict:
    """{"model": {"d_model": 256}} -> {"model.d_model": 256}; lists and tuples compare alike."""
    return {f"{section}.{key}": list(value) if isinstance(value, tuple) else value
            for section, table in config.items() for key, value in table.items()}


def describe_settings(experiment: Experiment, run: PlannedRun) -> str:
    """'optimizer.lr=0.001, run.seed=1' (what this run changes; data paths follow model.vocab_size)."""
    changed = setting_differences(experiment.reference.config.to_dict(), run.config.to_dict())
    shown = [f"{key}={_as_text(new)}" for key, (_, new) in changed.items() if not key.startswith("data.")]
    return ", ".join(shown) or "the base settings"


def _as_text(value) -> str:
    """A setting as one writes it in --set: true, 0.001, post (not Python's True or 'post')."""
    return value if isinstance(value, str) else json.dumps(value)


def describe_result(result: dict) -> str:
    if result["status"] == "diverged":
        return f"diverged at step {result.get('diverged_at_step')}"
    loss = result.get("final_valid_loss")
    return f"finished, validation loss {loss:.4f}" if loss is not None else "finished"


def describe_plan(experiment: Experiment, only: Sequence[str] = ()) -> list[str]:
    """One line per run (for --dry-run): its name, what it changes, its steps, and whether it is done."""
    lines = [f"{experiment.name} at {experiment.scale} scale: base {experiment.base}; out {experiment.out_dir}"]
    for run in select_runs(experiment, only):
        result = read_result(experiment.run_dir(run.name))
        state = describe_result(result) if result else "to train"
        tokens = run.config.run.steps * run.config.run.batch_size * run.config.model.context_length
        lines.append(f"  {run.name}: {describe_settings(experiment, run)} ({run.config.run.steps:,} steps, "
                     f"{tokens:,} tokens; {state})")
    return lines


def experiment_record(experiment: Experiment) -> dict:
    """What `cs336-train report` needs to know about the experiment, saved as DIR/experiments/<name>.json."""
    def planned(run: PlannedRun) -> dict:
        return {"name": run.name, "overrides": run.overrides, "config": run.config.to_dict(),
                "settings": describe_settings(experiment, run)}

    return {"name": experiment.name, "problem": experiment.problem, "question": experiment.question,
            "scale": experiment.scale, "source": str(experiment.source), "base": str(experiment.base),
            "samples": experiment.samples, "reference": planned(experiment.reference),
            "runs": [planned(run) for run in experiment.runs]}
