"""`Linear`: y = x W^T, no bias (handout §3.3.1).

W is stored as (out_features, in_features), as in the course (and torch), so course weights load directly.
Initialisation: truncated normal with variance 2 / (in + out), cut at ±3 standard deviations, which keeps the
variance of activations roughly constant from layer to layer.
"""

import math

import torch
from torch import Tensor, nn


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        std = math.sqrt(2.0 / (in_features + out_features))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def forward(self, x: Tensor) -> Tensor:
        # (..., d_in) @ (d_in, d_out) -> (..., d_out); a plain matmul is the fastest kernel for this.
        return x @ self.weight.T

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
