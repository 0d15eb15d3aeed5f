"""The training configuration: TOML files under configs/, overrides, and errors for every kind of mistake."""

from pathlib import Path

import pytest

from cs336_train import ConfigError, TrainConfig
from cs336_train.config import parse_override
from cs336_train.trainer import learning_rate

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data.train=train.bin", "data.valid=valid.bin"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_round_trips_through_toml(path, tmp_path):
    config = TrainConfig.from_toml(path, DATA)
    saved = tmp_path / "config.toml"
    saved.write_text(config.to_toml())
    assert TrainConfig.from_toml(saved).to_dict() == config.to_dict()


def test_default_cpu_config_is_the_benchmark_budget():
    config = TrainConfig.from_toml(ROOT / "configs" / "tinystories_cpu.toml", DATA)
    assert config.run.steps * config.run.batch_size * config.model.context_length == 2_097_152
    assert (config.model.d_model, config.model.num_layers, config.model.num_heads) == (256, 4, 8)


@pytest.mark.parametrize(("text", "expected"), [
    ("optimizer.lr=1e-3", ("optimizer", "lr", 1e-3)),
    ("run.steps = 500", ("run", "steps", 500)),
    ("run.device=cpu", ("run", "device", "cpu")),
    ('run.device="cuda:1"', ("run", "device", "cuda:1")),
    ("run.compile=true", ("run", "compile", True)),
    ("optimizer.betas=[0.9, 0.99]", ("optimizer", "betas", [0.9, 0.99])),
])
def test_overrides_are_parsed_as_toml_values(text, expected):
    assert parse_override(text) == expected


def test_overrides_apply_and_ints_become_floats_where_floats_are_expected():
    config = TrainConfig.from_toml(ROOT / "configs" / "tinystories_cpu.toml", DATA + ["optimizer.lr=1", "run.steps=9"])
    assert config.optimizer.lr == 1.0 and isinstance(config.optimizer.lr, float)
    assert config.run.steps == 9


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer.lrr=1e-3"], r"unknown optimizer settings \['lrr'\]; valid ones are \[.*'lr'"),
    (["modle.d_model=3"], r"unknown configuration sections \['modle'\]"),
    (["run.steps=0"], "run.steps must be a positive integer"),
    (["run.batch_size=-4"], "run.batch_size must be a positive integer"),
    (["optimizer.lr=0"], "optimizer.lr must be a positive number"),
    (["optimizer.lr=nan"], "optimizer.lr must be a positive number"),
    (["optimizer.betas=[0.9, 1.5]"], "optimizer.betas must be two numbers"),
    (["run.precision=fp16"], "run.precision = 'fp16' is not one of fp32, bf16"),
    (["run.steps=1.5"], "should be a int"),
    (["run.batch_size=10", "run.grad_accum_steps=3"], "divisible by run.grad_accum_steps"),
    (["model.d_model=0"], "model.d_model must be a positive integer"),
    (["model.num_heads=7"], "divisible by model.num_heads"),
    (["model.norm=batchnorm"], "model.norm = 'batchnorm' is not one of"),
    (["data.train="], "data.train is not set"),
    (["runsteps=3"], "must look like section.key=value"),
])
def test_mistakes_are_errors_that_say_what_to_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_toml(ROOT / "configs" / "tinystories_cpu.toml", DATA + overrides)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_toml(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd_model = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        TrainConfig.from_toml(bad)
    no_model = tmp_path / "no_model.toml"
    no_model.write_text("[run]\nsteps = 3\n")
    with pytest.raises(ConfigError, match=r"no \[model\] section"):
        TrainConfig.from_toml(no_model)


def _config(**optimizer):
    values = {"model": {"vocab_size": 10, "context_length": 4, "d_model": 8, "num_layers": 1, "num_heads": 2},
              "optimizer": {"lr": 1.0, "min_lr_ratio": 0.1, "warmup_fraction": 0.1, **optimizer},
              "data": {"train": "t", "valid": "v"}, "run": {"steps": 100}}
    return TrainConfig.from_dict(values)


def test_learning_rate_schedules_follow_their_definitions():
    cosine = _config(schedule="cosine")
    assert learning_rate(cosine, 0) == 0.0
    assert learning_rate(cosine, 5) == pytest.approx(0.5)  # linear warm-up over 10 steps
    assert learning_rate(cosine, 10) == pytest.approx(1.0)
    assert learning_rate(cosine, 55) == pytest.approx(0.55)  # half-way through the cosine: the mean of max and min
    assert learning_rate(cosine, 100) == pytest.approx(0.1)
    wsd = _config(schedule="wsd", decay_fraction=0.2)
    assert learning_rate(wsd, 50) == 1.0 and learning_rate(wsd, 80) == 1.0
    assert learning_rate(wsd, 90) == pytest.approx(0.55)
    assert learning_rate(wsd, 100) == pytest.approx(0.1)
    constant = _config(schedule="constant")
    assert learning_rate(constant, 5) == pytest.approx(0.5) and learning_rate(constant, 99) == 1.0
