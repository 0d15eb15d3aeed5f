"""Data-parallel training with `torch.distributed`, as launched by `torchrun --nproc_per_node N`.

Every process (rank) holds a full copy of the model and computes gradients on its own share of the batch; the
gradients are then averaged across ranks (one all-reduce), so every rank applies the same update and the copies
stay identical. With a global batch of B sequences over N ranks, the result equals one process training on all
B sequences, up to floating-point summation order.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in the environment; without them we are a single process.
Backend: NCCL between GPUs, gloo between CPU processes.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates the summary and writes checkpoints; the others only compute."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun set up (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def local_rank_from_environment() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def average_gradients(parameters: list[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce the gradients as one flat buffer (one message instead of one per tensor), then divide by N."""
    gradients = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    offset = 0
    for gradient in gradients:
        gradient.copy_(flat[offset:offset + gradient.numel()].view_as(gradient))
        offset += gradient.numel()


def average_across_ranks(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of a device tensor over all ranks, left on the device (e.g. each step's loss: nothing waits)."""
    if not dist.is_initialized():
        return value
    total = value.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size


def main_rank_value(value: float) -> float:
    """Rank 0's `value` on every rank: for host-side numbers that must agree, such as the training clock.

    Each rank measures its own seconds, and with a time budget they decide the learning rate and when to stop,
    which must be the same everywhere (or the copies of the model drift apart, or one rank waits forever). The
    number travels through a CPU (gloo) group: through a GPU it would stall the device for one float.
    """
    if not dist.is_initialized():
        return value
    message = torch.tensor([value], dtype=torch.float64)  # on the CPU
    dist.broadcast(message, src=0, group=_host_group())
    return message.item()


_HOST_GROUP = None


def _host_group():
    """A gloo group over all ranks for host numbers (the default group may be NCCL, which only moves GPU tensors).
    Made on first use, which every rank reaches at the same step."""
    global _HOST_GROUP
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _HOST_GROUP


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers (e.g. loss sums and token counts) over all ranks."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    global _HOST_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _HOST_GROUP = None
