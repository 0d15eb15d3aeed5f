"""The instruments for training dynamics, bits per byte, the divergence report and the overfit-one-batch check,
each against a computation written out here independently."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cs336_bpe.corpus import metadata_path
from cs336_nn import TransformerLM, cross_entropy
from cs336_optim import make_adamw, parameter_groups
from cs336_train import TrainConfig, TrainingDiverged, runtime, train
from cs336_train.cli import main
from cs336_train.data import bytes_per_token, open_tokens, sample_window_starts, windows_at
from cs336_train.metrics import bits_per_byte
from cs336_train.overfit import overfit_one_batch
from tests.train_helpers import tiny_config, tiny_config_values, write_config

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _records(run_dir, kind):
    return [record for record in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if record["kind"] == kind]


def _with_optimizer(token_files, optimizer: dict, **run) -> TrainConfig:
    values = tiny_config_values(token_files, **run)
    values["optimizer"].update(optimizer)
    return TrainConfig.from_dict(values)


def _group_of(name: str) -> str:
    """Written out by hand, not imported: which part of the model a parameter belongs to."""
    parts = name.split(".")
    if parts[0] == "layers":
        return f"layers.{parts[1]}." + {"attn": "attn", "ffn": "ffn", "ln1": "norms", "ln2": "norms"}[parts[2]]
    return parts[0]


def _norm(tensors) -> float:
    return float(torch.cat([tensor.detach().flatten().double() for tensor in tensors]).norm())


def test_the_first_step_statistics_match_a_direct_computation(token_files, tmp_path):
    config = tiny_config(token_files, steps=1, stats_interval=64)
    run_dir = train(config, tmp_path / "run").run_dir
    (stats,) = _records(run_dir, "stats")
    assert stats["step"] == 1 and set(stats) >= {"grad_norm", "weight_norm", "update_ratio", "activation_rms",
                                                 "attention_entropy", "lr", "tokens", "wall_s"}

    # Step 1 again, by hand: the trainer's seed, its first batch, one forward/backward, one AdamW step.
    runtime.seed_everything(config.run.seed)
    model = TransformerLM(config.model)
    optimizer = make_adamw(parameter_groups(model.named_parameters(), config.optimizer.weight_decay),
                           lr=stats["lr"], betas=config.optimizer.betas, eps=config.optimizer.eps,
                           weight_decay=config.optimizer.weight_decay)
    tokens = open_tokens(token_files["train"], config.model.vocab_size)
    starts = sample_window_starts(len(tokens), config.run.batch_size, config.model.context_length,
                                  np.random.default_rng(config.run.seed))
    inputs, targets = windows_at(tokens, starts, config.model.context_length, "cpu")
    cross_entropy(model(inputs), targets).backward()
    names = dict(model.named_parameters())
    groups = sorted({_group_of(name) for name in names})
    members = {group: [p for name, p in names.items() if _group_of(name) == group] for group in groups}
    assert sorted(stats["grad_norm"]) == groups
    before = {group: [p.detach().clone() for p in members[group]] for group in groups}
    for group in groups:  # before clipping (the trainer clips after measuring)
        assert stats["grad_norm"][group] == pytest.approx(_norm(p.grad for p in members[group]), rel=1e-4), group
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip)
    optimizer.step()
    assert stats["lr"] > 0
    for group in groups:
        weights = members[group]
        assert stats["weight_norm"][group] == pytest.approx(_norm(weights), rel=1e-4), group
        change = _norm(p - old for p, old in zip(weights, before[group], strict=True))
        assert stats["update_ratio"][group] == pytest.approx(change / _norm(weights), rel=1e-3), group

    # After the step: activations of the first 4 sequences, block by block, and the attention entropy from the
    # textbook formula, softmax(Q Kᵀ / sqrt(d_head)) with the causal mask.
    probe = inputs[:4]
    with torch.no_grad():
        x = model.token_embeddings(probe)
        for index, layer in enumerate(model.layers):
            h = layer.ln1(x)
            heads = config.model.num_heads
            q = (h @ layer.attn.q_proj.weight.T).unflatten(-1, (heads, -1)).transpose(1, 2)
            k = (h @ layer.attn.k_proj.weight.T).unflatten(-1, (heads, -1)).transpose(1, 2)
            positions = torch.arange(probe.shape[1])
            q, k = model.rope(q, positions), model.rope(k, positions)
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            mask = torch.ones(probe.shape[1], probe.shape[1], dtype=torch.bool).tril()
            p = torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1)
            entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1).mean()
            assert stats["attention_entropy"][f"layers.{index}"] == pytest.approx(float(entropy), rel=1e-4)
            x = layer(x)
            assert stats["activation_rms"][f"layers.{index}"] == pytest.approx(float(x.pow(2).mean().sqrt()),
                                                                                rel=1e-4)


def test_statistics_come_at_step_1_and_every_stats_interval(token_files, tmp_path):
    run_dir = train(tiny_config(token_files, steps=7, stats_interval=3), tmp_path / "run").run_dir
    assert [record["step"] for record in _records(run_dir, "stats")] == [1, 3, 6]
    quiet = train(tiny_config(token_files, steps=4, stats_interval=0), tmp_path / "quiet").run_dir
    assert _records(quiet, "stats") == []


def test_bits_per_byte_on_a_hand_built_case(tmp_path):
    # 2 nats per token, 4 bytes per token: 2 / ln 2 = 2.885 bits per token, 0.7213 bits per byte.
    assert bits_per_byte(2.0, 4.0) == pytest.approx(2.0 / math.log(2) / 4.0)
    assert bits_per_byte(2.0, None) is None and bits_per_byte(float("nan"), 4.0) is None
    tokens = tmp_path / "t.bin"
    np.arange(10, dtype=np.uint16).tofile(tokens)
    metadata_path(tokens).write_text(json.dumps({
        "format": "cs336-tokens-v2", "dtype": "uint16", "num_tokens": 10, "vocab_size": 300,
        "tokenizer_fingerprint": "x", "source_bytes": 43}))
    assert bytes_per_token(tokens) == pytest.approx(4.3)


def test_validation_reports_bits_per_byte_from_the_files_own_byte_count(token_files, tmp_path):
    run_dir = train(tiny_config(token_files, steps=3), tmp_path / "run").run_dir
    (valid,) = _records(run_dir, "valid")
    metadata = json.loads(metadata_path(token_files["valid"]).read_text())
    expected = valid["loss"] / math.log(2) * metadata["num_tokens"] / metadata["source_bytes"]
    assert valid["bits_per_byte"] == pytest.approx(expected, rel=1e-12)
    evaluated = CliRunner().invoke(main, ["eval", str(run_dir), "--data", str(token_files["valid"]),
                                          "--device", "cpu"])
    assert json.loads(evaluated.output.splitlines()[-1])["bits_per_byte"] == pytest.approx(expected, rel=1e-6)


def test_a_divergence_reports_the_step_the_last_finite_loss_and_the_largest_gradients(token_files, tmp_path):
    config = _with_optimizer(token_files, {"lr": 1e6, "grad_clip": 0.0, "warmup_fraction": 0.0}, steps=200,
                             stats_interval=0)
    with pytest.raises(TrainingDiverged) as raised:
        train(config, tmp_path / "run")
    error = raised.value
    records = {record["step"]: record["loss"] for record in _records(tmp_path / "run", "train")}
    assert error.step >= 2 and math.isfinite(error.last_finite_loss)
    assert error.largest_grad_norms and len(error.largest_grad_norms) <= 3
    message = str(error)
    assert f"at step {error.step}" in message and "largest gradient norms" in message
    assert "set optimizer.grad_clip" in message  # clipping is off here, so the advice includes it
    (diverged,) = _records(tmp_path / "run", "diverged")
    assert diverged["step"] == error.step - 1 and diverged["last_finite_loss"] == error.last_finite_loss
    if error.step - 1 in records:
        assert records[error.step - 1] == pytest.approx(error.last_finite_loss)


def test_the_divergence_advice_does_not_ask_for_clipping_that_is_already_on(token_files, tmp_path):
    config = _with_optimizer(token_files, {"lr": 1e6, "grad_clip": 1.0, "warmup_fraction": 0.0}, steps=200,
                             stats_interval=0)
    with pytest.raises(TrainingDiverged) as raised:
        train(config, tmp_path / "run")
    assert "grad_clip" not in str(raised.value) and "Lower optimizer.lr (1e+06)" in str(raised.value)


def test_overfit_one_batch_passes_for_a_working_model_and_explains_a_broken_one(token_files):
    config = tiny_config(token_files)
    passed = overfit_one_batch(config, steps=150, batch_size=2, lr=1e-2, say=lambda line: None)
    assert passed.passed and passed.losses[-1] <= 0.1 < passed.losses[0]
    stuck = overfit_one_batch(config, steps=20, batch_size=2, lr=1e-9, say=lambda line: None)
    assert not stuck.passed and "barely moved" in stuck.message and "detached" in stuck.message


def test_the_overfit_command_exits_1_with_the_reason(token_files, tmp_path):
    config_path = write_config(tmp_path / "config.toml", tiny_config(token_files))
    result = CliRunner().invoke(main, ["overfit", str(config_path), "--steps", "5", "--lr", "1e-9"])
    assert result.exit_code == 1 and "barely moved" in result.output


def test_deterministic_mode_is_switched_on_and_off_by_the_config():
    runtime.configure_backends(torch.device("cpu"), 0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    runtime.configure_backends(torch.device("cpu"), 0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
