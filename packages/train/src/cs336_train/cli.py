"""The `cs336-train` command: fit, resume, eval, account, plot, download, pipeline, sweep, report, configs,
export and compare.

    cs336-train pipeline                                   # the bundled TinyStories sample -> a trained model
    cs336-train pipeline --train-text train.txt --valid-text valid.txt --out runs/first
    cs336-train fit tinystories_cpu --out runs/lr1e-3 --set optimizer.lr=1e-3
    cs336-train resume runs/lr1e-3
    cs336-train plot runs/first runs/lr1e-3 --out curves.png
    cs336-train sweep experiments/learning_rate.toml        # a handout §7 experiment, then its report

Problems the user can fix (a bad config, missing data, a corrupt checkpoint) print one clear message and exit
with status 1, without a traceback; an interrupted run exits with 128 + the signal number after saving. A CONFIG
is a TOML file or the name of a configuration bundled with cs336-train (`cs336-train configs` lists them).
"""

import functools
import json
import time
from pathlib import Path

import click

from cs336_bpe import friendly_errors
from cs336_train.compare import compare_command
from cs336_train.errors import TrainError
from cs336_train.export import export_command

# Only click is imported here (cs336_bpe loads its modules on first use, and friendly_errors needs only click);
# each command imports what it needs (torch among it) inside `_friendly_errors`, so that `--help` is instant and
# a Ctrl-C during start-up exits with 130 and one line, not a traceback.

override_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
    help="Override one setting, e.g. --set optimizer.lr=1e-3 --set run.steps=500 (repeatable).",
)


# What a user can fix (a TrainError) is one line and exit status 1; a run stopped by a signal (Interrupted, a
# TrainError with an exit code) says so and exits with 128 + the signal; Ctrl-C during start-up exits with 130.
_friendly_errors = friendly_errors(TrainError, interrupted="interrupted", prefix="cs336-train: ")


def _summary(result) -> None:
    click.echo(
        f"done: {result.steps} steps, {result.tokens:,} tokens in {result.wall_s:.0f} s of training "
        f"(stopped by {result.stopped_by}); validation loss {result.valid_loss:.4f}; run directory {result.run_dir}",
        err=True,
    )


def _default_out(config_path: Path) -> Path:
    return Path("runs") / f"{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cs336-train")
def main():
    """Train Transformer language models: from raw text to a trained model, with runs you cannot lose."""


# `export` lives with its logic in export.py (click and the standard library only, so --help stays fast).
main.add_command(export_command)
# `compare` (compare.py): reference, scratch and torch implementations of each component, side by side.
main.add_command(compare_command)

@main.command()
@click.argument("config_name", metavar="CONFIG")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/<config>-<time>).")
@override_option
@_friendly_errors
def fit(config_name: str, out: Path | None, overrides: tuple[str, ...]):
    """Train a model from CONFIG (a TOML file or a bundled name, see `cs336-train configs`) on token files."""
    from cs336_train.config import TrainConfig
    from cs336_train.config_files import resolve_config
    from cs336_train.trainer import train

    config_path = resolve_config(config_name)
    config = TrainConfig.from_toml(config_path, list(overrides))
    _summary(train(config, out or _default_out(config_path)))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--from", "resume_from", metavar="STEP|best|PATH", default=None,
              help="The checkpoint to continue from: a step number, best, or a .pt file (default: the newest). "
                   "Later step checkpoints are moved to checkpoints/superseded/, not deleted.")
@click.option("--set", "overrides", multiple=True, metavar="run.KEY=VALUE",
              help="Change a setting that does not change what is computed, e.g. --set run.time_budget_s=600 "
                   "--set run.device=cpu (repeatable).")
@_friendly_errors
def resume(run_dir: Path, resume_from: str | None, overrides: tuple[str, ...]):
    """Continue the run in RUN_DIR from its newest checkpoint (or --from another), exactly where it stopped.

    Only settings that do not change what is computed may be overridden, e.g.
    --set run.time_budget_s=600 or --set run.device=cpu.
    """
    from cs336_train.checkpointing import load_run_config
    from cs336_train.trainer import train

    config = load_run_config(run_dir, list(overrides))
    _summary(train(config, run_dir, resume=True, resume_from=resume_from))


@main.command(name="eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", "token_file", required=True, type=click.Path(path_type=Path),
              help="Token file to evaluate on (from `cs336-bpe encode` with the run's tokenizer).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Sequences per forward pass.")
@click.option("--from", "which", metavar="STEP|best", default=None,
              help="For a run directory: which checkpoint (default: the newest).")
@_friendly_errors
def eval_command(checkpoint: Path, token_file: Path, device: str, batch_size: int, which: str | None):
    """Validation loss and perplexity of CHECKPOINT (a .pt file or a run directory) over a whole token file."""
    from cs336_train.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, token_file, device=device, batch_size=batch_size, which=which)
    click.echo(json.dumps(result))


@main.command()
@click.argument("config_name", metavar="CONFIG")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1), help="Steps on the one batch.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Sequences in it.")
@click.option("--lr", default=3e-3, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Constant learning rate (after a short warm-up).")
@override_option
@_friendly_errors
def overfit(config_name: str, steps: int, batch_size: int, lr: float, overrides: tuple[str, ...]):
    """Check that the model of CONFIG can memorise one batch of its training data (run this first).

    The loss must fall near zero (0.1) in a few hundred steps; if it does not, the message says what that
    points to. Needs data.train (e.g. --set data.train=runs/first/data/train.bin); exit status 1 on failure.
    """
    from cs336_train.config import TrainConfig
    from cs336_train.config_files import resolve_config
    from cs336_train.overfit import overfit_one_batch

    placeholder_valid = [] if "data.valid" in " ".join(overrides) else ['data.valid="-"']
    config = TrainConfig.from_toml(resolve_config(config_name), placeholder_valid + list(overrides))
    result = overfit_one_batch(config, steps=steps, batch_size=batch_size, lr=lr,
                               say=lambda line: click.echo(line, err=True))
    if not result.passed:
        raise click.ClickException(f"overfitting one batch {result.message}")
    click.echo(f"overfitting one batch {result.message}", err=True)


@main.command()
@click.argument("config_name", metavar="CONFIG", default="tinystories_cpu")
@click.option("--preset", type=click.Choice(["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"]),
              help="Instead of a CONFIG: the handout's transformer_accounting and adamw_accounting answers for "
                   "this GPT-2 size.")
@override_option
@_friendly_errors
def account(config_name: str, preset: str | None, overrides: tuple[str, ...]):
    """Parameters, FLOPs and training memory of CONFIG (default: tinystories_cpu; no data needed).

    With --preset: the handout's written accounting problems for a GPT-2 size, computed (cs336_nn.accounting).
    """
    from cs336_train.accounting_report import accounting_report, handout_report
    from cs336_train.config import TrainConfig
    from cs336_train.config_files import resolve_config

    if preset:  # a CONFIG or --set given with it would be silently ignored, so they are refused
        source = click.get_current_context().get_parameter_source("config_name")
        if overrides or source is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError("--preset reports the handout's fixed GPT-2 shapes: give it without CONFIG or --set")
        click.echo(handout_report(preset))
        return
    config_path = resolve_config(config_name)
    values = TrainConfig.from_toml(config_path, list(overrides) + _placeholder_data(config_path))
    click.echo(accounting_report(values))


def _placeholder_data(config_path: Path) -> list[str]:
    # Accounting needs no data files; fill the data section only where the config leaves it empty.
    import tomllib

    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8")).get("data", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # TrainConfig.from_toml reads the file next and says what is wrong with it
    return [f'data.{name}="-"' for name in ("train", "valid") if not data.get(name)]


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_png", default="loss_curves.png", show_default=True, type=click.Path(path_type=Path),
              help="PNG file to write (the loss curves).")
@click.option("--x", "x_axis", default="steps", show_default=True, type=click.Choice(["steps", "tokens", "wall"]),
              help="Horizontal axis: optimizer steps, training tokens seen (runs of different batch sizes), or "
                   "wall-clock time (then the loss figure has one panel).")
@click.option("--title", default=None, help="Title of the figures.")
@click.option("--dynamics", "dynamics_png", default=None, type=click.Path(path_type=Path),
              help="Also write the training-dynamics figure to this PNG: gradient and weight norms, update ratios, "
                   "activation RMS and attention entropy per block (runs trained with run.stats_interval > 0).")
@click.option("--smoothing", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Exponential moving average of the training loss (0 = raw, 0.9 = smooth).")
@click.option("--log-loss", is_flag=True, help="Logarithmic loss axis.")
@_friendly_errors
def plot(run_dirs: tuple[Path, ...], out_png: Path, x_axis: str, title: str | None, dynamics_png: Path | None,
         smoothing: float, log_loss: bool):
    """Training and validation loss of several runs against steps (or tokens) and wall-clock, on one figure.

    With --dynamics, a second figure shows why the curves look as they do: how the gradients, weights,
    activations and attention of each block evolve.
    """
    from cs336_train.plot import plot_dynamics, plot_runs

    if dynamics_png is not None and dynamics_png.resolve() == out_png.resolve():
        raise click.UsageError("--dynamics must name another file than --out: each figure is one PNG")
    x_axis = "wall_s" if x_axis == "wall" else x_axis
    plot_runs(list(run_dirs), out_png, smoothing=smoothing, log_loss=log_loss, x_axis=x_axis, title=title)
    click.echo(f"wrote {out_png}", err=True)
    if dynamics_png is not None:
        plot_dynamics(list(run_dirs), dynamics_png, x_axis=x_axis, title=title)
        click.echo(f"wrote {dynamics_png}", err=True)


@main.command()
@click.argument("dataset", type=click.Choice(["tinystories", "owt"]))
@click.argument("dest", default="data", type=click.Path(path_type=Path))
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "valid"]),
              help="Only these splits (repeatable; default both).")
@click.option("--base-url", default=None, envvar="HF_ENDPOINT",
              help="Fetch from this server instead of huggingface.co (a mirror); also read from $HF_ENDPOINT.")
@_friendly_errors
def download(dataset: str, dest: Path, splits: tuple[str, ...], base_url: str | None):
    """Download TinyStories V2 or the CS336 OpenWebText sample into DEST (default: data/).

    Shows progress, resumes partial files, checks every file's size and SHA-256 against the published ones
    (refused bytes are kept as NAME.rejected) and skips files already complete and verified. To download and
    train in one command: cs336-train pipeline --dataset tinystories (or owt).
    """
    from cs336_train.datasets.download import describe_download, download_dataset, next_command

    say = functools.partial(click.echo, err=True)
    follow_on = next_command(dataset, dest) if not splits or set(splits) == {"train", "valid"} else None
    say(f"downloading {describe_download(dataset, dest, splits or None)}")
    if follow_on:
        say(f"then train on it with: {follow_on}")
    for path in download_dataset(dataset, dest, splits=splits or None, base_url=base_url, log=say):
        click.echo(str(path))
    if follow_on:
        say(f"next: {follow_on}")


@main.command()
@click.option("--dataset", type=click.Choice(["sample", "tinystories", "owt"]), default=None,
              help="What to train on: sample = the TinyStories sample shipped with cs336-train (offline; the "
                   "default); tinystories = TinyStories V2 (2.2 GB), owt = the CS336 OpenWebText sample (4.7 GB "
                   "compressed), downloaded into --data-dir first.")
@click.option("--train-text", type=click.Path(path_type=Path), help="Your own raw training text (UTF-8), instead.")
@click.option("--valid-text", type=click.Path(path_type=Path), help="Your own raw validation text (UTF-8).")
@click.option("--data-dir", default=Path("data"), show_default=True, type=click.Path(path_type=Path),
              help="Where --dataset tinystories/owt downloads to; files already there are verified, not fetched.")
@click.option("--base-url", default=None, envvar="HF_ENDPOINT",
              help="Download from this server instead of huggingface.co (a mirror); also read from $HF_ENDPOINT.")
@click.option("--config", "config_name", default=None,
              help="Model, optimizer and run settings: a TOML file or a bundled name (`cs336-train configs`); "
                   "default tinystories_cpu (owt: owt_course). Its [data] paths are filled in by the pipeline.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run directory (default: runs/tinystories-sample, runs/tinystories or runs/owt by dataset; "
                   "runs/<config>-<time> for your own texts).")
@override_option
@_friendly_errors
def pipeline(dataset: str | None, train_text: Path | None, valid_text: Path | None, data_dir: Path,
             base_url: str | None, config_name: str | None, out: Path | None, overrides: tuple[str, ...]):
    """Raw text to trained model: train a tokenizer, encode, train, evaluate and write samples.

    With no options it trains the CPU default model on the TinyStories sample shipped with cs336-train, offline
    (about 6 minutes on 2 cores). Every input is checked before anything starts.
    """
    from cs336_train.config import TrainConfig
    from cs336_train.config_files import resolve_config
    from cs336_train.errors import ConfigError
    from cs336_train.pipeline import (
        DATASET_RUN_DIRS,
        DOWNLOADABLE,
        SAMPLE,
        check_run_directory,
        check_text,
        dataset_config,
        run_pipeline,
        texts_for,
    )

    own_texts = train_text is not None or valid_text is not None
    if own_texts and (train_text is None or valid_text is None):
        raise ConfigError("give --train-text and --valid-text together (or neither, to train on the bundled sample)")
    if own_texts and dataset is not None:
        raise ConfigError(f"give either --dataset {dataset} or --train-text/--valid-text, not both")
    dataset = None if own_texts else dataset or SAMPLE
    source = click.get_current_context().get_parameter_source("data_dir")
    if dataset not in DOWNLOADABLE and source is click.core.ParameterSource.COMMANDLINE:
        raise ConfigError("--data-dir is where --dataset tinystories or owt downloads to; give it with one of them")

    name, dataset_overrides = dataset_config(dataset or SAMPLE) if config_name is None else (config_name, [])
    config_path = resolve_config(name)
    config = TrainConfig.from_toml(config_path, dataset_overrides + list(overrides) + _placeholder_data(config_path))
    out = out or (DATASET_RUN_DIRS[dataset] if dataset else _default_out(config_path))
    check_run_directory(out)  # before a download of gigabytes, not after
    if dataset is None:
        check_text(train_text, "training")
        check_text(valid_text, "validation")
    say = functools.partial(click.echo, err=True)
    changed = "".join(f" --set {override}" for override in dataset_overrides)
    say(f"pipeline: configuration {config_path.stem}{changed} ({config_path}), run directory {out}")
    started = time.perf_counter()
    if dataset is not None:
        train_text, valid_text = texts_for(dataset, data_dir, base_url, say)
    result = run_pipeline(config, train_text, valid_text, out, say=say)
    _summary(result)
    say(f"pipeline finished in {time.perf_counter() - started:.0f} s; samples in {out / 'samples.txt'}")


@main.command()
@click.argument("name", required=False)
@_friendly_errors
def configs(name: str | None):
    """List the configurations bundled with cs336-train, or print NAME's (to copy and edit).

    Any command that takes a CONFIG takes one of these names as well as a file:
    cs336-train fit tinystories_cpu ..., cs336-train configs tinystories_cpu > my.toml
    """
    from cs336_train.config_files import bundled_configs, describe_config, resolve_config

    if name is not None:
        click.echo(resolve_config(name).read_text(encoding="utf-8"), nl=False)
        return
    bundled = bundled_configs()
    width = max(map(len, bundled))
    for config_name, path in bundled.items():
        click.echo(f"{config_name:<{width}}  {describe_config(path)}")
    click.echo(f"(in {next(iter(bundled.values())).parent}; `cs336-train configs NAME` prints one)", err=True)


@main.command()
@click.argument("experiment_path", metavar="EXPERIMENT.toml", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Sweep directory (default: runs/experiments/<scale>). Experiments may share one: a run of the same "
                   "name and settings is trained once, and report.md covers them all.")
@click.option("--scale", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Which of the experiment's scales: minutes on a laptop CPU, or the handout's runs on a GPU.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runs trained at once, each as its own `python -m cs336_train` process.")
@click.option("--only", multiple=True, metavar="NAME", help="Train only this run (repeatable).")
@click.option("--dry-run", is_flag=True, help="Check the experiment and list its runs; train nothing.")
@_friendly_errors
def sweep(experiment_path: Path, out: Path | None, scale: str, jobs: int, only: tuple[str, ...], dry_run: bool):
    """Train every run of an experiment (see experiments/), then write DIR/report.md.

    Run it again after a Ctrl-C, a crash or a reboot: finished and diverged runs are skipped, an interrupted one
    continues from its newest checkpoint.
    """
    from cs336_train.experiment import load_experiment
    from cs336_train.sweep import describe_plan, run_sweep

    experiment = load_experiment(experiment_path, scale, out)
    if dry_run:
        click.echo("\n".join(describe_plan(experiment, only)))
        return
    run_sweep(experiment, jobs=jobs, only=only, say=lambda line: click.echo(line, err=True))


@main.command()
@click.argument("sweep_dir", metavar="DIR", type=click.Path(path_type=Path))
@_friendly_errors
def report(sweep_dir: Path):
    """Write DIR/report.md and report.json for the sweeps in DIR: the table, figures and samples of each run."""
    from cs336_train.report import write_report

    write_report(sweep_dir, say=lambda line: click.echo(line, err=True))


if __name__ == "__main__":
    main()
