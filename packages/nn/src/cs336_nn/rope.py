"""Rotary positional embedding, RoPE (handout §3.4.3).

Each pair of coordinates (x[2k], x[2k+1]) of a query or key at position i is rotated by the angle
i / theta^(2k / d_k). Rotating both queries and keys makes q_i . k_j depend only on the offset i - j (a
rotation by a and one by b leave a dot product that depends on a - b): relative positions, no parameters.

cos and sin are computed once for every position up to `max_seq_len` and stored as non-persistent buffers
(they are derived, so they stay out of checkpoints). One instance is shared by all layers.
Shapes: x (..., seq, d_k), token_positions (..., seq) -> (..., seq, d_k).
"""

import torch
from einops import rearrange
from torch import Tensor, nn


class RotaryPositionalEmbedding(nn.Module):
    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None):
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE rotates pairs of coordinates, so d_k must be even, got {d_k}")
        self.d_k, self.max_seq_len = d_k, max_seq_len
        frequencies = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)  # (d_k/2,)
        angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float64), frequencies)
        self.register_buffer("cos", angles.cos().float(), persistent=False)  # (max_seq_len, d_k/2)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, token_positions: Tensor) -> Tensor:
        cos = self.cos[token_positions].to(x.dtype)  # (..., seq, d_k/2)
        sin = self.sin[token_positions].to(x.dtype)
        pairs = rearrange(x, "... seq (half two) -> ... seq half two", two=2)
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rearrange(rotated, "... seq half two -> ... seq (half two)")
