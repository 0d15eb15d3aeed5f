"""`RMSNorm` (handout §3.4.1): x / sqrt(mean(x^2) + eps) * g, over the last dimension.

Plain version: `reference.rmsnorm`. This one writes the backward pass out (below) and reads x once for the sum of
squares: autograd's chain of square, mean, sqrt, division and product allocates an (..., d_model) tensor at
every step.

Unlike LayerNorm it neither subtracts the mean nor adds a bias: cheaper, and works as well in practice. The
sum of squares is computed in float32 even for bf16 inputs (squares overflow and lose precision in half
precision); the result is cast back to the input's dtype. Shape: (..., d_model) -> (..., d_model).

The backward pass is written out. With r = 1 / sqrt(mean(x^2) + eps), x_hat = x r and y = x_hat g:

    dg = sum over positions of dy * x_hat
    dx = r (dy g - x_hat mean(dy g x_hat))

(the second term is the part of dy g along x, which normalising removes). Autograd would get there through the
square, the mean, rsqrt and two products, allocating a new (..., d_model) tensor at every step.
"""

import torch
from torch import Tensor, nn


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bfloat16 -> float32, float64 stays float64


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        x32 = x.to(_at_least_float32(x.dtype))
        # |x| / sqrt(d) is the root mean square; vector_norm reads x once, without an x^2 temporary.
        mean_square = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        inverse_rms = mean_square.add_(eps).rsqrt_()  # (..., 1)
        ctx.save_for_backward(x, weight, inverse_rms)
        return (x32 * inverse_rms).mul_(weight).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, inverse_rms = ctx.saved_tensors
        x_hat = x.to(inverse_rms.dtype) * inverse_rms
        grad_out = grad_out.to(inverse_rms.dtype)
        grad_weight = (grad_out * x_hat).flatten(0, -2).sum(dim=0) if ctx.needs_input_grad[1] else None
        grad_normalized = grad_out * weight  # dy g
        along_x = torch.linalg.vecdot(grad_normalized, x_hat, dim=-1).unsqueeze(-1).div_(x.shape[-1])
        grad_x = x_hat.mul_(along_x.neg_()).add_(grad_normalized).mul_(inverse_rms)
        return grad_x.to(x.dtype), None if grad_weight is None else grad_weight.to(weight.dtype), None


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return _RMSNorm.apply(x, self.weight, self.eps)


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
