"""Accounting formulas against the real module and against hand computation (handout §3.6 and §4.3)."""

import pytest

import cs336_nn as nn_

GPT2 = {  # handout §3.6: vocab 50,257, context 1,024; (layers, d_model, heads, d_ff)
    "small": (12, 768, 12, 3072), "medium": (24, 1024, 16, 4096), "large": (36, 1280, 20, 5120),
    "xl": (48, 1600, 25, 6400),
}


def gpt2(size: str) -> nn_.ModelConfig:
    layers, d_model, heads, d_ff = GPT2[size]
    return nn_.ModelConfig(vocab_size=50257, context_length=1024, d_model=d_model, num_layers=layers,
                           num_heads=heads, d_ff=d_ff)


@pytest.mark.parametrize("variant", [{}, {"norm": "layernorm"}, {"norm": "none"}, {"ffn": "silu"},
                                     {"positions": "learned"}, {"tie_embeddings": True}, {"ffn": "relu", "d_ff": 40}])
def test_formula_equals_the_module(variant):
    config = nn_.ModelConfig(**{"vocab_size": 101, "context_length": 24, "d_model": 32, "num_layers": 3,
                                "num_heads": 4, **variant})
    model = nn_.TransformerLM(config)
    assert nn_.count_parameters(config) == sum(p.numel() for p in model.parameters())


def test_gpt2_parameter_counts_by_hand():
    # 2·V·d (embedding + lm_head) + L·(4d² + 3·d·d_ff + 2d) + d
    def by_hand(layers, d, d_ff):
        return 2 * 50257 * d + layers * (4 * d * d + 3 * d * d_ff + 2 * d) + d

    assert nn_.count_parameters(gpt2("xl")) == by_hand(48, 1600, 6400) == 2_127_057_600
    assert nn_.count_parameters(gpt2("small")) == by_hand(12, 768, 3072) == 190_460_160
    for size, (layers, d, _, d_ff) in GPT2.items():
        assert nn_.count_parameters(gpt2(size)) == by_hand(layers, d, d_ff), size
    # float32: 4 bytes per parameter, about 8.5 GB just to hold GPT-2 XL
    assert nn_.training_memory(gpt2("xl"), batch_size=1).parameters == 4 * 2_127_057_600


def test_gpt2_xl_forward_flops_by_hand():
    T, d, L, V, d_ff = 1024, 1600, 48, 50257, 6400
    flops = nn_.forward_flops(gpt2("xl"))
    assert flops.qkv_projections == L * 2 * T * d * 3 * d
    assert flops.attention_scores == flops.attention_values == L * 2 * T * T * d
    assert flops.output_projection == L * 2 * T * d * d
    assert flops.feed_forward == L * 3 * 2 * T * d * d_ff
    assert flops.lm_head == 2 * T * d * V
    assert flops.total == pytest.approx(4.513e12, rel=1e-3)
    assert max(flops.fractions(), key=flops.fractions().get) == "feed_forward"  # the FFN dominates
    # At 16,384 tokens of context the attention products overtake the feed-forward.
    long = nn_.forward_flops(gpt2("xl"), sequence_length=16_384).fractions()
    assert long["attention_scores"] + long["attention_values"] > long["feed_forward"]


def test_training_memory_by_hand_for_a_tiny_config():
    config = nn_.ModelConfig(vocab_size=10, context_length=4, d_model=8, num_layers=1, num_heads=2, d_ff=16)
    memory = nn_.training_memory(config, batch_size=3)
    B, T, d, H, d_ff, V = 3, 4, 8, 2, 16, 10
    activations = (2 * B * T * d + 3 * B * T * d + 2 * B * H * T * T + 2 * B * T * d + 4 * B * T * d_ff) \
        + B * T * d + 2 * B * T * V
    parameters = 2 * V * d + (4 * d * d + 3 * d * d_ff + 2 * d) + d
    assert memory.activations == 4 * activations
    assert memory.parameters == memory.gradients == 4 * parameters
    assert memory.optimizer_state == 8 * parameters
    assert memory.total == 4 * (4 * parameters + activations)
