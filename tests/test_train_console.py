"""The training console: progress bar on a terminal, plain lines with an ETA elsewhere, a closed pipe noticed."""

import io
import os

import pytest

from cs336_train.console import TrainingConsole, format_duration


def train_record(step: int, wall_s: float, loss: float = 3.91) -> dict:
    return {"kind": "train", "step": step, "tokens": step * 8192, "wall_s": wall_s, "loss": loss, "lr": 1e-3,
            "grad_norm": 0.5, "tokens_per_s": 13402.0, "mfu": 0.2}


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (60, "1m00s"), (95, "1m35s"),
                                               (3599, "59m59s"), (3600, "1h00m"), (3725, "1h02m"),
                                               (90061, "25h01m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_plain_lines_end_with_the_eta_from_this_sessions_pace():
    stream = io.StringIO()
    console = TrainingConsole(total_steps=256, stream=stream, interactive=False)
    console.advance(100, 50.0)
    console.record(train_record(100, 50.0))
    # 50 s for 100 steps: 156 steps left take 78 s
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("step    100") and "loss  3.9100" in line and line.endswith("ETA 1m18s")
    assert "\r" not in stream.getvalue()  # no bar when not a terminal


def test_a_resumed_run_paces_from_where_it_resumed():
    stream = io.StringIO()
    # resumed at step 200 after 400 s; 50 more steps took 20 s, so the last 50 take 20 s too
    console = TrainingConsole(total_steps=300, start_step=200, start_wall_s=400.0, stream=stream, interactive=False)
    console.record(train_record(250, 420.0))
    assert stream.getvalue().rstrip().endswith("ETA 20s")


def test_a_budgeted_run_counts_down_the_budget():
    stream = io.StringIO()
    console = TrainingConsole(total_steps=10**6, time_budget_s=2700, stream=stream, interactive=False)
    console.record(train_record(1000, 700.0))
    assert stream.getvalue().rstrip().endswith("ETA 33m20s")


def test_validation_lines_have_no_eta():
    stream = io.StringIO()
    console = TrainingConsole(total_steps=10, stream=stream, interactive=False)
    console.record({"kind": "valid", "step": 5, "tokens": 40960, "wall_s": 3.0, "loss": 4.2, "perplexity": 66.7})
    assert "ETA" not in stream.getvalue() and "valid loss  4.2000" in stream.getvalue()


def test_the_bar_shows_steps_loss_and_throughput_with_records_above_it():
    stream = io.StringIO()
    console = TrainingConsole(total_steps=256, stream=stream, interactive=True)
    console.advance(1, 0.5)
    console.record(train_record(1, 0.5, loss=9.21))
    for step in range(2, 101):
        console.advance(step, step * 0.5)
    console.close()
    output = stream.getvalue()
    assert "100/256" in output and "loss 9.2100" in output and "13,402 tok/s" in output
    record_line = next(line for line in output.replace("\r", "\n").splitlines() if line.startswith("step      1"))
    assert "ETA" not in record_line  # on a terminal the bar carries the ETA


def test_a_closed_pipe_sets_broken_and_stays_quiet():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (e.g. `head`) has gone
    stream = os.fdopen(write_end, "w")
    console = TrainingConsole(total_steps=10, stream=stream, interactive=False)
    console.record(train_record(1, 0.1))
    assert console.broken
    console.record(train_record(2, 0.2))  # later writes are dropped, not raised
    console.say("the end")
    stream.close()  # flushing the rest goes to /dev/null now: no BrokenPipeError


def test_other_write_errors_are_not_swallowed():
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    console = TrainingConsole(total_steps=10, stream=Full(), interactive=False)
    with pytest.raises(OSError, match="No space"):
        console.say("hello")


@pytest.mark.slow
def test_piping_into_head_stops_the_run_with_a_checkpoint_and_no_traceback(tmp_path):
    """`cs336-train fit ... 2>&1 | head -n 3`: head exits after 3 lines; the run saves, exits 141 (SIGPIPE) quietly,
    and `resume` continues it."""
    import shlex
    import subprocess
    import sys

    from tests.train_helpers import make_token_files, tiny_config, write_config

    files = make_token_files(tmp_path / "data")
    config = write_config(tmp_path / "tiny.toml", tiny_config(files, steps=100_000, log_interval=1))
    run_dir = tmp_path / "run"
    command = f"{shlex.quote(sys.executable)} -m cs336_train fit {config} --out {run_dir}"
    stderr_file = tmp_path / "after_head.txt"
    script = f"{command} 2>&1 | head -n 3 > {tmp_path / 'head.txt'}; echo ${{PIPESTATUS[0]}} > {stderr_file}"
    subprocess.run(["bash", "-c", script], check=True, timeout=300)
    assert stderr_file.read_text().strip() == "141"  # 128 + SIGPIPE, like any Unix tool whose reader left
    assert len((tmp_path / "head.txt").read_text().splitlines()) == 3
    saved = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    assert saved and not list(run_dir.rglob("*.partial"))
    # the saved run continues (a tiny time budget: one more step is enough to show it)
    resumed = subprocess.run([sys.executable, "-m", "cs336_train", "resume", str(run_dir), "--set",
                              "run.time_budget_s=0.001"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {saved[-1].name}" in resumed.stderr
