"""Element-wise and normalising functions: `silu`, `softmax` (handout §3.4.2, §3.5.4).

    silu(x) = x * sigmoid(x)
    softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x)

Subtracting the maximum changes nothing mathematically (it cancels) but keeps exp() from overflowing: the
largest exponent becomes exp(0) = 1.
"""

import torch
from torch import Tensor


def silu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def relu(x: Tensor) -> Tensor:
    return torch.clamp_min(x, 0.0)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    exponentials = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return exponentials / exponentials.sum(dim=dim, keepdim=True)
