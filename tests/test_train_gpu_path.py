"""What the training loop does for a GPU, tested on the CPU through the same code path: no read of a device value
between read points, the device-side NaN guard, batches prepared a step ahead, and the device-dependent choices
(compile, TF32). The last tests need CUDA and are skipped without it."""

import json
import logging
import math
import re
import shutil

import numpy as np
import pytest
import torch

import cs336_train.trainer as trainer_module
from cs336_train import TrainingDiverged, open_tokens, runtime, train
from cs336_train.data import TrainingBatches, sample_window_starts, windows_at
from cs336_train.sweep_jobs import DIVERGED
from tests.train_helpers import last_loss_per_step, tiny_config

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

# Every way Python code can turn a tensor into host values. On a GPU each one waits for the device to finish.
READERS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__array__")


class StepSpy:
    """Wraps the trainer's `optimizer_step`: which step is running, a hook before each, and the model."""

    def __init__(self, monkeypatch, before_step=None):
        self.step, self.context, self.before_step = 0, None, before_step
        real_step = trainer_module.optimizer_step

        def spied(context, plan, micro_batches):
            self.step, self.context = plan.step, context
            if self.before_step:
                self.before_step(context, plan.step)
            return real_step(context, plan, micro_batches)

        monkeypatch.setattr(trainer_module, "optimizer_step", spied)


def count_reads_per_step(monkeypatch, spy: StepSpy) -> dict[int, list[str]]:
    """{step: the readers called from the start of that step until the start of the next}."""
    reads: dict[int, list[str]] = {}
    for name in READERS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.setdefault(spy.step, []).append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return reads


def test_between_read_points_the_loop_reads_nothing_back_from_the_device(token_files, tmp_path, monkeypatch):
    spy = StepSpy(monkeypatch)
    reads = count_reads_per_step(monkeypatch, spy)
    config = tiny_config(token_files, steps=12, log_interval=4, stats_interval=0, grad_accum_steps=2)
    train(config, tmp_path / "run")
    monkeypatch.undo()

    read_points = {1, 4, 8, 12}  # step 1, every log_interval, the last step
    assert {step: names for step, names in reads.items() if step not in read_points and step > 0} == {}
    # The counter does see reads: a log line reads the loss and the gradient norm.
    assert all(reads.get(step) for step in read_points), reads


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _poison_the_loss_at(step_to_poison):
    real_loss = trainer_module.loss_function("scratch")
    calls = []

    def loss(logits, targets):
        calls.append(1)
        value = real_loss(logits, targets)
        return value * float("nan") if len(calls) == step_to_poison else value

    return loss


@pytest.mark.parametrize("poisoned", ["loss", "gradient"])
def test_a_step_that_is_not_finite_leaves_the_weights_of_the_step_before_and_is_named(poisoned, token_files,
                                                                                     tmp_path, monkeypatch):
    bad_step, weights = 5, {}
    hooks = []

    def before_step(context, step):
        if step == bad_step:
            weights["before"] = _snapshot(context.forward)
            if poisoned == "gradient":  # the loss stays finite; one parameter's gradient becomes infinite
                hooks.append(context.parameters[0].register_hook(lambda gradient: gradient * math.inf))
        elif hooks:
            hooks.pop().remove()

    spy = StepSpy(monkeypatch, before_step)
    if poisoned == "loss":
        poisoned_loss = _poison_the_loss_at(bad_step)
        monkeypatch.setattr(trainer_module, "loss_function", lambda impl: poisoned_loss)
    # Read points at steps 1, 4 (log, checkpoint) and 8: the bad step 5 is only noticed at step 8, after steps 6
    # and 7 ran with finite losses. The weights must still be those from before step 5.
    config = tiny_config(token_files, steps=20, log_interval=4, checkpoint_interval=4, stats_interval=0)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as raised:
        train(config, run_dir)

    error = raised.value
    assert spy.step == 8 and error.step == bad_step
    assert f"at step {bad_step}" in str(error) and "step_00000004.pt" in str(error)
    assert int(re.search(DIVERGED, str(error)).group(1)) == bad_step  # the sweep reads the step from the message
    if poisoned == "gradient":
        assert "gradient norm was" in str(error)
    after = _snapshot(spy.context.forward)
    assert all(torch.equal(after[name], weights["before"][name]) for name in after)  # bit for bit
    assert all(torch.isfinite(state["m"]).all() for state in spy.context.optimizer.state.values())
    # No checkpoint after the bad step, and the last one is the step before's weights.
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step_*"))] == ["step_00000004.pt"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 4]  # step 8's line had a nan in it
    (diverged,) = [r for r in records if r["kind"] == "diverged"]
    assert diverged["step"] == bad_step - 1 and diverged["last_finite_loss"] == error.last_finite_loss


def test_batches_prepared_ahead_are_the_same_batches_in_the_same_order(token_files):
    tokens = open_tokens(token_files["train"], 320)

    def batches(prefetch):
        return TrainingBatches(tokens, 8, 16, np.random.default_rng(7), "cpu", grad_accum_steps=2, world_size=2,
                               rank=1, prefetch=prefetch)

    on_demand, ahead = batches(False), batches(True)
    reference = np.random.default_rng(7)  # the draw, written out: one global batch per step, this rank's column
    for _ in range(5):
        state = reference.bit_generator.state
        assert on_demand.sampler_state() == ahead.sampler_state() == state  # what a checkpoint saves
        starts = sample_window_starts(len(tokens), 8, 16, reference).reshape(2, 2, 2)[:, 1]
        expected = [windows_at(tokens, micro_starts, 16, "cpu") for micro_starts in starts]
        for prepared in (on_demand.next_step(), ahead.next_step()):
            assert len(prepared) == 2
            for (inputs, targets), (want_inputs, want_targets) in zip(prepared, expected, strict=True):
                assert torch.equal(inputs, want_inputs) and torch.equal(targets, want_targets)

    # Resumed from the saved state, the prefetching helper draws the very same next batch.
    resumed_sampler = np.random.default_rng()
    resumed_sampler.bit_generator.state = ahead.sampler_state()
    resumed = TrainingBatches(tokens, 8, 16, resumed_sampler, "cpu", 2, 2, 1, prefetch=True)
    for (a, _), (b, _) in zip(resumed.next_step(), on_demand.next_step(), strict=True):
        assert torch.equal(a, b)


def test_prefetching_and_pinned_memory_are_for_cuda_only(token_files):
    tokens = open_tokens(token_files["train"], 320)
    assert not TrainingBatches(tokens, 4, 16, np.random.default_rng(0), "cpu").prefetch
    assert TrainingBatches(tokens, 4, 16, np.random.default_rng(0), torch.device("cuda", 0)).prefetch
    inputs, _ = windows_at(tokens, np.array([0, 5]), 16, "cpu")
    assert not inputs.is_pinned()


def test_compile_is_aot_eager_on_mps_warned_on_cpu_and_silent_on_cuda():
    assert runtime.compile_plan(False, torch.device("cpu")) == (None, None)
    backend, note = runtime.compile_plan(True, torch.device("mps"))
    assert backend == "aot_eager" and "Inductor" in note  # the handout's advice for mps (§7.2)
    backend, note = runtime.compile_plan(True, torch.device("cpu"))
    assert backend == "inductor" and "takes minutes" in note and "run.compile=false" in note
    assert runtime.compile_plan(True, torch.device("cuda", 0)) == ("inductor", None)


def test_compiling_on_a_cpu_warns_once_and_hides_the_no_cuda_runtime_warning(token_files, tmp_path, monkeypatch,
                                                                              capsys, caplog):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **options: compiled.append(module) or module)
    train(tiny_config(token_files, steps=2, compile=True), tmp_path / "run")
    assert len(compiled) == 1
    assert capsys.readouterr().err.count("compiling the model for the CPU") == 1

    # torch.utils.cpp_extension logs this at import when it finds nvcc but no GPU; compiling for a CPU imports it.
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='%s'",
                                                               "/usr/local/cuda")
        logging.getLogger("torch.utils.cpp_extension").warning("another warning")
    assert [record.getMessage() for record in caplog.records] == ["another warning"]


def test_tf32_is_switched_on_for_cuda_only():
    """The handout (§7.2): never TF32 on mps, where such kernels silently broke training."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for device in (torch.device("cpu"), torch.device("mps")):
            runtime.configure_backends(device, 0)
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_on_cuda_steps_between_read_points_never_synchronize(token_files, tmp_path, monkeypatch):
    """torch's sync debug mode raises on any call that makes the host wait for the GPU. It is on from the start of
    each step that is not a read point until the start of the next step (which includes preparing the batch of
    the step after: pinned memory, asynchronous copy)."""
    read_points = {1, 4, 8, 12}

    def before_step(context, step):
        torch.cuda.set_sync_debug_mode(0 if step in read_points else "error")

    StepSpy(monkeypatch, before_step)
    try:
        train(tiny_config(token_files, steps=12, log_interval=4, stats_interval=0, device="cuda"), tmp_path / "run")
    finally:
        torch.cuda.set_sync_debug_mode(0)


@cuda
def test_on_cuda_a_resumed_run_continues_with_the_batches_prepared_ahead(token_files, tmp_path):
    tokens = open_tokens(token_files["train"], 320)
    batches = TrainingBatches(tokens, 4, 16, np.random.default_rng(0), "cuda")
    (inputs, _), = batches.next_step()
    assert inputs.is_cuda and batches.prefetch
    config = tiny_config(token_files, steps=6, checkpoint_interval=3, device="cuda")
    train(config, tmp_path / "whole")
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    train(config, tmp_path / "resumed", resume=True, resume_from=3)  # steps 4-6 again, from step 3's sampler state
    whole, resumed = (last_loss_per_step(tmp_path / name, "train") for name in ("whole", "resumed"))
    # Identical windows give the same losses; CUDA kernels (embedding backward) may round differently.
    assert resumed == pytest.approx(whole, rel=1e-5)
