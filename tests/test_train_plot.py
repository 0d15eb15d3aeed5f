"""cs336_train.plot: reading metrics.jsonl (resumes, cut-short lines), the loss figure and the dynamics figure."""

import builtins
import json
import math
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

import cs336_train.plot
from cs336_train.cli import main
from cs336_train.plot import (
    MetricsWarning,
    PlotError,
    draw_dynamics,
    draw_figure,
    ema,
    load_metrics,
    plot_dynamics,
    plot_runs,
)

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


# ---------------------------------------------------------------------------------------------------------------
# x axis, title, one legend, the uniform-guess line (records as the trainer writes them, step 1 included)

def _run_with_batch(directory: Path, tokens_per_step: int, config: str | None = None) -> Path:
    records = [{**_train(step, 9.0 / step**0.3), "tokens": step * tokens_per_step} for step in (1, 10, 20, 30)]
    records.append({**_valid(30, 3.5), "tokens": 30 * tokens_per_step})
    run_dir = _write_run(directory, records)
    if config is not None:
        (run_dir / "config.toml").write_text(config, encoding="utf-8")
    return run_dir


def test_x_axis_tokens_draws_each_run_against_the_tokens_it_logged(tmp_path):
    runs = [load_metrics(_run_with_batch(tmp_path / "batch8", 2048)),
            load_metrics(_run_with_batch(tmp_path / "batch32", 8192))]
    figure = draw_figure(runs, x_axis="tokens")
    by_tokens, by_time = figure.axes
    assert by_tokens.get_xlabel() == "training tokens seen"
    assert list(by_tokens.lines[0].get_xdata()) == [2048, 20480, 40960, 61440]
    assert list(by_tokens.lines[2].get_xdata()) == [8192, 81920, 163840, 245760]
    assert list(by_tokens.lines[3].get_xdata()) == [245760]  # batch32's validation
    assert by_time.get_xlabel() == "wall-clock training time (s)"  # the cost panel stays


def test_x_axis_wall_clock_is_one_panel_and_other_axes_are_refused(tmp_path):
    runs = [load_metrics(_run_with_batch(tmp_path / "a", 2048))]
    (by_time,) = draw_figure(runs, x_axis="wall_s").axes
    assert list(by_time.lines[0].get_xdata()) == pytest.approx([0.5, 5.0, 10.0, 15.0])
    with pytest.raises(PlotError, match=r"x_axis must be one of steps, tokens, wall_s, got 'epochs'"):
        draw_figure(runs, x_axis="epochs")


def test_the_uniform_guess_line_sits_at_ln_vocab_and_step_1_is_in_view(tmp_path):
    with_config = _run_with_batch(tmp_path / "a", 2048, config="[model]\nvocab_size = 10000\n")
    figure = draw_figure([load_metrics(with_config)])
    for axes in figure.axes:
        (guess,) = [line for line in axes.lines if line.get_label().startswith("uniform guess")]
        assert list(guess.get_ydata()) == pytest.approx([math.log(10000)] * 2)
        assert axes.get_ylim()[0] < 9.0 < math.log(10000) < axes.get_ylim()[1]  # step 1's loss, and the line
    by_step = figure.axes[0]
    assert by_step.get_xlim()[0] == 0 and by_step.lines[0].get_xdata()[0] == 1
    # No config.toml, or one without model.vocab_size or not TOML at all: no line, and no complaint.
    (tmp_path / "c").mkdir()
    for name, config in (("b", None), ("c/d", "[run]\nsteps = 3\n"), ("e", "not = [toml")):
        run = load_metrics(_run_with_batch(tmp_path / name, 2048, config=config))
        labels = [line.get_label() for axes in draw_figure([run]).axes for line in axes.lines]
        assert not any(label.startswith("uniform guess") for label in labels)


def test_the_figure_has_one_legend_and_the_title(tmp_path):
    runs = [load_metrics(_steady_run(tmp_path / "a", 1.0)), load_metrics(_steady_run(tmp_path / "b", 2.0))]
    figure = draw_figure(runs, smoothing=0.9, title="lr sweep")
    assert figure.get_suptitle() == "lr sweep"
    assert [axes.get_legend() for axes in figure.axes] == [None, None]
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["a train", "a valid", "b train", "b valid"]


# ---------------------------------------------------------------------------------------------------------------
# The dynamics figure, from "stats" records as the trainer writes them

GROUPS = ["token_embeddings", "layers.0.attn", "layers.0.ffn", "layers.0.norms", "layers.1.attn", "layers.1.ffn",
          "layers.1.norms", "ln_final", "lm_head"]


def _stats(step: int, scale: float = 1.0, tokens_per_step: int = 8192, groups: list[str] = GROUPS) -> dict:
    """Group number n = GROUPS.index + 1 has grad norm 0.1 n, weight norm 9 + n + step, update ratio 1e-3 n."""
    number = {group: GROUPS.index(group) + 1 for group in groups}
    return {"kind": "stats", "step": step, "tokens": step * tokens_per_step, "wall_s": step * 0.5, "lr": 1e-3,
            "grad_norm": {group: scale * 0.1 * number[group] for group in groups},
            "weight_norm": {group: 9.0 + number[group] + step for group in groups},
            "update_ratio": {group: scale * 1e-3 * number[group] for group in groups},
            "activation_rms": {"layers.0": 1.0 + step / 100, "layers.1": 2.0 + step / 100},
            "attention_entropy": {"layers.0": 4.0 - step / 100, "layers.1": 3.0 - step / 100}}


def _dynamics_run(directory: Path, scale: float, tokens_per_step: int = 8192, stats: bool = True,
                  groups: list[str] = GROUPS) -> Path:
    records = []
    for step in (1, 20, 40):
        if stats:  # the trainer writes a step's stats before its train record
            records.append(_stats(step, scale, tokens_per_step, groups))
        records.append({**_train(step, 9.0 / step**0.3), "tokens": step * tokens_per_step,
                        "grad_norm": scale / step, "lr": 1e-4 * step})
    return _write_run(directory, records)


def _panels(figure) -> dict:
    return {axes.get_title() or axes.get_ylabel(): axes for axes in figure.axes}


def _update_ratio(step: int, numbers: list[int], scale: float = 1.0) -> float:
    """||changes|| / ||weights|| of the groups numbered `numbers` (as _stats writes them), by hand."""
    weights = [9.0 + number + step for number in numbers]
    changes = [scale * 1e-3 * number * weight for number, weight in zip(numbers, weights)]
    return math.sqrt(sum(change**2 for change in changes)) / math.sqrt(sum(weight**2 for weight in weights))


def test_a_resume_drops_the_abandoned_stats_records(tmp_path):
    records = [_stats(20), _train(20, 4.0), _stats(40), _train(40, 2.0), _train(30, 3.5, wall_s=15.0)]
    run = load_metrics(_write_run(tmp_path / "resumed", records))
    assert [record["step"] for record in run.stats] == [20]


def test_plot_dynamics_draws_every_block_of_each_run_with_its_values(tmp_path):
    run_a = _dynamics_run(tmp_path / "a", scale=1.0)
    (run_a / "config.toml").write_text("[model]\ncontext_length = 64\n[optimizer]\ngrad_clip = 1.0\n")
    no_norms = [group for group in GROUPS if not group.endswith("norms")]  # model.norm = "none"
    run_b = _dynamics_run(tmp_path / "b", scale=2.0, groups=no_norms)
    figure = draw_dynamics([load_metrics(run_a), load_metrics(run_b)], title="norms")
    panels = _panels(figure)
    assert figure.get_suptitle() == "norms"

    global_norm = panels["global gradient norm (solid, pre-clip) and learning rate (dotted)"]
    assert [list(line.get_ydata()) for line in global_norm.lines[:2]] == [[1.0, 1 / 20, 1 / 40], [2.0, 2 / 20, 2 / 40]]
    assert global_norm.lines[2].get_label() == "gradient clip at 1" and list(global_norm.lines[2].get_ydata()) == [1, 1]
    assert [list(line.get_ydata()) for line in panels["learning rate"].lines] == [[1e-4, 2e-3, 4e-3]] * 2

    by_block = ["a input", "a layers.0", "a layers.1", "a output", "b input", "b layers.0", "b layers.1", "b output"]
    gradient = panels["gradient norm per block"]
    assert [line.get_label() for line in gradient.lines] == by_block
    assert list(gradient.lines[1].get_xdata()) == [1, 20, 40]
    assert list(gradient.lines[1].get_ydata()) == pytest.approx([math.sqrt(0.2**2 + 0.3**2 + 0.4**2)] * 3)
    assert list(gradient.lines[3].get_ydata()) == pytest.approx([math.sqrt(0.8**2 + 0.9**2)] * 3)
    assert list(gradient.lines[5].get_ydata()) == pytest.approx([2 * math.sqrt(0.2**2 + 0.3**2)] * 3)  # no norms
    weight = panels["weight norm per block"]
    assert list(weight.lines[2].get_ydata()) == pytest.approx(
        [math.sqrt(sum((9.0 + number + step) ** 2 for number in (5, 6, 7))) for step in (1, 20, 40)])
    updates = panels["update / weight norm per step, per block"]
    assert updates.get_yscale() == "log"
    assert list(updates.lines[1].get_ydata()) == pytest.approx([_update_ratio(step, [2, 3, 4]) for step in (1, 20, 40)])
    assert list(updates.lines[0].get_ydata()) == pytest.approx([1e-3] * 3)  # one group: its own ratio
    activations = panels["activation RMS of each block's output"]
    assert [line.get_label() for line in activations.lines] == ["a layers.0", "a layers.1", "b layers.0", "b layers.1"]
    assert list(activations.lines[1].get_ydata()) == pytest.approx([2.01, 2.2, 2.4])
    entropy = panels["attention entropy per layer (nats)"]
    assert list(entropy.lines[0].get_ydata()) == pytest.approx([3.99, 3.8, 3.6])
    (uniform,) = [line for line in entropy.lines if line.get_label().startswith("uniform attention")]
    assert list(uniform.get_ydata()) == pytest.approx([math.lgamma(65) / 64] * 2)  # mean of ln(1..64)

    # Colour tells the run, shade the depth: a's four blocks are four shades, lighter near the input.
    colors = [line.get_color() for line in gradient.lines[:4]]
    assert len(set(colors)) == 4 and sum(colors[0]) > sum(colors[3])
    assert [axes.get_legend() for axes in figure.axes] == [None] * len(figure.axes) and len(figure.legends) == 1


def test_with_many_runs_each_panel_draws_one_line_per_run_and_runs_without_stats_are_absent(tmp_path):
    run_dirs = [_dynamics_run(tmp_path / "a", 1.0), _dynamics_run(tmp_path / "b", 2.0, tokens_per_step=4096),
                _dynamics_run(tmp_path / "c", 3.0, stats=False)]
    figure = draw_dynamics([load_metrics(run_dir) for run_dir in run_dirs], x_axis="tokens")
    panels = _panels(figure)
    global_norm = panels["global gradient norm (solid, pre-clip) and learning rate (dotted)"]
    assert [line.get_label() for line in global_norm.lines] == ["a", "b", "c (no stats records)"]
    assert list(global_norm.lines[1].get_xdata()) == [4096, 81920, 163840]

    expected = {  # per panel: run a's values at steps 1, 20, 40 (run b's grad norms and ratios are twice a's)
        "gradient norm of all layers.* blocks": [math.sqrt(sum((0.1 * number) ** 2 for number in range(2, 8)))] * 3,
        "weight norm of the whole model": [math.sqrt(sum((9.0 + number + step) ** 2 for number in range(1, 10)))
                                           for step in (1, 20, 40)],
        "update / weight norm per step, whole model": [_update_ratio(step, list(range(1, 10))) for step in (1, 20, 40)],
        "activation RMS of the last block's output": [2.01, 2.2, 2.4],
        "attention entropy, mean over layers (nats)": [3.49, 3.3, 3.1],
    }
    for title, values in expected.items():
        assert [line.get_label() for line in panels[title].lines] == ["a all", "b all"], title
        line_a, line_b = panels[title].lines
        assert list(line_a.get_xdata()) == [8192, 163840, 327680]
        assert list(line_b.get_xdata()) == [4096, 81920, 163840]
        assert list(line_a.get_ydata()) == pytest.approx(values), title
    (legend,) = figure.legends
    assert "aggregated over depth" in legend.get_title().get_text()


def test_no_stats_records_in_any_run_is_a_clear_error(tmp_path):
    run_dirs = [_dynamics_run(tmp_path / "a", 1.0, stats=False), _dynamics_run(tmp_path / "b", 1.0, stats=False)]
    expected = r"no training-dynamics records in 'a', 'b': train with run\.stats_interval > 0"
    with pytest.raises(PlotError, match=expected):
        plot_dynamics(run_dirs, tmp_path / "dynamics.png")
    assert not (tmp_path / "dynamics.png").exists()


def test_figures_stay_small_enough_to_commit(tmp_path):
    # Two runs of a thousand noisy steps logged every 4, measured every 16 with 8 layers: gradient norms and update
    # ratios as noisy as real ones (+-30% from one measurement to the next), the rest smooth.
    noise = random.Random(0)
    groups = ["token_embeddings", *(f"layers.{i}.{part}" for i in range(8) for part in ("attn", "ffn", "norms")),
              "ln_final", "lm_head"]
    run_dirs = []
    for name, scale in (("a", 1.0), ("b", 2.0)):
        records = []
        for step in [1, *range(4, 1025, 4)]:
            loss = 2 + 7 / step**0.5 + noise.gauss(0, 0.1)
            records.append({**_train(step, loss), "grad_norm": noise.uniform(0.2, 1)})
            if step % 16 == 0:
                rank = {group: index + 1 for index, group in enumerate(groups)}
                records.append({
                    "kind": "stats", "step": step, "tokens": step * 8192, "wall_s": step * 0.5, "lr": 1e-3,
                    "grad_norm": {group: scale * rank[group] * noise.uniform(0.7, 1.3) for group in groups},
                    "weight_norm": {group: rank[group] + step / 100 for group in groups},
                    "update_ratio": {group: scale * 1e-3 * rank[group] * noise.uniform(0.7, 1.3) for group in groups},
                    "activation_rms": {f"layers.{i}": 1 + i + step / 500 for i in range(8)},
                    "attention_entropy": {f"layers.{i}": 1 + i / 4 + 3 / (1 + step / 100) for i in range(8)}})
            if step % 256 == 0:
                records.append(_valid(step, 2.5 + 7 / step**0.5))
        run_dirs.append(_write_run(tmp_path / name, records))
    for figure_path in (plot_runs(run_dirs, tmp_path / "loss.png", smoothing=0.9),
                        plot_dynamics(run_dirs, tmp_path / "dynamics.png")):
        assert 10_000 < figure_path.stat().st_size < 300_000, figure_path


# ---------------------------------------------------------------------------------------------------------------
# The command

def _invoke_plot(*arguments):
    return CliRunner().invoke(main, ["plot", *(str(argument) for argument in arguments)])


def test_the_plot_command_draws_both_figures_with_the_chosen_axis_and_title(tmp_path, monkeypatch):
    saved = {}
    save_png = cs336_train.plot._save_png

    def remember(figure, out_png):
        saved[out_png.name] = figure
        return save_png(figure, out_png)

    monkeypatch.setattr(cs336_train.plot, "_save_png", remember)
    run_dirs = [_dynamics_run(tmp_path / "a", 1.0), _dynamics_run(tmp_path / "b", 2.0, tokens_per_step=4096)]
    result = _invoke_plot(*run_dirs, "--out", tmp_path / "loss.png", "--x", "tokens", "--title", "batch sizes",
                          "--dynamics", tmp_path / "dynamics.png", "--smoothing", "0.5")
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'loss.png'}" in result.output and f"wrote {tmp_path / 'dynamics.png'}" in result.output
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (tmp_path / "dynamics.png").read_bytes()[:8] == PNG_SIGNATURE
    loss, dynamics = saved["loss.png"], saved["dynamics.png"]
    assert loss.get_suptitle() == dynamics.get_suptitle() == "batch sizes"
    assert loss.axes[0].get_xlabel() == dynamics.axes[3].get_xlabel() == "training tokens seen"
    assert list(loss.axes[0].lines[3].get_xdata()) == [4096, 81920, 163840]  # b: raw, smoothed, valid

    result = _invoke_plot(*run_dirs, "--out", tmp_path / "wall.png", "--x", "wall")
    assert result.exit_code == 0, result.output
    assert len(saved["wall.png"].axes) == 1 and saved["wall.png"].axes[0].get_xlabel().startswith("wall-clock")


def test_the_plot_command_refuses_bad_options_in_one_line(tmp_path):
    run_dir = _dynamics_run(tmp_path / "a", 1.0, stats=False)
    result = _invoke_plot(run_dir, "--out", tmp_path / "loss.png", "--dynamics", tmp_path / "dynamics.png")
    assert result.exit_code == 1 and "no training-dynamics records in 'a'" in result.output
    assert "Traceback" not in result.output and (tmp_path / "loss.png").exists()
    result = _invoke_plot(run_dir, "--out", tmp_path / "same.png", "--dynamics", tmp_path / "same.png")
    assert result.exit_code == 2 and "--dynamics must name another file than --out" in result.output
    result = _invoke_plot(run_dir, "--x", "epochs")
    assert result.exit_code == 2 and "'epochs' is not one of 'steps', 'tokens', 'wall'" in result.output
