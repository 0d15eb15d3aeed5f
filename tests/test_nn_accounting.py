"""Accounting formulas against the real module and against hand computation (handout §3.6 and §4.3)."""

import doctest

import pytest
import torch

import cs336_nn as nn_
from cs336_nn import accounting

XL = dict(V=50257, T=1024, L=48, d=1600, h=25, d_ff=4288)  # handout §3.6 (a), d_ff as the handout states it


def by_hand_parameters(V, L, d, d_ff, **_):
    # 2·V·d (embedding + lm_head) + L·(4d² + 3·d·d_ff + 2d) + d
    return 2 * V * d + L * (4 * d * d + 3 * d * d_ff + 2 * d) + d


def by_hand_activation_values(V, T, L, d, h, d_ff):
    # per block: 2 norms (2Td), QKV (3Td), QKᵀ and softmax (2hT²), weighted sum and output projection (2Td),
    # W1, W3, SiLU and product (4T·d_ff), W2 (Td); then final norm (Td), logits (TV), cross-entropy softmax (TV)
    return L * (8 * T * d + 4 * T * d_ff + 2 * h * T * T) + T * d + 2 * T * V


def test_the_module_docstrings_hold():  # the worked GPT-2 XL example at the top of accounting.py
    assert doctest.testmod(accounting).failed == 0


@pytest.mark.parametrize("variant", [{}, {"norm": "layernorm"}, {"norm": "none"}, {"ffn": "silu"},
                                     {"positions": "learned"}, {"tie_embeddings": True}, {"ffn": "relu", "d_ff": 40}])
def test_formula_equals_the_module(variant):
    config = nn_.ModelConfig(**{"vocab_size": 101, "context_length": 24, "d_model": 32, "num_layers": 3,
                                "num_heads": 4, **variant})
    model = nn_.TransformerLM(config)
    assert nn_.count_parameters(config) == sum(p.numel() for p in model.parameters())


def test_presets_are_the_handouts_gpt2_shapes():
    xl = nn_.gpt2_config("gpt2-xl")
    assert (xl.vocab_size, xl.context_length, xl.num_layers, xl.d_model, xl.num_heads, xl.d_ff) == \
        (50257, 1024, 48, 1600, 25, 4288)
    assert (xl.norm, xl.positions, xl.ffn, xl.tie_embeddings) == ("rmsnorm", "rope", "swiglu", False)
    shapes = {name: (c.num_layers, c.d_model, c.num_heads, c.d_ff)
              for name in nn_.GPT2_SHAPES for c in [nn_.gpt2_config(name)]}
    # d_ff for the sizes the handout gives none: the multiple of 64 nearest 8/3·d_model (2,048.0; 2,730.7; 3,413.3)
    assert shapes == {"gpt2-small": (12, 768, 12, 2048), "gpt2-medium": (24, 1024, 16, 2752),
                      "gpt2-large": (36, 1280, 20, 3392), "gpt2-xl": (48, 1600, 25, 4288)}
    assert nn_.gpt2_config("gpt2-xl", context_length=16_384).context_length == 16_384
    with pytest.raises(ValueError, match="unknown GPT-2 preset 'gpt2-xxl'; choose one of gpt2-small"):
        nn_.gpt2_config("gpt2-xxl")


@pytest.mark.parametrize("preset", list(accounting.GPT2_SHAPES))
def test_preset_parameter_counts_equal_the_module(preset):
    # An independent count: build the real TransformerLM (on the meta device: shapes without memory) and sum numel.
    config = nn_.gpt2_config(preset)
    with torch.device("meta"):
        model = nn_.TransformerLM(config)
    counts = nn_.parameter_count(config)
    assert counts.total == nn_.count_parameters(config) == sum(p.numel() for p in model.parameters())
    assert counts.embedding == model.token_embeddings.weight.numel() + model.lm_head.weight.numel()
    assert counts.non_embedding == sum(p.numel() for p in model.layers.parameters()) + model.ln_final.weight.numel()


def test_gpt2_xl_parameters_by_hand():
    assert by_hand_parameters(**XL) == 1_640_452_800
    assert nn_.count_parameters(nn_.gpt2_config("gpt2-xl")) == 1_640_452_800
    counts = nn_.parameter_count(nn_.gpt2_config("gpt2-xl"))
    assert counts.embedding == 2 * 50257 * 1600 == 160_822_400
    assert counts.non_embedding == 48 * (4 * 1600**2 + 3 * 1600 * 4288 + 2 * 1600) + 1600 == 1_479_630_400
    # float32: 4 bytes per parameter, 6.56 GB just to hold GPT-2 XL
    assert nn_.training_memory(nn_.gpt2_config("gpt2-xl"), batch_size=1).parameters == 4 * 1_640_452_800


def test_gpt2_xl_forward_flops_by_hand():
    T, d, L, V, d_ff = XL["T"], XL["d"], XL["L"], XL["V"], XL["d_ff"]
    flops = nn_.forward_flops(nn_.gpt2_config("gpt2-xl"))
    assert flops.qkv_projections == L * 2 * T * d * 3 * d
    assert flops.attention_scores == flops.attention_values == L * 2 * T * T * d
    assert flops.output_projection == L * 2 * T * d * d
    assert flops.feed_forward == L * 3 * 2 * T * d * d_ff
    assert flops.lm_head == 2 * T * d * V
    # per layer 15,728,640,000 + 2 x 3,355,443,200 + 5,242,880,000 + 42,152,755,200 = 69,835,161,600;
    # x 48 + lm_head 164,682,137,600
    assert flops.total == 48 * 69_835_161_600 + 164_682_137_600 == 3_516_769_894_400
    assert max(flops.fractions(), key=flops.fractions().get) == "feed_forward"  # the FFN dominates


def test_flop_shares_sum_to_one_and_move_as_the_handout_describes():
    configs = [nn_.gpt2_config(name) for name in accounting.GPT2_SHAPES]
    shares = [nn_.forward_flops(config).component_shares() for config in configs]
    for config, share in zip(configs, shares, strict=True):
        assert sum(share.values()) == pytest.approx(1.0)
        assert sum(nn_.forward_flops(config).fractions().values()) == pytest.approx(1.0)
    # Growing the model: the FFN and projections (∝ d²) take more, the LM head (∝ d·V) and QKᵀ (∝ T²·d) less.
    for group, direction in [("feed-forward", 1), ("attention projections", 1), ("LM head", -1),
                             ("QKᵀ and weighted sum", -1)]:
        values = [share[group] for share in shares]
        assert values == sorted(values, reverse=direction < 0), group
    # At 16,384 tokens of context the attention products overtake everything else.
    long = nn_.forward_flops(nn_.gpt2_config("gpt2-xl"), sequence_length=16_384)
    assert sum(long.component_shares().values()) == pytest.approx(1.0)
    assert max(long.component_shares(), key=long.component_shares().get) == "QKᵀ and weighted sum"
    assert long.total == pytest.approx(38.0 * nn_.forward_flops(nn_.gpt2_config("gpt2-xl")).total, rel=1e-3)


def test_training_memory_by_hand_for_a_tiny_config():
    config = nn_.ModelConfig(vocab_size=10, context_length=4, d_model=8, num_layers=1, num_heads=2, d_ff=16)
    memory = nn_.training_memory(config, batch_size=3)
    B, T, d, H, d_ff, V = 3, 4, 8, 2, 16, 10
    activations = (2 * B * T * d + 3 * B * T * d + 2 * B * H * T * T + 2 * B * T * d + 4 * B * T * d_ff
                   + B * T * d) + B * T * d + 2 * B * T * V
    parameters = 2 * V * d + (4 * d * d + 3 * d * d_ff + 2 * d) + d
    assert memory.activations == 4 * activations
    assert memory.parameters == memory.gradients == 4 * parameters
    assert memory.optimizer_state == 8 * parameters
    assert memory.total == 4 * (4 * parameters + activations)


def test_activation_checkpointing_memory_by_hand_for_a_tiny_config():
    config = nn_.ModelConfig(vocab_size=10, context_length=4, d_model=8, num_layers=2, num_heads=2, d_ff=16)
    B, T, d, H, d_ff, V, L = 3, 4, 8, 2, 16, 10, 2
    one_block = 2 * T * d + 3 * T * d + 2 * H * T * T + 2 * T * d + 4 * T * d_ff + T * d  # 576 = 8Td + 2HT² + 4T·d_ff
    head = T * d + 2 * T * V  # final norm, logits, cross-entropy's softmax
    # Without checkpointing every block's activations are kept; with it, each block's input (T·d) and one block's
    # activations, recomputed during the backward pass.
    assert nn_.training_memory(config, B).activations == 4 * B * (L * one_block + head) == 15_168
    checkpointed = nn_.training_memory(config, B, activation_checkpointing=True)
    assert checkpointed.activations == 4 * B * (L * T * d + one_block + head) == 9_024
    assert checkpointed.fixed == nn_.training_memory(config, B).fixed  # weights, gradients and AdamW state stay
    assert sum(nn_.checkpointed_activation_counts(config).values()) == L * T * d + one_block + head


@pytest.mark.parametrize("batch_size", [1, 7])
def test_gpt2_xl_peak_memory_is_a_times_batch_plus_b(batch_size):
    memory = nn_.training_memory(nn_.gpt2_config("gpt2-xl"), batch_size=batch_size)
    # a: 4 bytes x [48 x (8·1024·1600 + 4·1024·4288 + 2·25·1024²) + 1024·1600 + 2·1024·50257] = 4 x 4,093,347,840
    a = 4 * by_hand_activation_values(**XL)
    b = 16 * by_hand_parameters(**XL)  # parameters 4P, gradients 4P, AdamW m and v 8P
    assert (a, b) == (16_373_391_360, 26_247_244_800)
    assert (memory.per_sequence, memory.fixed) == (a, b)
    assert memory.total == a * batch_size + b == {1: 42_620_636_160, 7: 140_860_984_320}[batch_size]
    assert sum(nn_.activation_counts(nn_.gpt2_config("gpt2-xl")).values()) * 4 * batch_size == memory.activations


def test_the_largest_batch_fits_in_80_gb_and_the_next_does_not():
    xl = nn_.gpt2_config("gpt2-xl")
    best = nn_.training_memory(xl, batch_size=1).max_batch_size(80e9)
    assert best == 3  # (80e9 - 26.25e9) / 16.37e9 = 3.28
    assert nn_.training_memory(xl, best).total <= 80e9 < nn_.training_memory(xl, best + 1).total
    assert nn_.training_memory(xl, 1).max_batch_size(20e9) == 0  # not even the weights and AdamW state fit


def test_adamw_flops_and_the_days_to_train_gpt2_xl():
    xl = nn_.gpt2_config("gpt2-xl")
    # weight decay 2, m 3, v 4, update 5 element-wise operations per parameter
    assert nn_.adamw_step_flops(xl) == 14 * 1_640_452_800 == 22_966_339_200
    step = 3 * 3_516_769_894_400 * 1024 + 22_966_339_200  # backward = 2 x forward, plus AdamW
    assert nn_.training_step_flops(xl, batch_size=1024) == step
    seconds = nn_.training_time_s(xl, steps=400_000, batch_size=1024)
    assert seconds == pytest.approx(400_000 * step / (0.5 * 495e12))
    assert seconds / 86_400 == pytest.approx(202.09, abs=0.01)  # 4,850 hours
