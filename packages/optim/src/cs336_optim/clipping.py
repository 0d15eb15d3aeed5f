"""Global-norm gradient clipping (handout §4.5).

If the L2 norm of all gradients together exceeds `max_l2_norm`, scale every gradient by
max_l2_norm / (norm + ε), so the update keeps its direction but not an exploding size. Gradients are changed in
place; the norm *before* clipping is returned, for logging (spikes in it are an early sign of instability).
"""

from collections.abc import Iterable

import torch


@torch.no_grad()
def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float, eps: float = 1e-6) -> torch.Tensor:
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients:
        return torch.tensor(0.0)
    norms = torch._foreach_norm(gradients)  # one L2 norm per tensor
    total_norm = torch.linalg.vector_norm(torch.stack([n.to(gradients[0].device) for n in norms]))
    if total_norm > max_l2_norm:
        torch._foreach_mul_(gradients, float(max_l2_norm / (total_norm + eps)))
    return total_norm
