"""What a run directory promises, under the faults a demanding user throws at it: a SIGKILL in the middle of a
save, flipped bytes, a full disk, two writers at once, damaged or incomplete inputs, and choosing a checkpoint."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cs336_train.checkpoint as checkpoint_module
from cs336_bpe.corpus import metadata_path
from cs336_nn import perplexity
from cs336_train import CheckpointError, RunDirectory, RunLockedError, read_checkpoint, write_checkpoint
from cs336_train.checkpoint import content_sha256
from cs336_train.checkpointing import RESUMABLE_OVERRIDES
from cs336_train.cli import main
from cs336_train.metrics import format_record
from tests.train_helpers import cs336_train, last_loss_per_step, tiny_config, write_config

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _invoke(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def trained_run(token_files, tmp_path) -> Path:
    """A finished tiny run with step checkpoints 4 and 8 and best.pt (validation every 4 steps)."""
    config = tiny_config(token_files, steps=8, eval_interval=4, checkpoint_interval=4, keep_last=3)
    run_dir = tmp_path / "run"
    result = _invoke("fit", write_config(tmp_path / "config.toml", config), "--out", run_dir)
    assert result.exit_code == 0, result.output
    return run_dir


# ---- 1. a SIGKILL in the middle of a save --------------------------------------------------------------------

_DIE_DURING_SAVE = """
import os, signal, sys
import torch
saves = 0
real_save = torch.save
def save_then_die(state, handle, *args, **kwargs):
    global saves
    saves += 1
    if saves == int(sys.argv[1]):  # half a checkpoint on disk, then the process dies at once
        handle.write(b"half a checkpoint")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(state, handle, *args, **kwargs)
torch.save = save_then_die
from cs336_train.cli import main
main(sys.argv[2:])
"""


def _fit_and_die_during_save(save_number: int, config_path: Path, run_dir: Path) -> None:
    died = subprocess.run([sys.executable, "-c", _DIE_DURING_SAVE, str(save_number), "fit", str(config_path),
                           "--out", str(run_dir)], capture_output=True, text=True)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    partials = [path.name for path in (run_dir / "checkpoints").iterdir() if path.name.endswith(".partial")]
    assert partials, "the kill should have left a half-written checkpoint behind"


@pytest.mark.slow
@pytest.mark.parametrize("save_number", [1, 3], ids=["first save", "third save"])
def test_a_kill_during_a_save_then_resume_gives_the_uninterrupted_curve(token_files, tmp_path, save_number):
    config = tiny_config(token_files, steps=30, checkpoint_interval=5, log_interval=1, eval_interval=10)
    config_path = write_config(tmp_path / "config.toml", config)
    reference = tmp_path / "reference"
    cs336_train("fit", config_path, "--out", reference, check=True)

    killed = tmp_path / "killed"
    _fit_and_die_during_save(save_number, config_path, killed)
    resumed = cs336_train("resume", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "half-written file(s) left by an interrupted save" in resumed.stderr
    if save_number == 1:
        assert "starting it from step 0" in resumed.stderr
    else:
        assert "resuming from step_00000010.pt: step 10" in resumed.stderr
    assert not [path for path in (killed / "checkpoints").iterdir() if path.name.startswith(".")]
    for kind in ("train", "valid"):  # exact, every logged step (fp32, 1 thread)
        assert last_loss_per_step(killed, kind) == last_loss_per_step(reference, kind)


@pytest.mark.slow
def test_fit_also_accepts_a_run_killed_during_its_first_save(token_files, tmp_path):
    config_path = write_config(tmp_path / "config.toml", tiny_config(token_files, steps=6, checkpoint_interval=2))
    run_dir = tmp_path / "run"
    _fit_and_die_during_save(1, config_path, run_dir)
    again = cs336_train("fit", config_path, "--out", run_dir)
    assert again.returncode == 0, again.stderr
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == [
        "best.pt", "step_00000002.pt", "step_00000004.pt", "step_00000006.pt"]  # and no partial left


# ---- 2. flipped bytes are refused -----------------------------------------------------------------------------

def _largest_entry_data_offset(path: Path) -> tuple[int, int]:
    """(offset, size) of the bytes of the largest entry in a torch.save zip (a tensor's data)."""
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.compress_size)
    with open(path, "rb") as handle:
        handle.seek(entry.header_offset + 26)
        name_length, extra_length = np.frombuffer(handle.read(4), dtype="<u2")
    return entry.header_offset + 30 + int(name_length) + int(extra_length), entry.compress_size


def _flip(path: Path, offset: int, count: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for index in range(offset, offset + count):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_tensor_data_are_refused_by_eval_resume_and_sample(trained_run, token_files):
    from cs336_sample.cli import main as sample_main

    newest = trained_run / "checkpoints" / "step_00000008.pt"
    offset, size = _largest_entry_data_offset(newest)
    _flip(newest, offset + size // 2, count=16)

    evaluated = _one_line_error(_invoke("eval", trained_run, "--data", token_files["valid"], "--device", "cpu"))
    assert "step_00000008.pt" in evaluated and "damaged" in evaluated
    resumed = _one_line_error(_invoke("resume", trained_run))
    assert "damaged" in resumed and "the newest intact one is step_00000004.pt" in resumed
    assert f"cs336-train resume {trained_run} --from 4" in resumed
    sampled = CliRunner().invoke(sample_main, [str(trained_run), "Once", "--device", "cpu", "-n", "3"])
    assert sampled.exit_code == 1 and "damaged" in sampled.output and "Traceback" not in sampled.output

    # The intact earlier checkpoint still serves: the error's advice works.
    assert _invoke("eval", trained_run, "--from", "4", "--data", token_files["valid"], "--device", "cpu").exit_code == 0


def test_any_single_byte_flip_is_refused_or_changes_nothing(tmp_path):
    """The invariant behind integrity: whatever byte of the file is damaged, loading either refuses the file or
    returns exactly what was saved (a flip in zip padding or in an unused header field changes no content)."""
    torch.manual_seed(0)
    state = {"model": {"w": torch.randn(64, 16), "b": torch.randn(16).to(torch.bfloat16)}, "iteration": 7,
             "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(64, 16)}}},
             "rng": {"python": (3, tuple(range(5)), None)}, "progress": {"step": 7, "wall_s": 1.5}}
    good = tmp_path / "good.pt"
    write_checkpoint(state, good)
    expected = content_sha256(read_checkpoint(good))
    original = good.read_bytes()
    rng = random.Random(0)
    refused = 0
    for offset in rng.sample(range(len(original)), 150):
        damaged = tmp_path / "damaged.pt"
        data = bytearray(original)
        data[offset] ^= 1 << rng.randrange(8)
        damaged.write_bytes(bytes(data))
        try:
            loaded = read_checkpoint(damaged)
        except CheckpointError:
            refused += 1
            continue
        assert content_sha256(loaded) == expected, f"byte {offset} changed the content without being refused"
    assert refused > 100  # most of the file is tensor bytes and headers that matter


def test_content_changed_behind_a_valid_zip_is_refused_by_its_sha256(tmp_path):
    # Rewrite the file with a changed tensor but the old stored hash: every CRC-32 is right, the content is not.
    path = tmp_path / "ckpt.pt"
    write_checkpoint({"model": {"w": torch.ones(4)}, "iteration": 1}, path)
    state = torch.load(path, weights_only=True)
    state["model"]["w"][2] = 1.0000001
    torch.save(state, path)
    assert checkpoint_module.damaged_entry(path) is None
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        read_checkpoint(path)


def test_best_checkpoint_has_its_own_bytes(trained_run):
    best = trained_run / "checkpoints" / "best.pt"
    steps = list((trained_run / "checkpoints").glob("step_*.pt"))
    assert all(os.stat(best).st_ino != os.stat(step).st_ino for step in steps)
    assert os.stat(best).st_nlink == 1


# ---- 3. a full disk ---------------------------------------------------------------------------------------------

def test_a_full_disk_during_a_save_names_the_disk_the_space_and_what_was_kept(tmp_path, monkeypatch):
    run = RunDirectory(tmp_path / "run")
    run.save_checkpoint({"model": {"w": torch.ones(1000)}, "iteration": 5}, is_best=True, keep_last=3)
    before = (run.checkpoints_dir / "step_00000005.pt").read_bytes()

    def torch_zip_writer_out_of_space(state, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")  # what torch's writer raises when a write comes up short
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 4480 vs 4374")

    monkeypatch.setattr(checkpoint_module.torch, "save", torch_zip_writer_out_of_space)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(CheckpointError) as raised:
        run.save_checkpoint({"model": {"w": torch.zeros(1000)}, "iteration": 10}, is_best=False, keep_last=3)
    message = str(raised.value)
    assert "disk is full" in message and "step_00000010.pt" in message and str(run.checkpoints_dir) in message
    assert "needs about 4.0 kB, 1.0 kB free" in message  # 1,000 float32s; 1,000 bytes free
    assert "kept: step_00000005.pt, best.pt" in message and "resume" in message
    assert (run.checkpoints_dir / "step_00000005.pt").read_bytes() == before
    assert sorted(os.listdir(run.checkpoints_dir)) == ["best.pt", "step_00000005.pt"]  # no partial left


def test_a_save_error_that_is_not_a_full_disk_is_one_line_too(tmp_path, monkeypatch):
    def broken(state, handle, *args, **kwargs):
        raise RuntimeError("something else broke\nwith a second line")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*something else broke$"):
        write_checkpoint({"model": {}, "iteration": 1}, tmp_path / "ckpt.pt")


# ---- 4. one writer at a time ------------------------------------------------------------------------------------

_HOLD_LOCK = """
import sys, time
from cs336_train import RunDirectory
with RunDirectory(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_the_lock_refuses_a_second_writer_and_is_taken_over_when_its_owner_dies(tmp_path):
    run = RunDirectory(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"being written by pid {holder.pid} on host"), run.lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with run.lock() as note:  # the kernel released the dead owner's lock
        assert note == f"took over the lock of pid {holder.pid} on host {os.uname().nodename}, which is no longer " \
                       "running"
    with run.lock() as note:  # a clean exit leaves nothing to take over
        assert note is None


@pytest.mark.slow
def test_a_second_fit_or_resume_into_a_running_run_is_refused(token_files, tmp_path):
    config_path = write_config(tmp_path / "config.toml", tiny_config(token_files, steps=100_000, log_interval=5))
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "cs336_train", "fit", str(config_path), "--out", str(run_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").stat().st_size):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.01)
        for command in (["fit", config_path, "--out", run_dir], ["resume", run_dir]):
            second = cs336_train(*command)
            assert second.returncode == 1, second.stderr
            assert f"is being written by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130


# ---- 5. every error one line ------------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["data_state", "rng", "progress", "optimizer"])
def test_a_checkpoint_missing_a_training_entry_names_it(trained_run, missing):
    newest = trained_run / "checkpoints" / "step_00000008.pt"
    state = read_checkpoint(newest)
    del state[missing]
    state["iteration"] = 6  # an unfinished run, so resume must restore it
    state["progress"] = dict(state["progress"], step=6) if "progress" in state else None
    if state["progress"] is None:
        del state["progress"]
    write_checkpoint(state, newest)
    error = _one_line_error(_invoke("resume", trained_run))
    assert f"has no {missing!r} entry" in error and "--from" in error


def test_a_malformed_training_entry_is_one_line(trained_run):
    newest = trained_run / "checkpoints" / "step_00000008.pt"
    state = read_checkpoint(newest)
    state["data_state"] = {"bit_generator": "nonsense"}
    state["progress"]["step"] = 6
    write_checkpoint(state, newest)
    assert "malformed training state" in _one_line_error(_invoke("resume", trained_run))


def _train_file_with_metadata(token_files, tmp_path, metadata_text) -> Path:
    """A copy of the training token file whose metadata file holds `metadata_text`."""
    bad = tmp_path / "train.bin"
    bad.write_bytes(Path(token_files["train"]).read_bytes())
    metadata_path(bad).write_text(metadata_text)
    return bad


@pytest.mark.parametrize(("change", "message"), [
    ({"dtype": "float16"}, "dtype"),
    ({"dtype": "nonsense"}, "dtype"),
    ({"vocab_size": "abc"}, "vocab_size"),
])
def test_bad_token_metadata_is_one_line_and_never_trains(token_files, tmp_path, change, message):
    metadata = json.loads(metadata_path(token_files["train"]).read_text())
    config = tiny_config(token_files, steps=2)
    config.data.train = str(_train_file_with_metadata(token_files, tmp_path, json.dumps(metadata | change)))
    result = _invoke("fit", write_config(tmp_path / "config.toml", config), "--out", tmp_path / "run")
    assert message in _one_line_error(result)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_token_metadata_file_holding_a_list_is_one_line(token_files, tmp_path):
    config = tiny_config(token_files, steps=2)
    config.data.train = str(_train_file_with_metadata(token_files, tmp_path, "[1, 2, 3]"))
    _one_line_error(_invoke("fit", write_config(tmp_path / "config.toml", config), "--out", tmp_path / "run"))


def test_a_loss_beyond_exp_overflow_has_an_infinite_perplexity():
    assert perplexity(800.0) == float("inf") and perplexity(709.0) == pytest.approx(np.exp(709.0))
    line = format_record({"kind": "valid", "step": 3, "tokens": 10, "wall_s": 1.0, "loss": 800.0,
                          "perplexity": perplexity(800.0)})
    assert "inf" in line


@pytest.mark.slow
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(token_files, tmp_path):
    config_path = write_config(tmp_path / "config.toml", tiny_config(token_files, steps=100_000))
    process = subprocess.Popen([sys.executable, "-m", "cs336_train", "fit", str(config_path), "--out",
                                str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    # Wait until torch's libraries are being loaded (the slow part of start-up), then press Ctrl-C.
    while "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and ("interrupted" in stderr or "stopped by SIGINT" in stderr)


# ---- 6. choosing the checkpoint to resume from, and saying so ---------------------------------------------------

def test_resume_from_an_earlier_step_sets_later_checkpoints_aside_and_says_where_it_starts(trained_run):
    config_path = trained_run / "config.toml"
    config_path.write_text(config_path.read_text())  # unchanged: resume uses the run's own configuration
    result = _invoke("resume", trained_run, "--from", "4", "--set", "run.log_interval=2")
    assert result.exit_code == 0, result.output
    assert "resuming from step_00000004.pt: step 4," in result.output
    assert "moved 1 later checkpoint(s)" in result.output
    superseded = list((trained_run / "checkpoints" / "superseded").rglob("step_00000008.pt"))
    assert len(superseded) == 1  # kept, not deleted
    assert (trained_run / "checkpoints" / "step_00000008.pt").exists()  # written again by the resumed run


def test_resume_from_best_and_from_a_file(trained_run, tmp_path):
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes((trained_run / "checkpoints" / "step_00000004.pt").read_bytes())
    from_file = _invoke("resume", trained_run, "--from", outside)
    assert from_file.exit_code == 0 and "resuming from elsewhere.pt: step 4" in from_file.output
    from_best = _invoke("resume", trained_run, "--from", "best")
    assert from_best.exit_code == 0, from_best.output
    missing = _one_line_error(_invoke("resume", trained_run, "--from", "5"))
    assert "no checkpoint of step 5" in missing and "available: 4, 8, best" in missing


def test_resuming_a_finished_run_changes_nothing(trained_run):
    before = (trained_run / "metrics.jsonl").read_text()
    result = _invoke("resume", trained_run)
    assert result.exit_code == 0, result.output
    assert "already finished: 8 of 8 steps, validation loss" in result.output
    assert (trained_run / "metrics.jsonl").read_text() == before  # no duplicate valid line


def test_the_resume_help_example_is_an_override_resume_accepts():
    help_text = _invoke("resume", "--help").output
    examples = [word.split("=")[0] for word in help_text.split()
                if "=" in word and "." in word.split("=")[0] and "KEY" not in word]
    assert examples and all(name.startswith("run.") and name.removeprefix("run.") in RESUMABLE_OVERRIDES
                            for name in examples), examples
