"""`cs336-train account`: the handout's accounting answers for a GPT-2 preset, and config errors as one line."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import cs336_nn as nn_
from cs336_train.accounting_report import handout_report
from cs336_train.cli import account, main


def _invoke(*arguments):
    return CliRunner().invoke(main, ["account", *map(str, arguments)])


def test_preset_gpt2_xl_prints_the_handouts_answers():
    result = _invoke("--preset", "gpt2-xl")
    assert result.exit_code == 0, result.output
    for answer in [
        "d_ff 4,288",
        "1,640,452,800  = 6.56 GB to load in float32",  # transformer_accounting (a)
        "3,516,769,894,400  = 3.517 TFLOPs",  # (b)
        "the most FLOPs: feed-forward (57.5%)",  # (c)
        "gpt2-xl @ 16,384",  # (e)
        "total = 16.373 GB · batch_size + 26.247 GB",  # adamw_accounting (a)
        "the largest batch in 80 GB: 3",  # (b)
        "14 × 1,640,452,800 = 2.297e+10",  # (c)
        "4,850 hours = 202.1 days",  # (d)
    ]:
        assert answer in result.output, answer
    for size in nn_.GPT2_SHAPES:  # (d): every size's shares
        assert f"\n  {size} " in result.output


@pytest.mark.parametrize("preset", ["gpt2-small", "gpt2-medium", "gpt2-large"])
def test_every_preset_reports(preset):
    result = _invoke("--preset", preset)
    assert result.exit_code == 0, result.output
    assert f"{nn_.count_parameters(nn_.gpt2_config(preset)):,}" in result.output


def test_the_cli_offers_exactly_the_presets_cs336_nn_defines():
    choices = next(option for option in account.params if option.name == "preset").type.choices
    assert list(choices) == list(nn_.GPT2_SHAPES)


def test_preset_takes_no_config_or_overrides():
    for extra in (["tinystories_cpu"], ["--set", "model.d_model=64"]):
        result = _invoke("--preset", "gpt2-xl", *extra)
        assert result.exit_code == 2 and "give it without CONFIG or --set" in result.output


def test_switching_to_silu_alone_is_refused_with_the_fix():
    refused = _invoke("tinystories_cpu", "--set", "model.ffn=silu")
    assert refused.exit_code == 1
    assert "model.d_ff 704 is SwiGLU's size for d_model 256; a parameter-matched silu FFN needs d_ff = 4·d_model " \
           "= 1024: set it with --set model.d_ff=1024" in refused.output
    assert "Traceback" not in refused.output
    matched = _invoke("tinystories_cpu", "--set", "model.ffn=silu", "--set", "model.d_ff=0")
    assert matched.exit_code == 0, matched.output
    assert "8,268,032" in matched.output  # against SwiGLU's 8,333,568


def test_the_nn_readme_shows_what_the_command_prints():
    readme = (Path(__file__).parents[1] / "packages/nn/README.md").read_text(encoding="utf-8")
    shown = readme.split("What `cs336-train account --preset gpt2-xl` prints:\n\n```\n", 1)[1].split("\n```", 1)[0]
    assert shown == handout_report("gpt2-xl")


def test_a_config_reports_its_activations_with_and_without_checkpointing():
    result = _invoke("tinystories_cpu")
    assert result.exit_code == 0, result.output
    # tinystories_cpu: batch 8 in bf16 (2 bytes a value), context T 256, d 256, 4 layers, 8 heads, d_ff 704, V 10,000
    T, d, L, h, d_ff, V = 256, 256, 4, 8, 704, 10_000
    one_block = 8 * T * d + 2 * h * T * T + 4 * T * d_ff  # 2,293,760 values a sequence
    head = T * d + 2 * T * V  # final norm, logits, cross-entropy's softmax: 5,185,536
    every_block, checkpointed = L * one_block + head, L * T * d + one_block + head  # block inputs + one block
    gib = {name: f"{8 * 2 * values / 2**30:.3f}" for name, values in [("all", every_block), ("ckpt", checkpointed)]}
    assert gib == {"all": "0.214", "ckpt": "0.115"}
    assert f"  activations         {gib['all']:>12} GiB  (approximate, bf16)" in result.output
    assert f"    checkpointed      {gib['ckpt']:>12} GiB  (with activation checkpointing" in result.output
