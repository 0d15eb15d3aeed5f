"""How the hand-written kernels cut their work into pieces: for a CPU's caches or for a GPU's kernel launches.

The fused attention (`fused_attention.py`) and the cross-entropy (`loss.py`) process their inputs in chunks.
What size is right depends on the hardware:

- On a CPU, small chunks win. A chunk whose temporaries stay in the cores' caches is computed at cache speed,
  and the allocator hands the same small buffer back for every chunk, where one huge temporary would be fresh
  memory from the operating system, with a page fault per 4 KB, on every step. Each tensor operation costs a
  fixed ~microsecond, so the chunks are a few MB: enough work per operation to hide that cost.
- On a GPU, every tensor operation is a kernel launch (a few microseconds of host time, during which a fast GPU
  may sit idle), the device has tens of GB of memory and no page faults, and the work of one operation is spread
  over thousands of cores. CPU-sized chunks would turn one attention layer of the course model at batch 128 into
  hundreds of launches of tiny kernels. One chunk, as large as memory comfortably allows, is right there, and it
  runs as one piece: versions of the two functions written for the fewest launches (`fewest_launches`).

`policy_for(device)` picks the policy from the device of the inputs; `use_policy` overrides the choice for the
whole process, to measure or test one policy on another device:

    >>> import torch
    >>> policy_for(torch.device("cpu")).query_blocks
    2
    >>> with use_policy("cuda"):
    ...     policy_for(torch.device("cpu")).query_blocks
    1
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class KernelPolicy:
    """How to cut the work. Frozen: under torch.compile its fields are constants of the traced graph."""

    attention_chunk_bytes: int  # the scores of one chunk of (batch, head) slices take about this many bytes
    query_blocks: int  # query rows are cut into this many blocks; the early ones skip the keys they may not see
    loss_chunk_elements: int  # cross-entropy takes rows of logits in chunks of about this many values
    # Where the whole input is one chunk (and one query block), run the one-piece versions written for the fewest
    # operations (fused torch.softmax and log_softmax kernels, no columns of ones) instead of the chunked ones.
    fewest_launches: bool = False


# Measured on a 2-core CPU with AMX (benchmarks/lm_benchmark.py): 2 MB of scores per chunk stays in cache and is
# reused by the allocator; two query blocks skip a quarter of the causal score matrix (more blocks skip more but
# cost more operations); 2^20 logits (4 MB in float32) per cross-entropy chunk.
CPU_POLICY = KernelPolicy(attention_chunk_bytes=2 * 2**20, query_blocks=2, loss_chunk_elements=2**20)

# The CPU keeps the chunked versions even when everything fits in one chunk: they are tuned for its caches and they
# use exp2, avoiding the slow path of float32 exp (activations.exp_shifted), which torch.softmax takes too: on
# 64 x 256 x 256 causally masked scores it ran 26 ms here against 12 ms unmasked.
#
# A GPU wants few, large operations. A chunk only has to be large enough that the launch (~5 µs) is small next to
# the work: 1 GiB of scores takes ~0.3 ms just to write at 3 TB/s, so larger chunks would gain nothing and
# would only risk running out of memory. At 1 GiB the course model at batch 128 (2,048 (batch, head) slices of
# 256 x 256 float32 scores: 512 MiB) is one chunk, and so is GPT-2 XL at batch 8 (200 slices of 1,024 x 1,024:
# 800 MiB); a 16K context is cut into a few dozen chunks instead of failing. The backward pass holds two such
# buffers at once, 2 GiB at most, which fits beside the model on any GPU that can train it. One query block:
# a second one would save a quarter of the score FLOPs but double the launches, and the products are cheap
# next to the rest of a step on a GPU. 2^30 logits (4 GiB in float32) per cross-entropy chunk: the one-piece
# cross-entropy's only temporary is its log-probabilities, as large as the logits themselves (1.3 GB for the course
# model at batch 128, 1.6 GB for GPT-2 XL at batch 8), so only larger inputs are cut. With `fewest_launches`, one
# chunk runs as one piece: in the model a layer's attention takes 4 launches forward and 10 backward, the loss 3
# and 4, where the chunked versions take 12, 18, 9 and 6 even in one chunk.
CUDA_POLICY = KernelPolicy(attention_chunk_bytes=2**30, query_blocks=1, loss_chunk_elements=2**30,
                           fewest_launches=True)

POLICIES = {"cpu": CPU_POLICY, "cuda": CUDA_POLICY}

_forced: KernelPolicy | None = None  # set by use_policy; None: choose by device


def policy_for(device: torch.device) -> KernelPolicy:
    """The policy for inputs on `device`: the CPU's on a CPU, the GPU's on anything else (CUDA, MPS...).

    `use_policy` overrides it. Called inside traced code, torch.compile reads `_forced` as a constant and guards
    on it: leaving or entering `use_policy` recompiles instead of reusing a graph built for the other policy.
    """
    if _forced is not None:
        return _forced
    return CPU_POLICY if device.type == "cpu" else CUDA_POLICY


@contextmanager
def use_policy(policy: str | KernelPolicy) -> Iterator[KernelPolicy]:
    """Use `policy` ("cpu", "cuda" or a `KernelPolicy`) for every device, process-wide, inside the block.

    To measure the GPU policy's operation count on a CPU, or to test that both give the same results.
    """
    global _forced
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"unknown kernel policy {policy!r}; choose one of {', '.join(POLICIES)}, "
                             f"or pass a KernelPolicy")
        policy = POLICIES[policy]
    previous, _forced = _forced, policy
    try:
        yield policy
    finally:
        _forced = previous


def part(tensor: Tensor, *index: slice) -> Tensor:
    """One chunk of a tensor: tensor[index] (slices of the leading dimensions), or the tensor itself when the
    slices cover all of it.

    A view costs no arithmetic, but it is one more operation to dispatch (microseconds of host time each). Where
    the policy makes one chunk of everything, as on a GPU, this skips the views that would cover the whole tensor.

        >>> x = torch.zeros(4, 3)
        >>> part(x, slice(0, 4)) is x, part(x, slice(1, 3)).shape
        (True, torch.Size([2, 3]))
    """
    if all((piece.start or 0) == 0 and (piece.stop is None or piece.stop >= size)
           for piece, size in zip(index, tensor.shape)):
        return tensor
    return tensor[index]
