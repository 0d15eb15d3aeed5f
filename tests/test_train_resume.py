"""Runs that cannot be lost, tested with real processes and real signals: SIGKILL then resume gives the same
loss curve bit for bit; SIGINT/SIGTERM save a checkpoint before exiting; torchrun data parallelism matches one
process with the same global batch."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train_helpers import cs336_train, last_loss_per_step, tiny_config, write_config

pytestmark = pytest.mark.slow


def _start(config_path, run_dir):
    return subprocess.Popen([sys.executable, "-m", "cs336_train", "fit", str(config_path), "--out", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"training ended early:\n{process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting for training to progress"
        time.sleep(0.005)


def test_sigkill_then_resume_gives_the_same_loss_curve_bit_for_bit(token_files, tmp_path):
    # Checkpoints every 7 steps and log lines every 3: the kill lands mid-interval, so resuming must also restore
    # the running loss of the interval, the data sampler and the optimizer moments exactly.
    config = tiny_config(token_files, steps=400, checkpoint_interval=7, log_interval=3, eval_interval=100)
    config_path = write_config(tmp_path / "config.toml", config)
    reference = tmp_path / "reference"
    cs336_train("fit", config_path, "--out", reference, check=True)

    killed = tmp_path / "killed"
    process = _start(config_path, killed)
    _wait_for(lambda: (killed / "checkpoints" / "step_00000014.pt").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = sorted(p.name for p in (killed / "checkpoints").glob("step_*.pt"))
    assert "step_00000400.pt" not in saved, "the run finished before it could be killed; make it longer"

    resumed = cs336_train("resume", killed)
    assert resumed.returncode == 0, resumed.stderr
    for kind in ("train", "valid"):
        expected, actual = last_loss_per_step(reference, kind), last_loss_per_step(killed, kind)
        assert actual == expected  # exact float equality, every logged step


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_save_a_checkpoint_before_exiting(token_files, tmp_path, signal_number):
    config_path = write_config(tmp_path / "config.toml", tiny_config(token_files, steps=100_000, log_interval=5))
    run_dir = tmp_path / "run"
    process = _start(config_path, run_dir)
    # Step 1 is logged at once; wait for the line of step 5, so that several steps are done before the signal.
    _wait_for(lambda: (run_dir / "metrics.jsonl").exists() and '"step": 5,' in (run_dir / "metrics.jsonl").read_text(),
              process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 128 + signal_number, stderr
    assert f"stopped by {signal.Signals(signal_number).name}" in stderr and "cs336-train resume" in stderr
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].stem.split("_")[1])
    assert stopped_at >= 5  # the steps done before the signal are kept
    last_logged = max(last_loss_per_step(run_dir, "train"))
    assert stopped_at >= last_logged


def test_torchrun_two_cpu_processes_match_one_process_with_the_same_global_batch(token_files, tmp_path):
    config_path = write_config(tmp_path / "config.toml", tiny_config(token_files, steps=8, batch_size=8))
    single = tmp_path / "single"
    cs336_train("fit", config_path, "--out", single, check=True)

    parallel = tmp_path / "parallel"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "cs336_train", "fit", str(config_path), "--out", str(parallel)],
        capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    for kind in ("train", "valid"):
        expected, actual = last_loss_per_step(single, kind), last_loss_per_step(parallel, kind)
        assert actual.keys() == expected.keys()
        assert actual == pytest.approx(expected, rel=1e-5)
    assert len(list((parallel / "checkpoints").glob("step_*.pt"))) == 1  # only rank 0 writes

    resumed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "cs336_train", "resume", str(parallel)], capture_output=True, text=True, env=environment, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def _agree_across_two_ranks(rank: int, store_path: str, results: dict) -> None:
    import torch
    import torch.distributed as dist

    from cs336_train import distributed

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        # Each rank's own clock reads differently; the budget's decisions must use one of them everywhere.
        clock = distributed.main_rank_value(100.0 + rank)
        loss = distributed.average_across_ranks(torch.tensor(float(rank + 1)), 2)
        results[rank] = (clock, float(loss))
    finally:
        distributed.shutdown()


def test_ranks_agree_on_the_clock_and_average_the_loss_on_the_device(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_agree_across_two_ranks, args=(str(tmp_path / "store"), results), nprocs=2)
        assert dict(results) == {0: (100.0, 1.5), 1: (100.0, 1.5)}


def test_a_run_saved_before_newer_settings_existed_still_matches_its_config(token_files):
    """Settings added later (model.ffn_impl, model.norm_impl, run.activation_checkpointing ...) default to the old
    behaviour, so a checkpoint whose saved config lacks them is the same run and may be resumed."""
    from cs336_train.checkpoint import config_differences
    from cs336_train.checkpointing import with_current_defaults

    config = tiny_config(token_files)
    saved = config.to_dict()
    for section, key in (("model", "ffn_impl"), ("model", "norm_impl"), ("run", "activation_checkpointing")):
        saved[section].pop(key, None)
    assert config_differences(saved, config.to_dict())  # compared raw, the missing keys look like changes
    assert config_differences(with_current_defaults(saved), config.to_dict()) == []
    changed = config.to_dict()
    changed["model"]["num_layers"] = 3
    assert config_differences(with_current_defaults(changed), config.to_dict())  # a real change still shows


def test_the_final_checkpoint_is_written_once_and_a_budget_stopped_run_resumes_to_nothing(token_files, tmp_path,
                                                                                         monkeypatch):
    from cs336_train import train
    from cs336_train.run_directory import RunDirectory

    saves = []
    original = RunDirectory.save_checkpoint
    monkeypatch.setattr(RunDirectory, "save_checkpoint",
                        lambda self, state, **options: saves.append(state["iteration"]) or original(self, state,
                                                                                                     **options))
    train(tiny_config(token_files, steps=20, checkpoint_interval=10), tmp_path / "run")
    assert saves == [10, 20]  # not [10, 20, 20]: the last step's checkpoint is the final one

    budgeted = train(tiny_config(token_files, steps=100_000, time_budget_s=0.5), tmp_path / "budget")
    assert budgeted.stopped_by == "time budget"
    files = sorted(p.name for p in (tmp_path / "budget" / "checkpoints").iterdir())
    again = train(tiny_config(token_files, steps=100_000, time_budget_s=0.5), tmp_path / "budget", resume=True)
    assert (again.steps, again.stopped_by) == (budgeted.steps, "time budget")  # no extra step, no new checkpoint
    assert sorted(p.name for p in (tmp_path / "budget" / "checkpoints").iterdir()) == files
