"""`cs336-train report DIR`: the experiment log of a sweep directory, as DIR/report.md and DIR/report.json.

One section per experiment swept into DIR (sweep.py), each with:

    | run | settings (vs base) | parameters | tokens | train s | final valid | best valid | bits/byte | diverged |
    the run-to-run spread of runs that differ only in run.seed (differences below it are noise)
    figures/<experiment>-loss.png and -dynamics.png (cs336_train.plot)
    a few samples from each trained run (cs336_sample; fixed seed, so reruns give the same text)

Every number in the table comes from the run's own files (metrics.jsonl, result.json), never from memory of the
sweep, so a report written a week later, or by another machine, says the same. A figure or a sample that fails is
written into the report as an error line: the table is never lost to it.
"""

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cs336_bpe import atomic_write
from cs336_nn import ModelConfig, count_parameters
from cs336_train.plot import PlotError, load_metrics
from cs336_train.sweep_records import read_records, read_result

MISSING = "—"
FIGURES = ("loss", "dynamics")


@dataclass
class RunRow:
    """One line of the table. None = not measured (not trained yet, diverged before validating, ...)."""

    name: str
    settings: str  # what differs from the experiment's base settings
    status: str  # finished | diverged | interrupted | not trained
    parameters: int
    tokens: int | None = None
    train_seconds: float | None = None
    final_valid_loss: float | None = None
    best_valid_loss: float | None = None
    bits_per_byte: float | None = None
    diverged_at_step: int | None = None


def write_report(out_dir: str | Path, say: Callable[[str], None] = print) -> Path:
    """Write DIR/report.md and DIR/report.json for every experiment in DIR; returns the report.md path."""
    out_dir = Path(out_dir)
    sampled: dict[str, list | str] = {}  # a run shared by experiments is sampled once per settings
    sections = [experiment_section(record, out_dir, sampled, say) for record in read_records(out_dir)]
    with atomic_write(out_dir / "report.json", "w", encoding="utf-8") as handle:
        json.dump({"experiments": sections}, handle, indent=1)
    path = out_dir / "report.md"
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(f"# Experiment log: {out_dir.name}\n\n")
        handle.write("\n".join(markdown_section(section) for section in sections))
    say(f"report: {path}")
    return path


def experiment_section(record: dict, out_dir: Path, sampled: dict, say: Callable[[str], None]) -> dict:
    """The data of one experiment's section (also what report.json holds for it)."""
    run_dirs = [out_dir / "runs" / run["name"] for run in record["runs"]]
    rows = [run_row(run, run_dir) for run, run_dir in zip(record["runs"], run_dirs)]
    figures = draw_figures(record, [d for d in run_dirs if (d / "metrics.jsonl").is_file()], out_dir, say)
    samples = {row.name: sample_run(run_dir, row, record["samples"], sampled) for row, run_dir in zip(rows, run_dirs)}
    return {key: record[key] for key in ("name", "problem", "question", "scale", "source", "base")} | {
        "samples_settings": record["samples"], "runs": [asdict(row) for row in rows],
        "seed_groups": seed_groups(record["runs"], rows), "figures": figures, "samples": samples}


def run_row(run: dict, run_dir: Path) -> RunRow:
    """The table row of one run, from its metrics.jsonl and result.json."""
    row = RunRow(run["name"], run["settings"], "not trained",
                 count_parameters(ModelConfig.from_dict(run["config"]["model"])))
    result = read_result(run_dir)
    try:
        metrics = load_metrics(run_dir)
    except PlotError:  # no metrics yet: never started, or stopped before its first log line
        metrics = None
    if metrics is not None:
        row.status = "interrupted"  # until result.json says how it ended
        last = max(metrics.train + metrics.valid, key=lambda record: (record["step"], record["wall_s"]))
        row.tokens, row.train_seconds = last.get("tokens"), last["wall_s"]
        finite = [record for record in metrics.valid if math.isfinite(record["loss"])]
        if finite:
            row.best_valid_loss = min(record["loss"] for record in finite)
            row.final_valid_loss, row.bits_per_byte = finite[-1]["loss"], finite[-1].get("bits_per_byte")
    if result is not None:
        row.status = result["status"]
        row.diverged_at_step = result.get("diverged_at_step")
        if row.status == "diverged":
            row.final_valid_loss = row.bits_per_byte = None  # a validation before the divergence is not an end
    return row


def seed_groups(runs: list[dict], rows: list[RunRow]) -> list[dict]:
    """Runs whose settings are equal but for run.seed, with the spread (max - min) of their final validation loss.

    The spread is how much two runs differ by chance alone: a setting that changes the loss by less proves nothing.
    """
    groups: dict[str, list[RunRow]] = {}
    for run, row in zip(runs, rows):
        config = {section: dict(table) for section, table in run["config"].items()}
        config["run"] = {key: value for key, value in config["run"].items() if key != "seed"}
        groups.setdefault(json.dumps(config, sort_keys=True), []).append(row)
    result = []
    for members in groups.values():
        losses = [row.final_valid_loss for row in members if row.final_valid_loss is not None]
        if len(members) > 1:
            result.append({"runs": [row.name for row in members],
                           "spread": max(losses) - min(losses) if len(losses) > 1 else None})
    return result


def draw_figures(record: dict, run_dirs: list[Path], out_dir: Path, say: Callable[[str], None]) -> dict:
    """{"loss": "figures/x-loss.png" or {"error": "..."}, "dynamics": ...}; redrawn only when a run logged since."""
    from cs336_train import plot

    title = f"{record['name']} ({record['scale']} scale)"
    draw = {"loss": lambda png: plot.plot_runs(run_dirs, png, smoothing=0.0, log_loss=False, x_axis="tokens",
                                               title=title),
            "dynamics": lambda png: plot.plot_dynamics(run_dirs, png, x_axis="tokens", title=title)}
    figures = {}
    for kind in FIGURES:
        relative = Path("figures") / f"{record['name']}-{kind}.png"
        png = out_dir / relative
        if not run_dirs:
            figures[kind] = {"error": "no run has logged yet"}
            continue
        newest_input = max((d / "metrics.jsonl").stat().st_mtime for d in run_dirs)
        newest_input = max(newest_input, (out_dir / "experiments" / f"{record['name']}.json").stat().st_mtime)
        if png.is_file() and png.stat().st_mtime > newest_input:
            figures[kind] = str(relative)
            continue
        try:
            draw[kind](png)
            figures[kind] = str(relative)
        except Exception as error:  # any failure to draw must leave the table and the report intact
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            say(f"report: the {kind} figure of {record['name']} failed: {message}")
            figures[kind] = {"error": message}
    return figures


def sample_run(run_dir: Path, row: RunRow, settings: dict, sampled: dict) -> list[dict] | str:
    """[{"prompt", "text"}] from the run's newest checkpoint, or why there are none (a string)."""
    if row.status == "diverged":
        return f"skipped: diverged at step {row.diverged_at_step}"
    if not (run_dir / "checkpoints").is_dir() or not any((run_dir / "checkpoints").glob("*.pt")):
        return "skipped: no checkpoint yet"
    key = f"{run_dir}|{json.dumps(settings, sort_keys=True)}"
    if key not in sampled:
        sampled[key] = _generate(run_dir, settings)
    return sampled[key]


def _generate(run_dir: Path, settings: dict) -> list[dict] | str:
    try:
        from cs336_sample import generate, load_model_and_tokenizer

        model, tokenizer, _ = load_model_and_tokenizer(run_dir, device="cpu")
        completions = generate(model, tokenizer, list(settings["prompts"]), max_new_tokens=settings["max_new_tokens"],
                               temperature=settings["temperature"], top_p=settings["top_p"], seed=settings["seed"])
    except ImportError:
        return 'skipped: samples need cs336-sample (pip install "cs336-train[sample]")'
    except Exception as error:  # a run that cannot be sampled must not cost the report
        return f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return [{"prompt": prompt, "text": prompt + completion.text}
            for prompt, completion in zip(settings["prompts"], completions, strict=True)]


# ---- Markdown ---------------------------------------------------------------------------------------------------

COLUMNS = ("run", "settings (vs base)", "parameters", "tokens", "train s", "final valid loss", "best valid loss",
           "valid bits/byte", "diverged")


def markdown_section(section: dict) -> str:
    lines = [f"## {section['name']}", ""]
    if section["problem"]:
        lines.append(f"Problem: {section['problem']}  ")
    if section["question"]:
        lines.append(f"Question: {section['question']}  ")
    lines += [f"Scale: {section['scale']} (base {section['base']}; experiment {section['source']})", "",
              "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_cells(RunRow(**run))) + " |" for run in section["runs"]]
    lines.append("")
    for group in section["seed_groups"]:
        spread = f"{group['spread']:.4f}" if group["spread"] is not None else f"{MISSING} (not all finished)"
        lines.append(f"Run-to-run spread of {', '.join(group['runs'])} (same settings, other run.seed): {spread} in "
                     "final validation loss; differences smaller than this are noise.  ")
    lines.append("")
    for kind, figure in section["figures"].items():
        lines.append(f"![{kind}]({figure})" if isinstance(figure, str) else f"{kind} figure: {figure['error']}")
        lines.append("")
    settings = section["samples_settings"]
    lines += [f"### Samples of {section['name']}", "",
              f"temperature {settings['temperature']}, top-p {settings['top_p']}, seed {settings['seed']}, up to "
              f"{settings['max_new_tokens']} new tokens", ""]
    for name, samples in section["samples"].items():
        if isinstance(samples, str):
            lines += [f"**{name}**: {samples}", ""]
            continue
        lines += [f"**{name}**", ""]
        for sample in samples:  # a fence inside the text would end the block early
            lines += ["```text", sample["text"].replace("```", "'''"), "```", ""]
    return "\n".join(lines)


def table_cells(row: RunRow) -> list[str]:
    def number(value, form: str) -> str:
        return MISSING if value is None else format(value, form)

    diverged = (f"at step {row.diverged_at_step}" if row.status == "diverged"
                else "no" if row.status == "finished" else row.status)
    return [row.name, row.settings.replace("|", "\\|"), f"{row.parameters:,}", number(row.tokens, ","),
            number(row.train_seconds, ".0f"), number(row.final_valid_loss, ".4f"), number(row.best_valid_loss, ".4f"),
            number(row.bits_per_byte, ".4f"), diverged]
