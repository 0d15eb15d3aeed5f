"""The kernel policy (cs336_nn/kernel_policy.py): chunking chosen by device, the GPU's few operations per step,
the same results under either policy, and a model that torch.compile traces whole under either."""

import doctest
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import cs336_nn as nn_
from cs336_nn import kernel_policy
from cs336_nn.builtin import torch_cross_entropy
from cs336_nn.fused_attention import fused_causal_attention
from cs336_nn.kernel_policy import CPU_POLICY, CUDA_POLICY, KernelPolicy, part, policy_for, use_policy

# Small, but with what makes the CPU policy chunk: context 256 (two query blocks, and 32 (batch, head) slices of
# 128 x 256 scores, 128 KB each, in two 2 MB chunks) and 1,024 positions of 2,000 logits (two cross-entropy chunks).
REPRESENTATIVE = dict(vocab_size=2000, context_length=256, d_model=64, num_layers=2, num_heads=8)
BATCH = 4


class CountOperations(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] += 1
        return func(*args, **(kwargs or {}))


def operations_per_step(config: nn_.ModelConfig, loss_fn) -> int:
    """ATen operations dispatched by one forward + backward pass (after one uncounted pass, which builds the
    causal mask that every later step reuses)."""
    torch.manual_seed(0)
    model = nn_.TransformerLM(config)
    token_ids = torch.randint(0, config.vocab_size, (BATCH, config.context_length + 1))
    loss_fn(model(token_ids[:, :-1]), token_ids[:, 1:]).backward()
    with CountOperations() as counter:
        loss_fn(model(token_ids[:, :-1]), token_ids[:, 1:]).backward()
    return sum(counter.counts.values())


def test_the_policy_follows_the_device_unless_forced():
    assert policy_for(torch.device("cpu")) == CPU_POLICY
    assert policy_for(torch.device("cuda")) == policy_for(torch.device("mps")) == CUDA_POLICY
    # The CPU policy is the one measured best on a 2-core CPU before there was a choice.
    assert KernelPolicy(attention_chunk_bytes=2 * 2**20, query_blocks=2, loss_chunk_elements=2**20) == CPU_POLICY
    custom = KernelPolicy(attention_chunk_bytes=1024, query_blocks=3, loss_chunk_elements=10)
    with use_policy("cuda"):
        assert policy_for(torch.device("cpu")) == CUDA_POLICY
        with use_policy(custom):
            assert policy_for(torch.device("cuda")) == custom
        assert policy_for(torch.device("cpu")) == CUDA_POLICY
    assert policy_for(torch.device("cpu")) == CPU_POLICY
    with pytest.raises(ValueError, match="unknown kernel policy 'tpu'; choose one of cpu, cuda"), use_policy("tpu"):
        pass


def test_the_module_docstrings_hold():
    assert doctest.testmod(kernel_policy).failed == 0


def test_part_skips_the_view_only_when_it_would_cover_everything():
    x = torch.arange(12).reshape(4, 3)
    assert part(x, slice(0, 4)) is x and part(x, slice(None), slice(0, 9)) is x
    assert torch.equal(part(x, slice(1, 3)), x[1:3]) and torch.equal(part(x, slice(None), slice(0, 2)), x[:, :2])


def test_the_gpu_policy_dispatches_about_as_many_operations_as_the_builtins():
    builtin = operations_per_step(nn_.ModelConfig(**REPRESENTATIVE, attention_impl="torch"), torch_cross_entropy)
    with use_policy("cpu"):
        cpu = operations_per_step(nn_.ModelConfig(**REPRESENTATIVE), nn_.cross_entropy)
    with use_policy("cuda"):
        gpu = operations_per_step(nn_.ModelConfig(**REPRESENTATIVE), nn_.cross_entropy)
    # F.scaled_dot_product_attention is one operation each way; ours, in one piece under the GPU policy, is a
    # stack, a baddbmm, a softmax and a bmm forward, and the same again plus the gradient's products backward;
    # the loss is log_softmax, gather and neg forward, softmax, mul, neg and scatter_add backward. Measured: 401
    # built-in, 454 (1.13x) under the GPU policy, 742 under the CPU policy here; at the course model's batch 128,
    # 749 against 848 (1.13x) and 30,858 (benchmarks/ops_per_step.py).
    assert gpu <= 1.2 * builtin
    assert cpu > 1.3 * gpu  # the size is representative: the CPU policy really chunks here


def operation_names(function, *inputs) -> set[str]:
    """The ATen operations (by name, as "_softmax") that function(*inputs) and its backward pass dispatch."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    with CountOperations() as counter:
        function(*inputs).sum().backward()
    return {func._opname for func in counter.counts}


def test_one_chunk_runs_as_one_piece_only_under_the_gpu_policy():
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))  # 4 slices of 16 x 16 scores: one chunk under any policy
    logits, targets = torch.randn(4, 50), torch.randint(0, 50, (4,))
    paths = {"attention": lambda: operation_names(fused_causal_attention, q, k, v),
             "loss": lambda: operation_names(lambda l: nn_.cross_entropy(l, targets), logits)}
    fused = {"attention": "_softmax", "loss": "_log_softmax"}  # what only the one-piece versions dispatch
    for name, operations in paths.items():
        with use_policy("cuda"):
            gpu = operations()
        # The CPU keeps its chunked versions (exp2, no fused softmax) even for one chunk; so does a policy that
        # asks for the fewest launches when its chunks cut the input.
        with use_policy(KernelPolicy(attention_chunk_bytes=1024, query_blocks=1, loss_chunk_elements=100,
                                     fewest_launches=True)):
            cut = operations()
        with use_policy("cpu"):
            cpu = operations()
        assert fused[name] in gpu and "exp2_" not in gpu, name
        for chunked in (cpu, cut):
            assert fused[name] not in chunked and "exp2_" in chunked, name


def values_and_grads(function, *inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    output = function(*inputs)
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(1))
    return output.detach(), torch.autograd.grad(output, inputs, upstream)


def test_attention_and_loss_under_the_gpu_policy_equal_the_textbook_and_the_cpu_policy():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 4, 256, 16, generator=generator) for _ in range(3))  # 16 slices: 3 CPU chunks
    textbook = values_and_grads(
        lambda q, k, v: nn_.scaled_dot_product_attention(q, k, v, nn_.causal_mask(256)), q, k, v)
    logits, targets = torch.randn(8, 256, 1000, generator=generator) * 5, torch.randint(0, 1000, (8, 256))
    builtin_loss = values_and_grads(lambda l: F.cross_entropy(l.reshape(-1, 1000), targets.reshape(-1)), logits)
    results = {}
    for policy in ("cpu", "cuda"):
        with use_policy(policy):
            results[policy] = (values_and_grads(fused_causal_attention, q, k, v),
                               values_and_grads(lambda l: nn_.cross_entropy(l, targets), logits))
    for attention, loss in results.values():
        for ours, expected in ((attention, textbook), (loss, builtin_loss)):
            torch.testing.assert_close(ours[0], expected[0], atol=1e-5, rtol=1e-4)
            for grad, expected_grad in zip(ours[1], expected[1], strict=True):
                torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)


def test_a_training_step_is_the_same_under_either_policy():
    config = nn_.ModelConfig(**REPRESENTATIVE)
    token_ids = torch.randint(0, config.vocab_size, (BATCH, config.context_length + 1))
    losses, grads = {}, {}
    for policy in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = nn_.TransformerLM(config)
        with use_policy(policy):
            losses[policy] = nn_.cross_entropy(model(token_ids[:, :-1]), token_ids[:, 1:])
            losses[policy].backward()
        grads[policy] = [p.grad for p in model.parameters()]
    torch.testing.assert_close(losses["cuda"], losses["cpu"])
    for gpu, cpu in zip(grads["cuda"], grads["cpu"], strict=True):
        torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("policy", ["cpu", "cuda"])
def test_the_model_compiles_to_one_graph(policy):
    # No graph breaks: torch.compile(model, fullgraph=True) works and compiles the whole model as one program.
    model = nn_.TransformerLM(nn_.ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2,
                                              num_heads=4))
    torch._dynamo.reset()
    with use_policy(policy):
        explanation = torch._dynamo.explain(model)(torch.randint(0, 64, (2, 16)))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["cpu", "cuda"])
def test_the_compiled_model_trains_like_the_eager_one(policy):
    config = nn_.ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4)
    token_ids = torch.randint(0, 64, (2, 17))
    torch._dynamo.reset()
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn_.TransformerLM(config)
        forward = torch.compile(model, fullgraph=True) if compiled else model
        with use_policy(policy):
            loss = nn_.cross_entropy(forward(token_ids[:, :-1]), token_ids[:, 1:])
            loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-5, rtol=1e-4)
