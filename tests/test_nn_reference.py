"""cs336_nn.reference, the plain version of each part, against torch's built-ins and independent formulations; and
each component's three implementations (reference, scratch, torch), as a ModelConfig selects them, against it."""

import dataclasses
import doctest

import pytest
import torch
import torch.nn.functional as F

import cs336_nn as nn_
from cs336_nn import reference
from cs336_nn.components import causal_attention_for, make_ffn, make_norm
from tests.nn_helpers import assert_close, values_and_grads

torch.manual_seed(0)


def assert_same_values_and_grads(function, expected_function, *inputs, atol=1e-5, rtol=1e-4):
    out, grads = values_and_grads(function, *inputs)
    expected, expected_grads = values_and_grads(expected_function, *inputs)
    assert_close(out, expected, atol, rtol)
    for ours, theirs in zip(grads, expected_grads, strict=True):
        assert_close(ours, theirs, atol, rtol)


def test_the_docstring_examples_hold():
    assert doctest.testmod(reference).failed == 0


def test_softmax_matches_builtin_along_any_axis_and_for_huge_values():
    x = torch.randn(4, 11) * 5
    for dim in (0, 1, -1):
        assert_same_values_and_grads(lambda t, dim=dim: reference.softmax(t, dim), lambda t, dim=dim: F.softmax(t, dim),
                                     x)
    huge = torch.tensor([[1000.0, 1001.0, 999.0], [-1e4, 0.0, 1e4]])
    assert torch.isfinite(reference.softmax(huge)).all()
    assert_close(reference.softmax(huge), F.softmax(huge, -1))


def test_rmsnorm_matches_builtin_and_keeps_the_input_dtype():
    weight = torch.randn(32)
    x = torch.randn(2, 9, 32) * 3
    assert_same_values_and_grads(lambda t, w: reference.rmsnorm(t, w, 1e-5), lambda t, w: F.rms_norm(t, (32,), w, 1e-5),
                                 x, weight)
    assert reference.rmsnorm(x.bfloat16(), weight).dtype == torch.bfloat16


def test_silu_relu_and_swiglu_match_builtins():
    x = torch.randn(3, 7, 16) * 4
    assert_same_values_and_grads(reference.silu, F.silu, x)
    assert_same_values_and_grads(reference.relu, F.relu, x)
    w1, w3, w2 = torch.randn(40, 16) / 4, torch.randn(40, 16) / 4, torch.randn(16, 40) / 6
    assert_same_values_and_grads(
        reference.swiglu, lambda x, w1, w2, w3: F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2),
        x, w1, w2, w3)


def test_linear_and_embedding_match_builtins():
    x, weight = torch.randn(3, 5, 24), torch.randn(40, 24)
    assert_same_values_and_grads(reference.linear, F.linear, x, weight)
    ids = torch.randint(0, 40, (4, 7))
    assert torch.equal(reference.embedding(ids, weight), F.embedding(ids, weight))


@pytest.mark.parametrize("batch_shape", [(3,), (2, 4)])
def test_scaled_dot_product_attention_matches_builtin_with_and_without_a_mask(batch_shape):
    Q, K, V = torch.randn(*batch_shape, 6, 8), torch.randn(*batch_shape, 9, 8), torch.randn(*batch_shape, 9, 5)
    mask = torch.rand(6, 9) > 0.3
    mask[:, 0] = True  # every query may see at least one key
    assert_same_values_and_grads(lambda q, k, v: reference.scaled_dot_product_attention(q, k, v, mask),
                                 lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), Q, K, V)
    assert_same_values_and_grads(reference.scaled_dot_product_attention, F.scaled_dot_product_attention, Q, K, V)


@pytest.mark.parametrize("queries", [9, 4, 1])
def test_causal_attention_sees_only_the_past_also_with_fewer_queries_than_keys(queries):
    q, k, v = torch.randn(2, 3, queries, 8), torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 6)
    allowed = torch.ones(queries, 9, dtype=torch.bool).tril(diagonal=9 - queries)  # query i sits at 9 - queries + i
    assert_same_values_and_grads(reference.causal_attention,
                                 lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), q, k, v)


def test_rope_is_a_complex_rotation():
    """An independent formulation: pair (x[2k], x[2k+1]) is the complex number x[2k] + i x[2k+1], and the rotation
    by angle a is a multiplication by e^(ia)."""
    x, positions = torch.randn(2, 3, 12, 16, dtype=torch.float64), torch.randint(0, 500, (2, 3, 12))
    angles = positions[..., None].double() * 10_000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    as_complex = torch.view_as_complex(x.reshape(2, 3, 12, 8, 2))
    rotated = torch.view_as_real(as_complex * torch.polar(torch.ones_like(angles), angles)).reshape(x.shape)
    torch.testing.assert_close(reference.rope(x, positions, 10_000.0), rotated)


def test_multihead_self_attention_matches_torchs_multihead_attention():
    d_model, heads = 32, 4
    weights = {name: torch.randn(d_model, d_model) / d_model**0.5
               for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "output_proj.weight")}
    builtin = torch.nn.MultiheadAttention(d_model, heads, bias=False, batch_first=True)
    with torch.no_grad():
        builtin.in_proj_weight.copy_(torch.cat([weights[f"{n}_proj.weight"] for n in "qkv"]))
        builtin.out_proj.weight.copy_(weights["output_proj.weight"])
    x = torch.randn(2, 10, d_model)
    future = torch.ones(10, 10, dtype=torch.bool).triu(diagonal=1)  # True = may not attend, torch's convention
    expected, _ = builtin(x, x, x, attn_mask=future, need_weights=False)
    assert_close(reference.multihead_self_attention(x, weights, heads), expected)


def test_cross_entropy_matches_builtin_with_extreme_logits_and_any_batch_shape():
    logits = torch.randn(4, 7, 50) * 10
    logits[0, 0, 3] = 1e4  # exp would overflow without the max subtracted
    targets = torch.randint(0, 50, (4, 7))
    assert_same_values_and_grads(lambda l: reference.cross_entropy(l, targets),
                                 lambda l: F.cross_entropy(l.reshape(-1, 50), targets.reshape(-1)), logits)
    assert reference.cross_entropy(logits.bfloat16(), targets).dtype == torch.float32


# Each component as a ModelConfig builds it, in every implementation, against the reference.
CONFIG = nn_.ModelConfig(vocab_size=50, context_length=16, d_model=32, num_layers=1, num_heads=4)


def shared_weights(build, impl):
    """The module build(impl) and build("reference"), holding the same weights, norms' gains moved off 1."""
    plain, module = build("reference"), build(impl)
    with torch.no_grad():
        for parameter in plain.parameters():
            if parameter.ndim == 1:
                parameter.add_(0.1 * torch.randn(parameter.shape))
    module.load_state_dict(plain.state_dict())
    return module, plain


def module_values_and_grads(module, x, seed=0):
    """module(x) and the gradients of x and of the parameters, for a fixed random upstream gradient."""
    x = x.detach().clone().requires_grad_(True)
    output = module(x)
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    return output.detach(), torch.autograd.grad(output, [x, *module.parameters()], upstream)


IMPLS = ["scratch", "torch"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_every_norm_impl_matches_the_reference(norm, impl):
    config = dataclasses.replace(CONFIG, norm=norm)
    module, plain = shared_weights(lambda i: make_norm(dataclasses.replace(config, norm_impl=i)), impl)
    x = torch.randn(2, 16, 32) * 2 + 0.5
    (out, grads), (expected, expected_grads) = module_values_and_grads(module, x), module_values_and_grads(plain, x)
    assert_close(out, expected)
    for ours, theirs in zip(grads, expected_grads, strict=True):
        assert_close(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ffn", ["swiglu", "silu", "relu"])
def test_every_ffn_impl_matches_the_reference(ffn, impl):
    config = dataclasses.replace(CONFIG, ffn=ffn, d_ff=0)
    module, plain = shared_weights(lambda i: make_ffn(dataclasses.replace(config, ffn_impl=i)), impl)
    x = torch.randn(2, 16, 32)
    (out, grads), (expected, expected_grads) = module_values_and_grads(module, x), module_values_and_grads(plain, x)
    assert_close(out, expected)
    for ours, theirs in zip(grads, expected_grads, strict=True):
        assert_close(ours, theirs)


@pytest.mark.parametrize("impl", IMPLS)
def test_every_attention_and_loss_impl_matches_the_reference(impl):
    attend = causal_attention_for(dataclasses.replace(CONFIG, attention_impl=impl))
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    assert_same_values_and_grads(attend, reference.causal_attention, q, k, v)
    logits, targets = torch.randn(2, 16, 50) * 5, torch.randint(0, 50, (2, 16))
    assert_same_values_and_grads(lambda l: nn_.loss_function(impl)(l, targets),
                                 lambda l: reference.cross_entropy(l, targets), logits)


def test_the_comparison_can_fail():
    """The helpers above see a wrong gradient: silu's, off by 1% (its forward pass unchanged)."""
    class WrongGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return reference.silu(x)

        @staticmethod
        def backward(ctx, grad_out):
            (x,) = ctx.saved_tensors
            s = torch.sigmoid(x)
            return grad_out * s * (1 + x * (1 - s)) * 1.01

    with pytest.raises(AssertionError):
        assert_same_values_and_grads(WrongGradient.apply, reference.silu, torch.randn(50))
