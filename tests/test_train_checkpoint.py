"""Checkpoints: the course hooks, atomic writes, safe loading and clear errors, keep-last-N and best."""

import errno
import io
import os

import pytest
import torch

import cs336_train.checkpoint as checkpoint_module
from cs336_nn import ModelConfig, TransformerLM
from cs336_optim import AdamW
from cs336_train import CheckpointError, read_checkpoint, write_checkpoint
from cs336_train.checkpoint import config_differences
from cs336_train.run_directory import RunDirectory
from tests.adapters import run_load_checkpoint, run_save_checkpoint

CONFIG = ModelConfig(vocab_size=50, context_length=8, d_model=16, num_layers=1, num_heads=2)


def _trained_model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = TransformerLM(CONFIG)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):  # optimizer state (moments, step counts) worth saving
        model(torch.randint(0, 50, (2, 8))).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


@pytest.mark.parametrize("as_file_object", [False, True])
def test_hook_round_trip_restores_model_optimizer_and_iteration(tmp_path, as_file_object):
    model, optimizer = _trained_model_and_optimizer(seed=0)
    target = io.BytesIO() if as_file_object else tmp_path / "ckpt.pt"
    run_save_checkpoint(model, optimizer, 7, target)
    if as_file_object:
        target.seek(0)

    fresh_model, fresh_optimizer = _trained_model_and_optimizer(seed=1)
    assert not torch.equal(fresh_model.lm_head.weight, model.lm_head.weight)
    assert run_load_checkpoint(target, fresh_model, fresh_optimizer) == 7
    for name, value in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[name], value), name
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(loaded["state"][index][key]), torch.as_tensor(value))

    # The restored optimizer continues exactly like the original would have.
    batch = torch.randint(0, 50, (2, 8))
    for m, o in ((model, optimizer), (fresh_model, fresh_optimizer)):
        m(batch).sum().backward()
        o.step()
    assert torch.equal(model.lm_head.weight, fresh_model.lm_head.weight)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    write_checkpoint({"model": {"w": torch.ones(3)}, "iteration": 1}, path)
    before = path.read_bytes()

    def disk_full(state, handle):
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="disk is full.*previous checkpoints are intact"):
        write_checkpoint({"model": {"w": torch.zeros(3)}, "iteration": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_never_runs_code_from_the_file(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "iteration": 0, "payload": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        read_checkpoint(path)


def test_corrupt_truncated_foreign_and_newer_files_are_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    write_checkpoint({"model": {"w": torch.ones(1000)}, "iteration": 3}, good)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_checkpoint(foreign)

    newer = tmp_path / "newer.pt"
    torch.save({"format": "cs336-checkpoint", "format_version": 99, "model": {}, "iteration": 0}, newer)
    with pytest.raises(CheckpointError, match="format version 99.*upgrade"):
        read_checkpoint(newer)

    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")


def test_checkpoint_directory_keeps_the_last_n_and_the_best(tmp_path):
    run = RunDirectory(tmp_path)
    losses = {10: 3.0, 20: 2.0, 30: 2.5, 40: None}
    for iteration, loss in losses.items():
        run.save_checkpoint({"model": {"w": torch.tensor([float(iteration)])}, "iteration": iteration},
                            is_best=loss is not None and loss == min(v for v in losses.values() if v), keep_last=2)
    assert [path.name for path in run.step_checkpoints()] == ["step_00000030.pt", "step_00000040.pt"]
    assert run.choose().name == "step_00000040.pt"
    assert read_checkpoint(run.checkpoints_dir / "best.pt")["iteration"] == 20  # survives its step file's pruning
    assert not [name for name in os.listdir(run.checkpoints_dir) if name.startswith(".")]


def test_config_differences_name_each_changed_setting():
    saved = {"model": {"d_model": 256, "num_layers": 4}, "optimizer": {"betas": [0.9, 0.95]}}
    current = {"model": {"d_model": 512, "num_layers": 4}, "optimizer": {"betas": (0.9, 0.95)}}
    assert config_differences(saved, current) == ["model.d_model: 256 -> 512"]
