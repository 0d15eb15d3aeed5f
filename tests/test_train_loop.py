"""The training loop, in process: it learns, validates exactly, accumulates gradients correctly, and fails safely."""

import errno
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cs336_train.checkpoint as checkpoint_module
import cs336_train.trainer as trainer_module
from cs336_nn import TransformerLM
from cs336_train import CheckpointError, TrainError, TrainingDiverged, open_tokens, read_checkpoint, train
from cs336_train.checkpointing import load_run_config
from tests.train_helpers import tiny_config

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def test_training_learns_and_leaves_a_complete_run_directory(token_files, tmp_path):
    config = tiny_config(token_files, steps=30, eval_interval=10, checkpoint_interval=10, log_interval=5)
    result = train(config, tmp_path / "run")
    run_dir = result.run_dir

    assert (result.steps, result.tokens, result.stopped_by) == (30, 30 * 8 * 16, "steps")
    train_records, valid_records = _records(run_dir, "train"), _records(run_dir, "valid")
    assert [r["step"] for r in train_records] == [1, 5, 10, 15, 20, 25, 30]  # step 1: the start of the curve
    assert [r["step"] for r in valid_records] == [10, 20, 30]
    assert train_records[-1]["loss"] < train_records[0]["loss"] - 1.0
    assert valid_records[-1]["loss"] < math.log(320) - 1.0  # well below the uniform guess
    assert valid_records[-1]["perplexity"] == pytest.approx(math.exp(valid_records[-1]["loss"]))
    assert all(r["wall_s"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in train_records)
    assert (run_dir / "config.toml").is_file() and (run_dir / "tokenizer" / "vocab.json").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.pt", "step_00000010.pt", "step_00000020.pt", "step_00000030.pt"]
    assert load_run_config(run_dir).to_dict() == config.to_dict()
    assert result.valid_loss == valid_records[-1]["loss"]


def test_validation_loss_is_exact_over_the_whole_file(token_files, tmp_path):
    config = tiny_config(token_files, steps=5, valid_batch_size=3)
    result = train(config, tmp_path / "run")
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000005.pt")
    # The optimizer ran on a device-side rate; the checkpoint holds it as a number, as checkpoints always did.
    assert all(isinstance(group["lr"], float) for group in state["optimizer"]["param_groups"])
    model = TransformerLM(config.model)
    model.load_state_dict(state["model"])

    # Independently: torch's cross-entropy, summed window by window of any length, over all n - 1 targets.
    tokens = torch.from_numpy(np.asarray(open_tokens(token_files["valid"], 320), dtype=np.int64))
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, 16):
            window = tokens[start:start + 17]
            logits = model(window[None, :-1])[0]
            total += F.cross_entropy(logits, window[1:], reduction="sum").item()
    assert result.valid_loss == pytest.approx(total / (len(tokens) - 1), rel=1e-5)


def test_gradient_accumulation_gives_the_same_training_as_one_big_batch(token_files, tmp_path):
    one_batch = train(tiny_config(token_files, steps=6), tmp_path / "one")
    accumulated = train(tiny_config(token_files, steps=6, grad_accum_steps=4), tmp_path / "four")
    losses = [[r["loss"] for r in _records(result.run_dir, "train")] for result in (one_batch, accumulated)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert one_batch.valid_loss == pytest.approx(accumulated.valid_loss, rel=1e-5)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(token_files, tmp_path, monkeypatch):
    real_loss, calls = trainer_module.loss_function("scratch"), []

    def loss_that_diverges_at_step_5(logits, targets):
        calls.append(1)
        loss = real_loss(logits, targets)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(trainer_module, "loss_function", lambda impl: loss_that_diverges_at_step_5)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"became nan at step 5.*step_00000004\.pt.*Lower optimizer\.lr"):
        train(tiny_config(token_files, steps=20, checkpoint_interval=2), run_dir)
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step_*"))][-1] == "step_00000004.pt"
    good = read_checkpoint(run_dir / "checkpoints" / "step_00000004.pt")
    assert all(torch.isfinite(value).all() for value in good["model"].values())


def test_out_of_memory_names_the_settings_to_lower(token_files, tmp_path, monkeypatch):
    def allocation_fails(self, token_ids):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9999999999 bytes")

    monkeypatch.setattr(TransformerLM, "forward", allocation_fails)
    with pytest.raises(TrainError, match=r"out of memory.*run\.batch_size \(8\).*run\.grad_accum_steps"):
        train(tiny_config(token_files, steps=3), tmp_path / "run")


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(token_files, tmp_path, monkeypatch):
    real_save, saves = torch.save, []

    def save_until_the_disk_fills(state, handle):
        saves.append(1)
        if len(saves) == 2:
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_fills)
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointError, match="disk is full"):
        train(tiny_config(token_files, steps=10, checkpoint_interval=2), run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002.pt"]
    assert read_checkpoint(run_dir / "checkpoints" / "step_00000002.pt")["iteration"] == 2


def test_time_budget_stops_validates_and_checkpoints(token_files, tmp_path):
    result = train(tiny_config(token_files, steps=100_000, time_budget_s=0.5), tmp_path / "run")
    assert result.stopped_by == "time budget"
    assert 0 < result.steps < 100_000 and result.wall_s >= 0.5
    assert _records(result.run_dir, "valid")[-1]["step"] == result.steps
    assert (result.run_dir / "checkpoints" / f"step_{result.steps:08d}.pt").is_file()


def test_a_new_run_refuses_a_directory_that_holds_one(token_files, tmp_path):
    train(tiny_config(token_files, steps=2), tmp_path / "run")
    with pytest.raises(TrainError, match="already holds a run.*cs336-train resume"):
        train(tiny_config(token_files, steps=2), tmp_path / "run")


def test_resume_refuses_a_different_configuration(token_files, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(token_files, steps=4), run_dir)
    with pytest.raises(TrainError, match="cannot change optimizer.lr"):
        load_run_config(run_dir, ["optimizer.lr=1.0"])
    assert load_run_config(run_dir, ["run.time_budget_s=60"]).run.time_budget_s == 60.0

    changed = tiny_config(token_files, steps=4)
    changed.model.num_layers = 3
    with pytest.raises(CheckpointError, match=r"different configuration: model\.num_layers: 2 -> 3"):
        train(changed, run_dir, resume=True)


def test_resume_after_the_last_step_only_validates(token_files, tmp_path):
    run_dir = tmp_path / "run"
    first = train(tiny_config(token_files, steps=4), run_dir)
    again = train(tiny_config(token_files, steps=4), run_dir, resume=True)
    assert again.steps == 4 and again.valid_loss == first.valid_loss


def test_optimizer_and_loss_implementations_are_switchable(token_files, tmp_path):
    ours = train(tiny_config(token_files, steps=5), tmp_path / "ours")
    builtin = tiny_config(token_files, steps=5, loss_impl="torch")
    builtin.optimizer.impl = "torch"
    theirs = train(builtin, tmp_path / "torch")
    ours_losses = [r["loss"] for r in _records(ours.run_dir, "train")]
    torch_losses = [r["loss"] for r in _records(theirs.run_dir, "train")]
    # Not bit-equal: torch adds eps after the bias correction, Algorithm 1 before (a ~1e-4 drift in 5 steps).
    np.testing.assert_allclose(ours_losses, torch_losses, rtol=2e-3)
    assert ours_losses != torch_losses  # the switch really changed the implementation


@pytest.mark.slow
def test_wandb_logging_works_offline_without_an_account(token_files, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = train(tiny_config(token_files, steps=3, wandb=True), tmp_path / "run")
    offline_runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert len(_records(result.run_dir, "train")) == 3  # the JSONL file is written as well


@pytest.mark.slow
def test_compiled_training_matches_eager_and_its_checkpoints_load_into_a_plain_model(token_files, tmp_path,
                                                                                     monkeypatch):
    eager = train(tiny_config(token_files, steps=4, checkpoint_interval=4), tmp_path / "eager")
    real_compile, compiled_modules = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda module, **options: compiled_modules.append(module)
                        or real_compile(module, **options))
    compiled = train(tiny_config(token_files, steps=4, checkpoint_interval=4, compile=True), tmp_path / "compiled")
    assert len(compiled_modules) == 1 and isinstance(compiled_modules[0], TransformerLM)
    losses = [[r["loss"] for r in _records(result.run_dir, "train")] for result in (eager, compiled)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)  # compiled kernels may round differently
    assert compiled.valid_loss == pytest.approx(eager.valid_loss, rel=1e-4)
    # The checkpoint holds the model's own parameter names (no torch.compile "_orig_mod." prefix).
    state = read_checkpoint(tmp_path / "compiled" / "checkpoints" / "step_00000004.pt")
    TransformerLM(tiny_config(token_files).model).load_state_dict(state["model"])


def _cosine_with_warmup(fraction, peak, minimum, warmup_fraction):
    """The handout's schedule written out on a 0..1 horizon (the test's reference)."""
    if fraction < warmup_fraction:
        return fraction / warmup_fraction * peak
    if fraction >= 1:
        return minimum
    progress = (fraction - warmup_fraction) / (1 - warmup_fraction)
    return minimum + 0.5 * (1 + math.cos(math.pi * progress)) * (peak - minimum)


def test_a_time_budget_is_the_schedule_horizon_so_the_run_ends_at_the_minimum_rate(token_files, tmp_path):
    budget = 2.0
    config = tiny_config(token_files, steps=100_000, time_budget_s=budget, stats_interval=0)
    result = train(config, tmp_path / "run")
    assert result.stopped_by == "time budget" and result.steps < 100_000
    peak, warmup = config.optimizer.lr, config.optimizer.warmup_fraction
    minimum = peak * config.optimizer.min_lr_ratio
    records = _records(result.run_dir, "train")  # every step (log_interval 1)
    assert [r["step"] for r in records] == list(range(1, result.steps + 1))
    # Each step's rate is the schedule at the training seconds spent before it (wall_s is logged to the ms).
    started_at = [0.0] + [r["wall_s"] for r in records[:-1]]
    for record, elapsed in zip(records, started_at, strict=True):
        assert record["lr"] == pytest.approx(_cosine_with_warmup(elapsed / budget, peak, minimum, warmup),
                                             abs=peak * 5e-3), record["step"]
    # The run stopped once the budget was spent, so its last step began within one step of the schedule's end,
    # where the rate reaches the minimum: that step's rate is the lowest of the whole decay.
    assert started_at[-1] <= budget <= records[-1]["wall_s"]  # (<=: wall_s is rounded to the ms)
    decay = [r["lr"] for r, elapsed in zip(records, started_at, strict=True) if elapsed > warmup * budget]
    assert len(decay) > 1 and records[-1]["lr"] == min(decay) < peak


def test_activation_checkpointing_recomputes_and_trains_to_the_same_losses(token_files, tmp_path, monkeypatch):
    real_model, forwards_with_gradients = trainer_module.TransformerLM, []

    def counted_model(*args, **kwargs):  # counts the first block's forward passes made for training
        model = real_model(*args, **kwargs)
        # A pre-hook: torch's checkpoint stops the recomputation as soon as it has what backward needs, so the
        # recomputed forward may never return (a forward hook would not see it).
        model.layers[0].register_forward_pre_hook(
            lambda *_: forwards_with_gradients.append(1) if torch.is_grad_enabled() else None)
        return model

    monkeypatch.setattr(trainer_module, "TransformerLM", counted_model)
    plain = train(tiny_config(token_files, steps=5), tmp_path / "plain")
    assert len(forwards_with_gradients) == 5
    forwards_with_gradients.clear()
    recomputed = train(tiny_config(token_files, steps=5, activation_checkpointing=True), tmp_path / "recomputed")
    assert len(forwards_with_gradients) == 10  # each block runs again in the backward pass
    losses = [[r["loss"] for r in _records(result.run_dir, "train")] for result in (plain, recomputed)]
    assert losses[0] == losses[1]  # the same numbers, recomputed (fp32, one thread)
    assert recomputed.valid_loss == plain.valid_loss
    assert load_run_config(recomputed.run_dir, ["run.activation_checkpointing=false"])  # resumable either way
