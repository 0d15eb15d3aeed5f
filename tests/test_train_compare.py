"""`cs336-train compare`: every component in its three implementations, their differences and times, in one table;
a deliberately broken implementation stands out in its row."""

import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from cs336_nn import components, reference
from cs336_nn.rmsnorm import RMSNorm
from cs336_optim import reference as optim_reference
from cs336_train import TrainConfig, train
from cs336_train.compare import compare_command
from tests.train_helpers import tiny_config_values

TINY = """
[model]
vocab_size = 64
context_length = 16
d_model = 32
num_layers = 2
num_heads = 4

[optimizer]
lr = 1e-3
"""
ROUNDING = 1e-4  # float32 rounding at these sizes is about 1e-6; a real bug is as large as the values


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


def compare_table(*arguments) -> dict[tuple[str, str], dict]:
    """Run the command; its table as {(component, impl): {"output": Δ, "gradient": Δ, "ms": time}}."""
    result = CliRunner().invoke(compare_command, [str(argument) for argument in arguments])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split()[:2] == ["component", "impl"], result.output
    table = {}
    for line in lines[2:]:
        if line.startswith("note, "):
            continue
        component, impl, output, gradient, milliseconds, speed = line.split()[:6]
        table[(component, impl)] = {"output": None if output == "-" else float(output),
                                    "gradient": None if gradient == "-" else float(gradient),
                                    "ms": float(milliseconds)}
    return table


def test_the_table_has_every_component_in_every_implementation_and_small_differences(tiny_config):
    table = compare_table(tiny_config, "--repeats", "2")
    components = ["norm", "attention", "ffn", "loss", "optimizer", "model"]
    expected = {(component, impl) for component in components for impl in ("reference", "scratch", "torch")}
    assert set(table) == expected | {("rope", "reference"), ("rope", "scratch")}  # RoPE has no torch built-in
    for (component, impl), row in table.items():
        assert row["ms"] > 0
        if impl == "reference":
            assert row["output"] is None and row["gradient"] is None
            continue
        if (component, impl) == ("optimizer", "torch"):  # ε placed elsewhere: a few steps of at most lr each
            assert row["output"] < 3 * 1e-3
        else:
            assert row["output"] < ROUNDING, (component, impl, row)
        if component == "optimizer":
            assert row["gradient"] is None
        else:
            assert row["gradient"] < ROUNDING, (component, impl, row)


def test_a_broken_scratch_rmsnorm_shows_in_its_row(tiny_config, monkeypatch):
    original = RMSNorm.forward
    monkeypatch.setattr(RMSNorm, "forward", lambda self, x: original(self, x) + 1e-2)  # the subclasses keep theirs
    table = compare_table(tiny_config, "--repeats", "1")
    assert table[("norm", "scratch")]["output"] == pytest.approx(1e-2, rel=1e-3)
    assert table[("norm", "torch")]["output"] < ROUNDING
    assert table[("model", "scratch")]["output"] > ROUNDING  # the whole model's loss moves with it
    assert table[("model", "torch")]["output"] < ROUNDING


def test_the_components_follow_the_architecture(tiny_config):
    table = compare_table(tiny_config, "--repeats", "1", "--batch", "1", "--set", "model.norm=none",
                          "--set", "model.positions=nope", "--set", "model.ffn=relu", "--set", "model.d_ff=0")
    assert {component for component, _ in table} == {"attention", "ffn", "loss", "optimizer", "model"}
    table = compare_table(tiny_config, "--repeats", "1", "--set", "model.norm=layernorm", "--set", "model.ffn=silu",
                          "--set", "model.d_ff=0")
    assert table[("norm", "torch")]["gradient"] < ROUNDING and table[("ffn", "torch")]["gradient"] < ROUNDING


def test_the_header_says_what_was_measured(tiny_config):
    result = CliRunner().invoke(compare_command, [str(tiny_config), "--batch", "3", "--repeats", "1"])
    assert result.output.splitlines()[0].startswith("compare tiny: float32 on cpu, 3 x 16 tokens")
    assert "median of 1 forward+backward passes" in result.output.splitlines()[0]
    assert "ffn        reference" in result.output and "swiglu: x (3, 16, 32), d_ff 64" in result.output


@pytest.mark.parametrize(("device", "message"), [("tpu", "is not a device; use auto"),
                                                  ("mps", "but MPS is not available here")])
def test_a_device_that_is_not_there_is_one_line_of_error(tiny_config, device, message):
    import torch

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    result = CliRunner().invoke(compare_command, [str(tiny_config), "--device", device])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert "component" not in result.output  # nothing measured, no half table


def test_an_unknown_config_is_a_clear_error():
    result = CliRunner().invoke(compare_command, ["no_such_config"])
    assert result.exit_code == 1 and "neither a file nor a bundled configuration" in result.output


def test_a_run_trains_alike_on_every_reference_implementation(token_files, tmp_path, monkeypatch):
    """What the table says of single steps, for training: the plain versions, chosen by the config end to end,
    take the same steps as the fast ones (AdamW's ε is placed alike in both, so only rounding differs)."""
    calls = Counter()

    def counted(name, function):
        def counting(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return counting

    monkeypatch.setattr(reference, "rmsnorm", counted("norm", reference.rmsnorm))
    monkeypatch.setattr(reference, "swiglu", counted("ffn", reference.swiglu))
    monkeypatch.setitem(components._CAUSAL_ATTENTION, "reference", counted("attention", reference.causal_attention))
    monkeypatch.setitem(components._LOSSES, "reference", counted("loss", reference.cross_entropy))
    monkeypatch.setattr(optim_reference.AdamW, "step", counted("optimizer", optim_reference.AdamW.step))

    def losses(impl: str, run_dir) -> list[float]:
        values = tiny_config_values(token_files, steps=5, loss_impl=impl)
        values["model"].update(norm_impl=impl, attention_impl=impl, ffn_impl=impl)
        values["optimizer"]["impl"] = impl
        result = train(TrainConfig.from_dict(values), run_dir)
        saved = TrainConfig.from_toml(result.run_dir / "config.toml")  # what the run directory records
        assert (saved.model.ffn_impl, saved.run.loss_impl, saved.optimizer.impl) == (impl, impl, impl)
        records = map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
        return [record["loss"] for record in records if record["kind"] == "train"]

    scratch = losses("scratch", tmp_path / "scratch")
    assert not calls
    plain = losses("reference", tmp_path / "reference")
    assert set(calls) == {"norm", "ffn", "attention", "loss", "optimizer"} and calls["optimizer"] == 5
    assert len(plain) == 5
    np.testing.assert_allclose(plain, scratch, rtol=1e-5)
