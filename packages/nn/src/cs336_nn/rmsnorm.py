"""`RMSNorm` (handout §3.4.1): x / sqrt(mean(x^2) + eps) * g, over the last dimension.

Unlike LayerNorm it neither subtracts the mean nor adds a bias: cheaper, and works as well in practice. The
sum of squares is computed in float32 even for bf16 inputs (squares overflow and lose precision in half
precision); the result is cast back to the input's dtype. Shape: (..., d_model) -> (..., d_model).
"""

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        input_dtype = x.dtype
        x = x.float()
        inverse_rms = torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps)
        return (x * inverse_rms * self.weight).to(input_dtype)


class LayerNorm(nn.Module):
    """Classic LayerNorm, for the ablation: (x - mean) / sqrt(var + eps) * g + b."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        input_dtype = x.dtype
        x = x.float()
        centered = x - x.mean(dim=-1, keepdim=True)
        normalized = centered * torch.rsqrt(centered.square().mean(dim=-1, keepdim=True) + self.eps)
        return (normalized * self.weight + self.bias).to(input_dtype)
