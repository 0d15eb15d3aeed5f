"""The SwiGLU-vs-SiLU trap (handout swiglu_ablation): a plain FFN must not silently keep SwiGLU's d_ff.

SwiGLU has three d_model × d_ff matrices, a plain MLP two, so parameter-matching needs d_ff = 8/3·d_model for
the first and 4·d_model for the second. Switching `ffn` alone on a config that states SwiGLU's d_ff (the CPU
config: d_model 256, d_ff 704) would compare 7,612,672 parameters with SwiGLU's 8,333,568.
"""

import pytest

import cs336_nn as nn_

CPU = dict(vocab_size=10_000, context_length=256, d_model=256, num_layers=4, num_heads=8)  # configs/tinystories_cpu


@pytest.mark.parametrize("ffn", ["silu", "relu"])
def test_a_plain_ffn_refuses_swiglus_d_ff_and_takes_an_explicit_one(ffn):
    with pytest.raises(ValueError) as refused:
        nn_.ModelConfig(**CPU, d_ff=704, ffn=ffn)
    message = str(refused.value)
    assert "\n" not in message
    assert f"model.d_ff 704 is SwiGLU's size for d_model 256; a parameter-matched {ffn} FFN needs d_ff = " \
           "4·d_model = 1024" in message
    assert "--set model.d_ff=1024" in message and "model.d_ff=0" in message
    # Any other explicit size is a deliberate choice and is kept.
    assert nn_.ModelConfig(**CPU, d_ff=1024, ffn=ffn).d_ff == 1024
    assert nn_.ModelConfig(**CPU, d_ff=512, ffn=ffn).d_ff == 512
    assert nn_.ModelConfig(**CPU, d_ff=704).d_ff == 704  # SwiGLU's own size stays fine for SwiGLU


def test_d_ff_zero_is_the_parameter_matched_default_of_each_ffn():
    swiglu = nn_.ModelConfig(**CPU, d_ff=0)
    silu = nn_.ModelConfig(**CPU, d_ff=0, ffn="silu")
    assert (swiglu.d_ff, silu.d_ff) == (704, 1024)  # 8/3·256 = 682.7 -> 704; 4·256
    assert nn_.ModelConfig(**CPU, ffn="silu").d_ff == 1024  # unset means the same
    # Whole model: 8,268,032 (silu) against 8,333,568 (swiglu), 0.8% apart; the feed-forward alone 2·256·1024 =
    # 524,288 against 3·256·704 = 540,672 a layer (704 is 682.7 rounded up to a multiple of 64).
    assert (nn_.count_parameters(silu), nn_.count_parameters(swiglu)) == (8_268_032, 8_333_568)
    assert nn_.count_parameters(silu) == pytest.approx(nn_.count_parameters(swiglu), rel=0.01)
    model = nn_.TransformerLM(silu)
    assert model.layers[0].ffn.w1.weight.shape == (1024, 256)
    assert sum(p.numel() for p in model.parameters()) == 8_268_032


def test_d_ff_must_be_zero_or_positive():
    with pytest.raises(ValueError, match="model.d_ff must be a positive integer, or 0 for the parameter-matched"):
        nn_.ModelConfig(**CPU, d_ff=-64)
