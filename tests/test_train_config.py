"""The training configuration: the bundled TOML files, overrides, and errors for every kind of mistake."""

import re

import pytest

from cs336_train import ConfigError, TrainConfig
from cs336_train.config import parse_override
from cs336_train.config_files import CONFIG_DIR
from cs336_train.schedule import learning_rate

DATA = ["data.train=train.bin", "data.valid=valid.bin"]
BUNDLED = sorted(CONFIG_DIR.glob("*.toml"))
CPU_CONFIG = CONFIG_DIR / "tinystories_cpu.toml"


def _bundled(name: str) -> TrainConfig:
    return TrainConfig.from_toml(CONFIG_DIR / f"{name}.toml", DATA)


def _tokens(config: TrainConfig) -> int:
    return config.run.steps * config.run.batch_size * config.model.context_length


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_every_bundled_config_is_valid_and_round_trips_through_toml(path, tmp_path):
    config = TrainConfig.from_toml(path, DATA)
    saved = tmp_path / "config.toml"
    saved.write_text(config.to_toml())
    assert TrainConfig.from_toml(saved).to_dict() == config.to_dict()


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_every_bundled_config_says_what_it_is_for_and_its_sizes_agree(path):
    header = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    assert re.search(r"\b(CPU|GPU|B200|mps)\b", header), "the header says which device the config is for"
    assert re.search(r"\b(minutes|hours?)\b", header), "the header says how long it takes"
    config = TrainConfig.from_toml(path, DATA)
    model = config.model
    assert model.d_model % model.num_heads == 0 and config.run.batch_size % config.run.grad_accum_steps == 0
    stated = re.search(r"([\d,]{7,}) (?:training )?tokens", header)
    if config.run.time_budget_s:  # its token count is whatever fits in the time
        assert config.run.steps * config.run.batch_size * model.context_length > 10**9  # a cap, never the limit
    else:
        assert stated and int(stated.group(1).replace(",", "")) == _tokens(config), "the header's token budget"


def test_default_cpu_config_is_the_benchmark_budget():
    config = TrainConfig.from_toml(CPU_CONFIG, DATA)
    assert _tokens(config) == 2_097_152
    assert (config.model.d_model, config.model.num_layers, config.model.num_heads) == (256, 4, 8)


def test_the_handouts_runs_are_bundled_with_their_numbers():
    course, owt = _bundled("tinystories_course"), _bundled("owt_course")
    # §7.4: the TinyStories model and iterations on OpenWebText, with a 32K vocabulary.
    assert owt.model.vocab_size == 32_000 and _tokens(owt) == _tokens(course) == 327_680_000
    assert {**owt.model.to_dict(), "vocab_size": 0} == {**course.model.to_dict(), "vocab_size": 0}
    assert (owt.run.batch_size, owt.run.steps) == (course.run.batch_size, course.run.steps)
    # The low-resource tip: 32 x 5000 x 256 tokens, on whatever the machine has.
    low = _bundled("tinystories_low_resource")
    assert (low.run.batch_size, low.run.steps, low.model.context_length) == (32, 5000, 256)
    assert _tokens(low) == 40_960_000 and low.run.device == "auto" and not low.run.compile
    # §7.5: 45 minutes of training on OpenWebText, the schedule following the clock.
    leaderboard = _bundled("leaderboard")
    assert leaderboard.run.time_budget_s == 2700 and leaderboard.model.vocab_size == 32_000
    assert "owt" in leaderboard.data.tokenizer and leaderboard.run.compile


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
    config = TrainConfig.from_toml(CPU_CONFIG, DATA + ["optimizer.lr=1", "run.steps=9"])
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
        TrainConfig.from_toml(CPU_CONFIG, DATA + overrides)


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


def _config(run=None, **optimizer):
    values = {"model": {"vocab_size": 10, "context_length": 4, "d_model": 8, "num_layers": 1, "num_heads": 2},
              "optimizer": {"lr": 1.0, "min_lr_ratio": 0.1, "warmup_fraction": 0.1, **optimizer},
              "data": {"train": "t", "valid": "v"}, "run": {"steps": 100, **(run or {})}}
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


def test_with_a_time_budget_the_schedule_runs_on_training_seconds_whatever_the_step():
    budget = {"time_budget_s": 200.0, "steps": 1_000_000}  # run.steps is only a cap
    cosine = _config(budget, schedule="cosine")
    for step in (0, 7, 999_999):  # the step number no longer matters
        assert learning_rate(cosine, step, elapsed_s=10.0) == pytest.approx(0.5)  # warm-up: 10% of 200 s
        assert learning_rate(cosine, step, elapsed_s=110.0) == pytest.approx(0.55)  # half-way through the decay
        assert learning_rate(cosine, step, elapsed_s=200.0) == pytest.approx(0.1)
        assert learning_rate(cosine, step, elapsed_s=260.0) == pytest.approx(0.1)
    wsd = _config(budget, schedule="wsd", decay_fraction=0.2)
    assert learning_rate(wsd, 0, elapsed_s=150.0) == 1.0  # decay: the last 20% of the 200 s
    assert learning_rate(wsd, 0, elapsed_s=180.0) == pytest.approx(0.55)
