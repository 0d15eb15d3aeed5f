"""`cs336-train sweep` and `report`: experiment files, sweeps that stop and continue, and the report's numbers.

The sweeps here train the tiny model of train_helpers for a few steps on generated stories; every number the
report prints is checked against the run's own metrics.jsonl, not against the report code.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cs336_train import TrainConfig
from cs336_train.cli import main
from cs336_train.errors import ConfigError, Interrupted
from cs336_train.experiment import grid_runs, load_experiment
from cs336_train.metrics import MetricsLog
from cs336_train.sweep import run_sweep
from tests.train_helpers import tiny_config_values, write_stories

pytestmark = pytest.mark.usefixtures("restore_torch_threads")
ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml"))
# 8 steps of 8 sequences x 16 tokens; the third run's rate makes the loss NaN within a few steps.
RUNS = """
[[runs]]
name = "base"

[[runs]]
name = "seed-1"
set = ["run.seed=1"]

[[runs]]
name = "diverges"
set = ["optimizer.lr=1e6", "optimizer.grad_clip=0"]
"""


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("texts")
    values = tiny_config_values({"train": "-", "valid": "-", "tokenizer": ""})
    base = folder / "base.toml"
    base.write_text(TrainConfig.from_dict(values).to_toml(), encoding="utf-8")
    return {"base": base, "train": write_stories(folder / "train.txt", 300, seed=1),
            "valid": write_stories(folder / "valid.txt", 30, seed=2)}


def write_experiment(folder: Path, texts: dict, runs: str = RUNS, scale_extra: str = "", extra: str = "") -> Path:
    path = folder / "tiny.toml"
    path.write_text(f"""
[experiment]
name = "tiny"
problem = "a test"
question = "Does the sweep work?"

[scale.cpu]
base = "{texts['base']}"
set = ["run.log_interval=2"]
tokens = 1024
validations = 2
train_text = "{texts['train']}"
valid_text = "{texts['valid']}"
{scale_extra}

[samples]
prompts = ["the cat"]
max_new_tokens = 5
{extra}
{runs}
""", encoding="utf-8")
    return path


def invoke(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def table_rows(report_md: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in report_md.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells] for cells in rows[1:]}


def test_a_sweep_trains_every_run_and_reports_what_the_runs_logged(texts, tmp_path):
    out = tmp_path / "out"
    result = invoke("sweep", write_experiment(tmp_path, texts), "--out", out)
    assert result.exit_code == 0, result.output

    assert json.loads((out / "runs" / "base" / "result.json").read_text())["status"] == "finished"
    diverged = json.loads((out / "runs" / "diverges" / "result.json").read_text())
    assert diverged["status"] == "diverged" and diverged["diverged_at_step"] >= 1

    rows = table_rows((out / "report.md").read_text())
    assert list(rows) == ["base", "seed-1", "diverges"]
    for name in ("base", "seed-1"):
        logged = records(out / "runs" / name)
        valid = [record["loss"] for record in logged if record["kind"] == "valid"]
        cells = rows[name]
        assert cells[3] == f"{logged[-1]['tokens']:,}" == "1,024"
        assert cells[5] == f"{valid[-1]:.4f}" and cells[6] == f"{min(valid):.4f}"
        last_valid = [record for record in logged if record["kind"] == "valid"][-1]
        assert cells[7] == (f"{last_valid['bits_per_byte']:.4f}" if "bits_per_byte" in last_valid else "—")
        assert cells[8] == "no"
    assert rows["base"][1] == "the base settings" and rows["seed-1"][1] == "run.seed=1"
    assert rows["diverges"][1] == "optimizer.grad_clip=0.0, optimizer.lr=1000000.0"
    assert rows["diverges"][5] == "—" and rows["diverges"][8] == f"at step {diverged['diverged_at_step']}"
    # the parameter count of the tiny model: 2·V·d + L·(4d² + 3·d·d_ff + 2d) + d
    assert rows["base"][2] == f"{2 * 320 * 32 + 2 * (4 * 32**2 + 3 * 32 * 64 + 2 * 32) + 32:,}"

    report_md = (out / "report.md").read_text()
    finals = [[record["loss"] for record in records(out / "runs" / name) if record["kind"] == "valid"][-1]
              for name in ("base", "seed-1")]
    assert f"Run-to-run spread of base, seed-1 (same settings, other run.seed): {abs(finals[0] - finals[1]):.4f}" \
        in report_md
    assert "**diverges**: skipped: diverged at step" in report_md
    assert "the cat" in report_md.split("### Samples of tiny")[1]

    report = json.loads((out / "report.json").read_text())["experiments"][0]
    assert [run["name"] for run in report["runs"]] == ["base", "seed-1", "diverges"]
    assert report["runs"][0]["final_valid_loss"] == pytest.approx(float(rows["base"][5]), abs=1e-4)
    for kind in ("loss", "dynamics"):  # drawn, or the reason why not written into the report
        figure = report["figures"][kind]
        if isinstance(figure, str):
            assert (out / figure).read_bytes().startswith(b"\x89PNG") and f"![{kind}]({figure})" in report_md
        else:
            assert f"{kind} figure: {figure['error']}" in report_md

    # `cs336-train report DIR` writes the same table again from the files alone
    (out / "report.md").unlink()
    again = invoke("report", out)
    assert again.exit_code == 0, again.output
    assert table_rows((out / "report.md").read_text()) == rows

    # a later validation that got worse: the final loss is the last one, the best one stays
    with open(out / "runs" / "base" / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"kind": "valid", "step": 9, "tokens": 1152, "wall_s": 99.0, "loss": 9.5,
                                  "perplexity": 13359.7, "bits_per_byte": 4.25}) + "\n")
    assert invoke("report", out).exit_code == 0
    base = table_rows((out / "report.md").read_text())["base"]
    assert base[3:8] == ["1,152", "99", "9.5000", rows["base"][6], "4.2500"]


def test_an_interrupted_sweep_continues_without_redoing_finished_runs(texts, tmp_path, monkeypatch):
    experiment_path = write_experiment(tmp_path, texts)
    out = tmp_path / "out"
    write = MetricsLog.write

    def interrupt_seed_1(self, record):  # Ctrl-C during the second run, after its first validation
        write(self, record)
        if self.path.parent.name == "seed-1" and record["kind"] == "valid":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(MetricsLog, "write", interrupt_seed_1)
    with pytest.raises(Interrupted) as stopped:
        run_sweep(load_experiment(experiment_path, "cpu", out), say=lambda line: None)
    assert stopped.value.exit_code == 130 and "run the same `cs336-train sweep` command again" in str(stopped.value)
    assert (out / "runs" / "base" / "result.json").is_file()
    assert not (out / "runs" / "seed-1" / "result.json").exists()
    assert list((out / "runs" / "seed-1" / "checkpoints").glob("step_*.pt"))
    assert not (out / "runs" / "diverges").exists()

    monkeypatch.setattr(MetricsLog, "write", write)
    finished = {path: path.stat().st_mtime_ns for path in (out / "runs" / "base").rglob("*") if path.is_file()}
    trained = run_sweep(load_experiment(experiment_path, "cpu", out), say=lambda line: None)
    assert [run.name for run in trained] == ["seed-1", "diverges"]
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # the finished run was not touched
    steps = [record["step"] for record in records(out / "runs" / "seed-1") if record["kind"] == "train"]
    assert steps[-1] == 8 and len(steps) == len(set(steps))  # continued from its checkpoint, not from step 0
    assert json.loads((out / "runs" / "seed-1" / "result.json").read_text())["status"] == "finished"


def test_only_trains_the_named_runs_and_the_report_lists_the_others(texts, tmp_path):
    out = tmp_path / "out"
    result = invoke("sweep", write_experiment(tmp_path, texts), "--out", out, "--only", "seed-1")
    assert result.exit_code == 0, result.output
    assert [path.name for path in (out / "runs").iterdir()] == ["seed-1"]
    rows = table_rows((out / "report.md").read_text())
    assert rows["base"][8] == "not trained" and rows["base"][5] == "—" and rows["seed-1"][8] == "no"

    unknown = invoke("sweep", write_experiment(tmp_path, texts), "--out", out, "--only", "nope")
    assert unknown.exit_code == 1 and "no such run in tiny; its runs are base, seed-1, diverges" in unknown.output


def test_a_grid_expands_to_every_combination_named_from_its_values(texts, tmp_path):
    assert grid_runs("x", {"optimizer.lr": [1e-3, 2e-3], "run.seed": [0, 1]}) == [
        ("lr-0.001_seed-0", ["optimizer.lr=0.001", "run.seed=0"]),
        ("lr-0.001_seed-1", ["optimizer.lr=0.001", "run.seed=1"]),
        ("lr-0.002_seed-0", ["optimizer.lr=0.002", "run.seed=0"]),
        ("lr-0.002_seed-1", ["optimizer.lr=0.002", "run.seed=1"]),
    ]
    runs = '[[runs]]\nname = "base"\n\n[grid]\n"model.norm" = ["layernorm", "none"]\n"model.tie_embeddings" = [true]\n'
    experiment = load_experiment(write_experiment(tmp_path, texts, runs=runs), "cpu", tmp_path / "out")
    assert [run.name for run in experiment.runs] == ["base", "norm-layernorm_tie_embeddings-true",
                                                     "norm-none_tie_embeddings-true"]
    assert experiment.runs[2].config.model.norm == "none" and experiment.runs[2].config.model.tie_embeddings


def test_the_scale_derives_steps_and_intervals_and_each_vocabulary_gets_its_data(texts, tmp_path):
    runs = '[[runs]]\nname = "big-batch"\nset = ["run.batch_size=16"]\n\n[[runs]]\nname = "bytes"\n' \
           'set = ["model.vocab_size=257"]\n'
    experiment = load_experiment(write_experiment(tmp_path, texts, runs=runs), "cpu", tmp_path / "out")
    big, byte_level = experiment.runs
    assert (big.config.run.steps, big.config.run.eval_interval) == (4, 2)  # 1024 tokens / (16 x 16)
    assert (byte_level.config.run.steps, byte_level.config.run.eval_interval) == (8, 4)
    assert byte_level.config.data.train == str(tmp_path / "out" / "data" / "vocab-257" / "train.bin")
    assert big.config.data.tokenizer == str(tmp_path / "out" / "data" / "vocab-320" / "tokenizer")
    assert big.fit_command(experiment.base, Path("R"))[:4] == ["fit", str(experiment.base), "--out", "R"]


@pytest.mark.parametrize(("change", "message"), [
    ({"extra": "[experiment.extra]\nkey = 1"}, "unknown keys ['extra']; valid ones are ['name', 'problem', "),
    ({"scale_extra": "stepz = 3"}, "[scale.cpu]: unknown keys ['stepz']"),
    ({"runs": '[[runs]]\nname = "a"\nset = ["optimizer.lrr=1"]'}, "run 'a': unknown optimizer settings ['lrr']"),
    ({"runs": '[[runs]]\nname = "a"\nset = ["run.steps=3"]'}, "run 'a' sets run.steps, but its scale fixes tokens"),
    ({"runs": '[[runs]]\nname = "a"\nset = ["model.d_model=31"]'}, "run 'a': model.d_model 31 must be divisible"),
    ({"runs": '[[runs]]\nname = "a/b"'}, "run name 'a/b' must be letters, digits"),
    ({"runs": '[[runs]]\nname = "a"\n[[runs]]\nname = "a"'}, "two runs are named 'a'"),
])
def test_a_bad_experiment_file_is_one_line_and_exit_status_1(texts, tmp_path, change, message):
    result = invoke("sweep", write_experiment(tmp_path, texts, **change), "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert message in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_missing_text_and_a_run_directory_with_other_settings_are_refused_before_training(texts, tmp_path):
    missing = dict(texts, valid=tmp_path / "nowhere.txt")
    result = invoke("sweep", write_experiment(tmp_path, missing), "--out", tmp_path / "out")
    assert result.exit_code == 1 and "valid_text" in result.output and "does not exist" in result.output
    assert not (tmp_path / "out" / "runs").exists()

    out = tmp_path / "shared"
    first = invoke("sweep", write_experiment(tmp_path, texts), "--out", out, "--only", "base")
    assert first.exit_code == 0, first.output
    changed = RUNS.replace('name = "base"', 'name = "base"\nset = ["optimizer.lr=5e-3"]')
    second = invoke("sweep", write_experiment(tmp_path, texts, runs=changed), "--out", out)
    assert second.exit_code == 1 and len(second.output.strip().splitlines()) == 1
    assert "holds a run trained with other settings (optimizer.lr: 0.01 -> 0.005)" in second.output
    assert not (out / "runs" / "seed-1").exists()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda path: path.stem)
@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_every_experiment_file_resolves_at_both_scales(path, scale, tmp_path):
    try:
        experiment = load_experiment(path, scale, tmp_path)
    except ConfigError as error:  # an experiment without this scale says why, in one line
        assert scale == "cpu" and path.stem in ("main_experiment", "leaderboard"), error
        assert f"{path.stem} has no cpu scale: " in str(error) and "\n" not in str(error)
        return
    assert experiment.name == path.stem and experiment.question and experiment.problem
    for run in experiment.runs:
        config = run.config
        tokens = config.run.steps * config.run.batch_size * config.model.context_length
        if scale == "cpu":
            assert experiment.base.name == "tinystories_cpu.toml"
            assert (config.model.d_model, config.model.num_layers) == (256, 4)
            assert tokens >= 1_048_576 and 2 <= config.run.steps // config.run.eval_interval <= 8, run.name
            assert experiment.train_text.parts[-2:] == ("tinystories", "train.txt")
        if path.stem not in ("main_experiment", "leaderboard", "batch_size"):
            assert experiment.runs[0].name == "base"  # every ablation compares against the base run


def test_the_base_run_is_the_same_in_every_experiment_so_a_shared_out_trains_it_once(tmp_path):
    bases = {}
    for path in EXPERIMENTS:
        for scale in ("cpu", "gpu"):
            try:
                experiment = load_experiment(path, scale, tmp_path)
            except ConfigError:
                continue
            for run in experiment.runs:
                bases.setdefault((scale, run.name), {})[path.stem] = run.config.to_dict()
    for (scale, name), configs in bases.items():
        first = next(iter(configs.values()))
        assert all(config == first for config in configs.values()), (scale, name, list(configs))
    assert len(bases[("cpu", "base")]) >= 8


@pytest.mark.slow
def test_a_killed_sweep_continues_and_parallel_jobs_give_the_same_results(texts, tmp_path):
    experiment_path = write_experiment(tmp_path, texts, runs=RUNS + '[[runs]]\nname = "seed-2"\nset = ["run.seed=2"]\n')
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cs336_train", "sweep", str(experiment_path), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (out / "runs" / "seed-1" / "config.toml").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # base has ended, seed-1 has started: no cleanup code runs
    process.wait()
    assert (out / "runs" / "base" / "result.json").is_file() and not (out / "runs" / "seed-2").exists()
    first_result = (out / "runs" / "base" / "result.json").read_bytes()
    finished_mtime = (out / "runs" / "base" / "metrics.jsonl").stat().st_mtime_ns

    resumed = subprocess.run(command + ["--jobs", "2"], capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr
    assert "base: already finished" in resumed.stderr
    assert "sweep: seed-2: started" in resumed.stderr and "sweep: diverges: started" in resumed.stderr
    assert (out / "runs" / "base" / "result.json").read_bytes() == first_result
    assert (out / "runs" / "base" / "metrics.jsonl").stat().st_mtime_ns == finished_mtime
    for name in ("seed-1", "seed-2"):
        assert json.loads((out / "runs" / name / "result.json").read_text())["status"] == "finished"
    diverged = json.loads((out / "runs" / "diverges" / "result.json").read_text())
    assert diverged["status"] == "diverged" and diverged["diverged_at_step"] >= 1
    assert "the training loss became" in (out / "runs" / "diverges" / "train.log").read_text()
    rows = table_rows((out / "report.md").read_text())
    assert rows["seed-1"][8] == "no" and rows["diverges"][8] == f"at step {diverged['diverged_at_step']}"


def test_data_paths_fall_back_to_the_bundled_sample_on_a_fresh_machine(tmp_path, monkeypatch):
    from cs336_train.datasets.bundled import SAMPLE_SHA256
    from cs336_train.experiment import resolve_path

    monkeypatch.delenv("CS336_DATA", raising=False)
    monkeypatch.setenv("CS336_CACHE", str(tmp_path / "cache"))
    fresh_clone = tmp_path / "clone" / "project"  # no ../shared beside it
    fresh_clone.mkdir(parents=True)
    train = resolve_path("$CS336_DATA/tinystories/train.txt", fresh_clone)
    valid = resolve_path("$CS336_DATA/tinystories/valid.txt", fresh_clone)
    assert hashlib.sha256(train.read_bytes()).hexdigest() == SAMPLE_SHA256["train"]
    assert hashlib.sha256(valid.read_bytes()).hexdigest() == SAMPLE_SHA256["valid"]
    # other files under $CS336_DATA have no stand-in: they resolve to the usual place (and fail there, clearly)
    assert resolve_path("$CS336_DATA/owt/owt_valid_sample.txt", fresh_clone) == \
        (tmp_path / "clone" / "shared" / "data" / "owt" / "owt_valid_sample.txt")
    # with ../shared/data or CS336_DATA present, nothing changes
    monkeypatch.setenv("CS336_DATA", str(tmp_path / "mine"))
    mine = tmp_path / "mine" / "tinystories" / "train.txt"
    assert resolve_path("$CS336_DATA/tinystories/train.txt", fresh_clone) == mine
