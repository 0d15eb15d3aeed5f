"""The hand-written autograd functions of cs336_nn (fused causal attention, silu gate, RMSNorm, cross-entropy):
forward and gradients against torch built-ins, and torch.autograd.gradcheck in float64 on small inputs."""

import pytest
import torch
import torch.nn.functional as F

import cs336_nn as nn_
from cs336_nn import fused_attention, loss
from cs336_nn.activations import silu_gate
from cs336_nn.fused_attention import fused_causal_attention
from cs336_nn.kernel_policy import CPU_POLICY, KernelPolicy, use_policy
from cs336_nn.rmsnorm import _RMSNorm
from tests.nn_helpers import assert_close, values_and_grads


def sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.fixture(params=[1, 2, 3, "one piece"], ids=["1 block", "2 blocks", "3 blocks", "one piece"])
def attention_path(request):
    """Each way the fused attention runs. Chunks of a few (batch, head) slices, so the last chunk is a partial one,
    and 1, 2 or 3 blocks of query rows (3 blocks of 16 rows: 6, 6 and 4 rows); or the GPU policy, under which
    these small inputs are one chunk and one block, run by `OneChunkCausalAttention`."""
    if request.param == "one piece":
        with use_policy("cuda"):
            yield
        return
    with use_policy(KernelPolicy(attention_chunk_bytes=3 * 16 * 16 * 4, query_blocks=request.param,
                                 loss_chunk_elements=CPU_POLICY.loss_chunk_elements)):
        yield


@pytest.mark.parametrize("shape", [(2, 5, 16, 8), (7, 16, 8), (1, 1, 16, 8)])
def test_fused_attention_matches_sdpa_forward_and_backward(shape, attention_path):
    q, k, v = (torch.randn(shape) for _ in range(3))
    out, grads = values_and_grads(fused_causal_attention, q, k, v)
    ref, ref_grads = values_and_grads(sdpa_causal, q, k, v)
    assert_close(out, ref)
    for ours, expected in zip(grads, ref_grads):
        assert_close(ours, expected)


def test_fused_attention_is_the_models_causal_attention():
    q, k, v = (torch.randn(2, 3, 10, 4) for _ in range(3))
    assert_close(nn_.causal_attention(q, k, v), sdpa_causal(q, k, v))
    textbook = nn_.scaled_dot_product_attention(q, k, v, nn_.causal_mask(10))
    assert_close(nn_.causal_attention(q, k, v), textbook)


def test_fused_attention_gradcheck_float64(attention_path):
    q, k, v = (torch.randn(2, 3, 16, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(fused_causal_attention, (q, k, v))


@pytest.mark.parametrize("queries", [1, 3, 7])
def test_fused_attention_with_fewer_queries_than_keys_sees_the_last_positions(queries, attention_path):
    q, k, v = torch.randn(2, 4, queries, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 6)
    # Query i sits at position 9 - queries + i: it may see keys 0..9 - queries + i.
    allowed = torch.ones(queries, 9, dtype=torch.bool).tril(diagonal=9 - queries)
    out, grads = values_and_grads(fused_causal_attention, q, k, v)
    ref, ref_grads = values_and_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed),
                                      q, k, v)
    assert_close(out, ref)
    for ours, expected in zip(grads, ref_grads):
        assert_close(ours, expected)
    with pytest.raises(ValueError, match="at least as many keys as queries"):
        fused_causal_attention(k, q, q)


def test_query_blocks_cover_the_causal_part_once():
    assert fused_attention.query_blocks(16, 16, 2) == [(slice(0, 8), 8), (slice(8, 16), 16)]
    assert fused_attention.query_blocks(3, 9, 2) == [(slice(0, 2), 8), (slice(2, 3), 9)]
    assert fused_attention.query_blocks(1, 5, 2) == [(slice(0, 1), 5)]
    assert fused_attention.query_blocks(16, 16, 1) == [(slice(0, 16), 16)]


@pytest.mark.parametrize("policy", ["cpu", "cuda"])
def test_fused_attention_is_stable_for_huge_scores(policy):
    # Scores in the thousands: exp would overflow without the max subtraction, and most entries underflow. In
    # float32 the gradients are then exact only up to about 1e-4 of their scale (torch's own kernel included).
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 2, 12, 8, generator=generator) * 40 for _ in range(2))
    v = torch.randn(2, 2, 12, 8, generator=generator)
    with use_policy(policy):  # "cuda": the one-piece version
        out, grads = values_and_grads(fused_causal_attention, q, k, v)
    ref, ref_grads = values_and_grads(sdpa_causal, q.double(), k.double(), v.double())
    assert torch.isfinite(out).all()
    assert_close(out, ref.float(), atol=1e-4, rtol=1e-3)
    scale = max(g.abs().max().item() for g in ref_grads)
    for ours, expected in zip(grads, ref_grads):
        assert_close(ours.double(), expected, atol=2e-3 * scale, rtol=0)


def test_fused_attention_in_bfloat16_is_close_to_float64(attention_path):
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    out, grads = values_and_grads(fused_causal_attention, q.bfloat16(), k.bfloat16(), v.bfloat16())
    ref, ref_grads = values_and_grads(sdpa_causal, q.double(), k.double(), v.double())
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)
    for ours, expected in zip(grads, ref_grads):
        assert_close(ours.double(), expected, atol=8e-2, rtol=5e-2)


def test_silu_gate_matches_builtin_and_gradcheck():
    a, b = torch.randn(3, 7, 20) * 4, torch.randn(3, 7, 20)
    out, grads = values_and_grads(silu_gate, a, b)
    ref, ref_grads = values_and_grads(lambda a, b: F.silu(a) * b, a, b)
    assert_close(out, ref)
    for ours, expected in zip(grads, ref_grads):
        assert_close(ours, expected)
    a64, b64 = (torch.randn(2, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(silu_gate, (a64, b64))


def test_rmsnorm_gradcheck_and_dtypes():
    x = torch.randn(3, 4, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNorm.apply(x, w, 1e-5), (x, weight))
    norm = nn_.RMSNorm(8)
    x16 = torch.randn(2, 8, dtype=torch.bfloat16, requires_grad=True)
    norm(x16).sum().backward()
    assert norm(x16).dtype == x16.grad.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32
    # bfloat16 in, float32 arithmetic inside: close to the float32 result rounded once.
    assert_close(norm(x16).float(), norm(x16.float()).bfloat16().float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("chunk_elements", [3 * 50, CPU_POLICY.loss_chunk_elements, "one piece"])
def test_cross_entropy_in_chunks_matches_builtin_and_gradcheck(chunk_elements):
    # 3 rows per chunk, 28 rows: a partial last chunk; or one chunk of everything; or the GPU policy's one piece
    policy = ("cuda" if chunk_elements == "one piece"
              else KernelPolicy(CPU_POLICY.attention_chunk_bytes, CPU_POLICY.query_blocks, chunk_elements))
    with use_policy(policy):
        check_cross_entropy_against_builtin()


def check_cross_entropy_against_builtin():
    logits = torch.randn(4, 7, 50) * 30  # many probabilities underflow
    targets = torch.randint(0, 50, (4, 7))
    out, (grad,) = values_and_grads(lambda l: nn_.cross_entropy(l, targets), logits)
    ref, (ref_grad,) = values_and_grads(lambda l: F.cross_entropy(l.reshape(-1, 50), targets.reshape(-1)), logits)
    assert_close(out, ref)
    assert_close(grad, ref_grad)
    logits64 = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    targets64 = torch.randint(0, 6, (5,))
    assert torch.autograd.gradcheck(lambda l: loss._losses(l, targets64), (logits64,))  # the policy's version


@pytest.mark.slow
def test_fused_attention_compiles_to_the_same_values_and_gradients(attention_path):
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    out, grads = values_and_grads(torch.compile(fused_causal_attention, fullgraph=True), q, k, v)
    ref, ref_grads = values_and_grads(sdpa_causal, q, k, v)
    assert_close(out, ref)
    for ours, expected in zip(grads, ref_grads):
        assert_close(ours, expected)
