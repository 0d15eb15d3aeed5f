"""cs336_nn components against the torch built-ins they replace and against the plain versions of
cs336_nn.reference: forward and gradients, on fresh random inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

import cs336_nn as nn_
from cs336_nn import reference
from tests import adapters

torch.manual_seed(0)
ATOL, RTOL = 1e-5, 1e-4


def assert_close(actual, expected, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def grads(function, *tensors):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    output = function(*tensors)
    # The same upstream gradient for ours and the reference: a generator seeded by the output's shape.
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(output.numel()))
    (output * upstream).sum().backward()
    return output.detach(), [t.grad for t in tensors]


def test_linear_matches_f_linear_forward_and_backward():
    layer = nn_.Linear(24, 40)
    x = torch.randn(3, 5, 24, requires_grad=True)
    upstream = torch.randn(3, 5, 40)
    (layer(x) * upstream).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    reference = F.linear(x_ref, w_ref)
    (reference * upstream).sum().backward()
    assert_close(layer(x), reference)
    assert_close(x.grad, x_ref.grad)
    assert_close(layer.weight.grad, w_ref.grad)
    assert layer.weight.shape == (40, 24)
    assert_close(adapters.run_linear(24, 40, layer.weight.detach(), x), reference)


def test_linear_and_embedding_initialisation():
    layer = nn_.Linear(500, 300)
    std = math.sqrt(2 / 800)
    # A normal truncated at ±3 sigma has standard deviation 0.9865 sigma.
    assert abs(layer.weight.std().item() - 0.9865 * std) < 0.02 * std
    assert layer.weight.abs().max() <= 3 * std + 1e-6
    embedding = nn_.Embedding(1000, 64)
    assert embedding.weight.abs().max() <= 3.0 and abs(embedding.weight.std().item() - 0.986) < 0.02


def test_embedding_matches_f_embedding():
    embedding = nn_.Embedding(50, 16)
    ids = torch.randint(0, 50, (4, 7))
    assert_close(embedding(ids), F.embedding(ids, embedding.weight))
    assert_close(adapters.run_embedding(50, 16, embedding.weight, ids), F.embedding(ids, embedding.weight))


def test_rmsnorm_matches_torch_rmsnorm_forward_and_backward():
    reference = torch.nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        reference.weight.copy_(torch.randn(32))
    ours = nn_.RMSNorm(32)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 9, 32) * 3
    out, (dx,) = grads(ours, x)
    ref, (ref_dx,) = grads(reference, x)
    assert_close(out, ref)
    assert_close(dx, ref_dx)
    assert ours(x.bfloat16()).dtype == torch.bfloat16


def test_layernorm_matches_f_layer_norm():
    ours = nn_.LayerNorm(16)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(16))
        ours.bias.copy_(torch.randn(16))
    x = torch.randn(3, 16) * 2 + 1
    assert_close(ours(x), F.layer_norm(x, (16,), ours.weight, ours.bias, 1e-5))


def test_silu_and_softmax_match_builtins_including_extreme_values():
    x = torch.randn(4, 11) * 5
    assert_close(nn_.silu(x), F.silu(x))
    for dim in (0, 1, -1):
        assert_close(nn_.softmax(x, dim), F.softmax(x, dim))
    huge = torch.tensor([[1000.0, 1001.0, 999.0], [-1e4, 0.0, 1e4]])
    assert_close(nn_.softmax(huge, -1), F.softmax(huge, -1))
    _, (ours_grad,) = grads(lambda t: nn_.softmax(t, -1), x)
    _, (ref_grad,) = grads(lambda t: F.softmax(t, -1), x)
    assert_close(ours_grad, ref_grad)


def test_swiglu_matches_builtin_composition():
    ffn = nn_.SwiGLU(32, 64)
    x = torch.randn(2, 5, 32)
    expected = F.linear(F.silu(F.linear(x, ffn.w1.weight)) * F.linear(x, ffn.w3.weight), ffn.w2.weight)
    assert_close(ffn(x), expected)
    assert nn_.default_swiglu_d_ff(512) == 1344 and nn_.SwiGLU(512).w1.weight.shape == (1344, 512)


@pytest.mark.parametrize("batch_shape", [(3,), (2, 4)])
def test_scaled_dot_product_attention_matches_builtin(batch_shape):
    Q, K, V = torch.randn(*batch_shape, 6, 8), torch.randn(*batch_shape, 9, 8), torch.randn(*batch_shape, 9, 5)
    mask = torch.rand(6, 9) > 0.3
    mask[:, 0] = True  # every query may see at least one key
    out, grads_ours = grads(lambda q, k, v: nn_.scaled_dot_product_attention(q, k, v, mask), Q, K, V)
    ref, grads_ref = grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), Q, K, V)
    assert_close(out, ref)
    for ours, expected in zip(grads_ours, grads_ref):
        assert_close(ours, expected)
    assert_close(nn_.scaled_dot_product_attention(Q, K, V), F.scaled_dot_product_attention(Q, K, V))


def test_rope_matches_the_reference_for_any_batch_shape_and_gradients():
    rope = nn_.RotaryPositionalEmbedding(10_000.0, 16, 64)
    x = torch.randn(2, 3, 12, 16)
    positions = torch.randint(0, 64, (2, 3, 12))
    assert_close(rope(x, positions), reference.rope(x, positions, 10_000.0))
    assert_close(rope(x, torch.arange(12)), reference.rope(x, torch.arange(12), 10_000.0))
    assert_close(adapters.run_rope(16, 10_000.0, 64, x, positions), reference.rope(x, positions, 10_000.0))
    _, (ours,) = grads(lambda t: rope(t, positions), x)
    _, (expected,) = grads(lambda t: reference.rope(t, positions, 10_000.0), x)
    assert_close(ours, expected)
    assert not rope.state_dict()  # cos/sin are non-persistent buffers


def test_rope_dot_products_depend_only_on_offset():
    rope = nn_.RotaryPositionalEmbedding(10_000.0, 32, 200)
    q, k = torch.randn(32), torch.randn(32)

    def score(i, j):
        return (rope(q[None], torch.tensor([i])) * rope(k[None], torch.tensor([j]))).sum()

    for offset in (0, 3, 17):
        scores = torch.stack([score(i + offset, i) for i in (0, 5, 50, 120)])
        assert_close(scores, scores[0].expand_as(scores), atol=1e-4, rtol=1e-4)
    assert not torch.isclose(score(10, 0), score(11, 0))


@pytest.mark.parametrize("use_rope", [False, True])
def test_multihead_self_attention_matches_the_reference(use_rope):
    d_model, heads = 32, 4
    weights = {name: torch.randn(d_model, d_model) / math.sqrt(d_model)
               for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "output_proj.weight")}
    x = torch.randn(2, 10, d_model)
    if use_rope:
        positions = torch.arange(10).expand(2, 10) + 3
        ours = adapters.run_multihead_self_attention_with_rope(d_model, heads, 32, 10_000.0, *weights.values(), x,
                                                                positions)
        expected = reference.multihead_self_attention(x, weights, heads, 10_000.0, positions)
    else:
        ours = adapters.run_multihead_self_attention(d_model, heads, *weights.values(), x)
        expected = reference.multihead_self_attention(x, weights, heads)
    assert_close(ours, expected)


def test_attention_is_causal():
    attention = nn_.MultiHeadSelfAttention(16, 2, rope=nn_.RotaryPositionalEmbedding(1e4, 8, 16))
    x = torch.randn(1, 8, 16)
    changed = x.clone()
    changed[:, 5:] = torch.randn(1, 3, 16)
    assert_close(attention(x)[:, :5], attention(changed)[:, :5])
    assert not torch.allclose(attention(x)[:, 5:], attention(changed)[:, 5:])


def test_cross_entropy_matches_builtin_with_extreme_logits_and_ignore_index():
    logits = torch.randn(4, 7, 50) * 10
    logits[0, 0, 3] = 1e4
    targets = torch.randint(0, 50, (4, 7))
    out, (grad,) = grads(lambda l: nn_.cross_entropy(l, targets)[None], logits)
    ref, (ref_grad,) = grads(lambda l: F.cross_entropy(l.reshape(-1, 50), targets.reshape(-1))[None], logits)
    assert_close(out, ref)
    assert_close(grad, ref_grad)
    targets[1] = -100
    assert_close(nn_.cross_entropy(logits, targets, ignore_index=-100),
                 F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1), ignore_index=-100))
    assert math.isclose(nn_.perplexity(torch.tensor(math.log(7.0))), 7.0, rel_tol=1e-6)
