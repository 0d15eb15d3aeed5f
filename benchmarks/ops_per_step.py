"""Tensor operations one training step dispatches: our kernels under the CPU and the GPU policy, against the built-ins.

    uv run python benchmarks/ops_per_step.py [--batch 128] [--context 256] [--d-model 512] [--layers 4] [--heads 16]
                                             [--d-ff 1344] [--vocab 10000] [--breakdown]

On a GPU every operation that computes is a kernel launch, a few microseconds of host time each: chunking tuned
for a CPU's caches (cs336_nn/kernel_policy.py) would make a step launch-bound. This counts every ATen operation
dispatched by one forward and backward pass of the model and its cross-entropy (a TorchDispatchMode sees each
one) for three paths:

- built-in: attention_impl="torch" (F.scaled_dot_product_attention) and torch's cross-entropy, the anchor;
- ours under the CPU policy (today's chunks, what a CPU runs) and under the CUDA policy (what a GPU runs), forced
  with `use_policy`, so both are measured here on a CPU.

"ops" counts every dispatched operation, views included; "launches" leaves out views and allocations, which run
no kernel. Each operation counts once, as the dispatcher sees it: torch.logsumexp, for one, is a single operation
here and about nine kernels on a GPU (amax, sub, exp, sum, log...), so our GPU path does not lean on such
composites to look small. `--breakdown` prints how many times each path dispatches each operation, the
operations where ours and the built-ins differ most first.

The default is the course model (d_model 512, 4 layers, 16 heads, d_ff 1344, context 256, vocab 10,000) at batch
128, whose logits alone take 1.3 GB: the step runs on FakeTensors (shapes and dtypes, no data, no arithmetic). A
check first counts a small model on real tensors and on FakeTensors: the counts must agree.
"""

import argparse
import contextlib
from collections import Counter

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import cs336_nn as nn_
from cs336_nn import fused_attention
from cs336_nn.builtin import torch_cross_entropy

# Operations that run no kernel besides views: allocations (the caching allocator), host-side bookkeeping, and
# _unsafe_view (a view that autograd does not track as one: reshape's result after a copy, matmul's output).
NO_KERNEL = {"empty", "empty_like", "empty_strided", "promote_types", "detach", "_unsafe_view"}


class CountOperations(TorchDispatchMode):
    """Counts each ATen operation dispatched inside the `with` block, by operation."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace != "prim":  # prim.device and the like: FakeTensor's own queries, not the model's
            self.counts[func] += 1
        return func(*args, **(kwargs or {}))

    @property
    def operations(self) -> int:
        return sum(self.counts.values())

    @property
    def launches(self) -> int:
        return sum(n for func, n in self.counts.items() if launches_a_kernel(func))


def launches_a_kernel(func) -> bool:
    return not func.is_view and func._opname not in NO_KERNEL


def count_step(config: nn_.ModelConfig, batch: int, loss_fn, fake: bool) -> CountOperations:
    """Operations of one forward + backward pass of TransformerLM(config) and `loss_fn` on a (batch, seq) batch.

    A first, uncounted pass builds what is built once per process (the cached causal mask), so the count is
    that of every later step.
    """
    if fake:  # parameters without data: built on the meta device, then given fake CPU storage
        meta_model = nn_.TransformerLM(config, device="meta")
        mode = FakeTensorMode(allow_non_fake_inputs=True)
    else:
        mode = contextlib.nullcontext()
    try:
        with mode:
            model = meta_model.to_empty(device="cpu") if fake else nn_.TransformerLM(config)
            token_ids = torch.randint(0, config.vocab_size, (batch, config.context_length + 1))
            for counted in (False, True):
                with CountOperations() if counted else contextlib.nullcontext() as counter:
                    logits = model(token_ids[:, :-1])
                    loss_fn(logits.float(), token_ids[:, 1:]).backward()
    finally:
        if fake:  # the mask cached by the fake pass holds no data: later real steps must build their own
            fused_attention._future_masks.clear()
    return counter


def count_paths(config: nn_.ModelConfig, batch: int, fake: bool) -> dict[str, CountOperations]:
    builtin_config = nn_.ModelConfig(**{**config.to_dict(), "attention_impl": "torch"})
    counts = {"built-in (SDPA, F.cross_entropy)": count_step(builtin_config, batch, torch_cross_entropy, fake)}
    for policy in ("cpu", "cuda"):
        with nn_.use_policy(policy):
            counts[f"ours, {policy} policy"] = count_step(config, batch, nn_.cross_entropy, fake)
    return counts


def check_fake_counts_equal_real() -> None:
    # Context 256 with a batch of 8: several attention chunks and two cross-entropy chunks under the CPU policy.
    small = nn_.ModelConfig(vocab_size=1000, context_length=256, d_model=64, num_layers=2, num_heads=4)
    real, fake = count_paths(small, 8, fake=False), count_paths(small, 8, fake=True)
    for path in real:
        if real[path].counts != fake[path].counts:
            raise SystemExit(f"{path}: FakeTensor counts differ from real ones: "
                             f"{real[path].counts - fake[path].counts} / {fake[path].counts - real[path].counts}")
    print("check: on a small model (d_model 64, 2 layers, context 256, batch 8), real and fake tensors dispatch "
          "the same operations: " + ", ".join(f"{path} {counter.operations:,}" for path, counter in real.items()))


def print_breakdown(counts: dict[str, CountOperations]) -> None:
    """Each operation's count in every path; the ones where the last path (ours on a GPU) exceeds the first (the
    built-ins) most come first. Views and allocations are marked: they count as operations, not launches."""
    first, last = next(iter(counts.values())).counts, list(counts.values())[-1].counts
    operations = sorted(set().union(*(counter.counts for counter in counts.values())),
                        key=lambda func: (first[func] - last[func], str(func)))
    names = [path.split(" (")[0].removeprefix("ours, ") for path in counts]  # "built-in", "cpu policy", ...
    labels = {func: str(func) + ("" if launches_a_kernel(func) else " (no kernel)") for func in operations}
    width = max(map(len, labels.values())) + 2
    print(f"\n{'operation':<{width}}" + "".join(f"{name:>12}" for name in names) + f"{'difference':>12}")
    for func in operations:
        print(f"{labels[func]:<{width}}" + "".join(f"{counter.counts[func]:>12,}" for counter in counts.values())
              + f"{last[func] - first[func]:>+12,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--d-ff", type=int, default=1344)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--breakdown", action="store_true", help="print each path's count of every operation")
    arguments = parser.parse_args()
    check_fake_counts_equal_real()
    config = nn_.ModelConfig(vocab_size=arguments.vocab, context_length=arguments.context, d_model=arguments.d_model,
                             num_layers=arguments.layers, num_heads=arguments.heads, d_ff=arguments.d_ff)
    counts = count_paths(config, arguments.batch, fake=True)
    print(f"\none forward + backward: d_model {config.d_model}, {config.num_layers} layers, {config.num_heads} heads, "
          f"d_ff {config.d_ff}, context {config.context_length}, vocab {config.vocab_size:,}, batch {arguments.batch}")
    builtin = next(iter(counts.values()))
    print(f"{'path':<36}{'ops':>9}{'x built-in':>12}{'launches':>10}{'x built-in':>12}")
    for path, counter in counts.items():
        print(f"{path:<36}{counter.operations:>9,}{counter.operations / builtin.operations:>12.2f}"
              f"{counter.launches:>10,}{counter.launches / builtin.launches:>12.2f}")
    if arguments.breakdown:
        print_breakdown(counts)


if __name__ == "__main__":
    main()
