"""cs336_train.plot: reading metrics.jsonl (resumes, cut-short lines) and drawing the two-panel loss figure."""

import builtins
import json
from pathlib import Path

import pytest

from cs336_train.plot import MetricsWarning, PlotError, draw_figure, ema, load_metrics, plot_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _train(step: int, loss: float, wall_s: float | None = None) -> dict:
    return {"kind": "train", "step": step, "tokens": step * 8192, "wall_s": step * 0.5 if wall_s is None else wall_s,
            "loss": loss, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 16384.0, "mfu": 0.1}


def _valid(step: int, loss: float, wall_s: float | None = None) -> dict:
    return {"kind": "valid", "step": step, "tokens": step * 8192, "wall_s": step * 0.5 + 0.1 if wall_s is None
            else wall_s, "loss": loss, "perplexity": 2.718281828 ** loss}


def _write_run(directory: Path, records: list[dict], tail: str = "") -> Path:
    directory.mkdir(parents=True)
    text = "".join(json.dumps(record) + "\n" for record in records) + tail
    (directory / "metrics.jsonl").write_text(text, encoding="utf-8")
    return directory


def _steady_run(directory: Path, scale: float) -> Path:
    records = []
    for step in range(10, 101, 10):
        records.append(_train(step, scale * 10 / step))
        if step % 50 == 0:
            records.append(_valid(step, scale * 11 / step))
    records.append({"kind": "config", "step": 0})  # other kinds are ignored
    return _write_run(directory, records)


def test_load_metrics_splits_kinds_in_step_order(tmp_path):
    run = load_metrics(_steady_run(tmp_path / "lr-1e-3", scale=1.0))
    assert run.name == "lr-1e-3"
    steps, losses = run.series("train", "step")
    assert steps == list(range(10, 101, 10))
    assert losses == pytest.approx([10 / step for step in steps])
    assert run.series("valid", "wall_s") == ([25.1, 50.1], [pytest.approx(11 / 50), pytest.approx(11 / 100)])


def test_a_resumed_run_keeps_the_last_record_per_step_and_drops_the_abandoned_tail(tmp_path):
    # Killed after step 40 with a checkpoint at step 20: steps 30 and 40 run again (the second time with other
    # losses), and the first run's valid record at step 40 belongs to the abandoned timeline.
    records = [_train(10, 5.0), _train(20, 4.0), _valid(20, 4.1), _train(30, 3.0), _train(40, 2.0), _valid(40, 2.1),
               _train(30, 3.5, wall_s=15.0), _valid(30, 3.6)]
    run = load_metrics(_write_run(tmp_path / "resumed", records))
    assert run.series("train", "step") == ([10, 20, 30], [5.0, 4.0, 3.5])
    assert run.series("valid", "step") == ([20, 30], [4.1, 3.6])


def test_a_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    run_dir = _write_run(tmp_path / "killed", [_train(10, 5.0), _train(20, 4.0)], tail='{"kind": "train", "st')
    with pytest.warns(MetricsWarning, match=r"metrics\.jsonl:3: skipping a malformed or partial record"):
        run = load_metrics(run_dir)
    assert run.series("train", "step") == ([10, 20], [5.0, 4.0])


def test_a_missing_metrics_file_or_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(PlotError, match=r"metrics\.jsonl not found.*not a run directory"):
        load_metrics(tmp_path / "empty-run")
    with pytest.raises(PlotError, match=r"'.*nowhere' does not exist"):
        plot_runs([tmp_path / "nowhere"], tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_a_metrics_file_without_records_is_a_clear_error(tmp_path):
    run_dir = _write_run(tmp_path / "fresh", [{"kind": "config", "step": 0}], tail="\n")
    with pytest.raises(PlotError, match=r"no train or valid records yet"):
        load_metrics(run_dir)


def test_the_figure_holds_each_runs_curves_against_steps_and_wall_clock(tmp_path):
    runs = [load_metrics(_steady_run(tmp_path / "a", 1.0)), load_metrics(_steady_run(tmp_path / "b", 2.0))]
    figure = draw_figure(runs)
    by_step, by_time = figure.axes
    assert [line.get_label() for line in by_step.lines] == ["a train", "a valid", "b train", "b valid"]
    b_train, b_valid = by_step.lines[2], by_step.lines[3]
    assert list(b_train.get_xdata()) == list(range(10, 101, 10))
    assert list(b_train.get_ydata()) == pytest.approx([20 / step for step in range(10, 101, 10)])
    assert b_valid.get_marker() == "o" and list(b_valid.get_xdata()) == [50, 100]
    assert list(by_time.lines[0].get_xdata()) == pytest.approx([step * 0.5 for step in range(10, 101, 10)])
    assert by_time.get_xlabel() == "wall-clock training time (s)"


def test_smoothing_draws_the_average_over_a_faint_raw_curve():
    assert ema([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])  # debiased: no ramp up from 0
    assert ema([4.0, 2.0], 0.0) == [4.0, 2.0]
    with pytest.raises(PlotError, match="smoothing must be in"):
        ema([1.0], 1.0)


def test_plot_runs_writes_a_png_atomically(tmp_path):
    run_dirs = [_steady_run(tmp_path / "runs" / "a", 1.0), _steady_run(tmp_path / "runs" / "b", 2.0)]
    out = tmp_path / "plots" / "compare.png"
    assert plot_runs(run_dirs, out, smoothing=0.6, log_loss=True, title="lr sweep") == out
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert [path.name for path in out.parent.iterdir()] == ["compare.png"]  # no temporary file left


def test_plot_runs_needs_a_png_name_and_at_least_one_run(tmp_path):
    run_dir = _steady_run(tmp_path / "a", 1.0)
    with pytest.raises(PlotError, match=r"must be a \.png file"):
        plot_runs([run_dir], tmp_path / "out.pdf")
    with pytest.raises(PlotError, match="no run directories given"):
        plot_runs([], tmp_path / "out.png")


def test_missing_matplotlib_gives_the_install_hint(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def import_without_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_without_matplotlib)
    with pytest.raises(PlotError, match=r'pip install "cs336-train\[plot\]".*uv sync'):
        plot_runs([_steady_run(tmp_path / "a", 1.0)], tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
