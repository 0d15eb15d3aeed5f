"""Global-norm gradient clipping (handout §4.5), fast: the plain version is `reference.clip_gradients`, which asks
`if norm > M` on the host; this one never reads a number back (below), and takes all the norms in one multi-tensor
operation (`_foreach_norm`) instead of one per gradient.

If the L2 norm of all gradients together exceeds `max_l2_norm`, scale every gradient by
max_l2_norm / (norm + ε), so the update keeps its direction but not an exploding size. Gradients are changed in
place; the norm *before* clipping is returned, for logging (spikes in it are an early sign of instability).

Nothing here reads a number back to the host. "Is the norm above the threshold?" is not asked with an `if` (on a
GPU that would stall every step until the norm is computed); instead every gradient is multiplied by
min(1, max_l2_norm / (norm + ε)), a factor computed on the device that is exactly 1 when no clipping is needed.
torch's `clip_grad_norm_` does the same.
"""

from collections.abc import Iterable

import torch


@torch.no_grad()
def gradient_norms(gradients: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the L2 norm of all `gradients` together, the L2 norm of each one), both left on the device."""
    per_tensor = torch.stack(torch._foreach_norm(gradients))  # one L2 norm per tensor: (num_tensors,)
    return torch.linalg.vector_norm(per_tensor), per_tensor


@torch.no_grad()
def scale_to_norm_(gradients: list[torch.Tensor], total_norm: torch.Tensor, max_l2_norm: float,
                   eps: float = 1e-6) -> None:
    """Scale `gradients` in place by min(1, max_l2_norm / (total_norm + eps)): the clip, decided on the device."""
    torch._foreach_mul_(gradients, (max_l2_norm / (total_norm + eps)).clamp(max=1.0))


@torch.no_grad()
def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float, eps: float = 1e-6) -> torch.Tensor:
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients:
        return torch.tensor(0.0)
    total_norm, _ = gradient_norms(gradients)
    scale_to_norm_(gradients, total_norm, max_l2_norm, eps)
    return total_norm
