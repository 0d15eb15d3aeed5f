"""Position-wise feed-forward networks (handout §3.4.2).

Plain version: `reference.swiglu`. `SwiGLU` here computes silu(W1 x) ⊙ W3 x as one function with a hand-written
backward pass (`activations.silu_gate`), which keeps two (..., d_ff) tensors for the backward pass where autograd
keeps four and allocates a new one for each of its products.

- `SwiGLU` (the default): W2 (silu(W1 x) * W3 x). The gate W3 x lets the network scale each hidden unit;
  with three matrices instead of two, d_ff ~ 8/3 d_model keeps the parameter count of a 4 d_model MLP.
- `MLP` with `silu` or `relu`: W2 act(W1 x), d_ff = 4 d_model, for the ablations.

Shapes: (..., d_model) -> (..., d_ff) -> (..., d_model).
"""

from collections.abc import Callable

from torch import Tensor, nn

from cs336_nn.activations import silu_gate
from cs336_nn.linear import Linear


def default_swiglu_d_ff(d_model: int) -> int:
    """About 8/3 d_model, rounded to a multiple of 64 (hardware-friendly). 512 -> 1344, 768 -> 2048."""
    return max(64, round(8 * d_model / 3 / 64) * 64)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int | None = None, device=None, dtype=None):
        super().__init__()
        d_ff = d_ff or default_swiglu_d_ff(d_model)
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(silu_gate(self.w1(x), self.w3(x)))  # silu(W1 x) * W3 x


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: Callable[[Tensor], Tensor], device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.activation(self.w1(x)))
