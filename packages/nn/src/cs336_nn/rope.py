"""Rotary positional embedding, RoPE (handout §3.4.3).

Plain version: `reference.rope`. This one computes cos and sin once for every position (not at every call) and
rotates with three tensor operations where the plain version's split into pairs and stack takes seven (below).

Each pair of coordinates (x[2k], x[2k+1]) of a query or key at position i is rotated by the angle
i / theta^(2k / d_k). Rotating both queries and keys makes q_i . k_j depend only on the offset i - j (a
rotation by a and one by b leave a dot product that depends on a - b): relative positions, no parameters.

cos and sin are computed once for every position up to `max_seq_len` and stored as non-persistent buffers
(they are derived, so they stay out of checkpoints). One instance is shared by all layers.
Shapes: x (..., seq, d_k), token_positions (..., seq) -> (..., seq, d_k).

How it is computed: the rotation of each pair is

    out[2k]   = x[2k] cos - x[2k+1] sin
    out[2k+1] = x[2k+1] cos + x[2k] sin

that is, out = x * cos + swap_pairs(x) * signed_sin, with cos repeated for both members of a pair,
signed_sin = (-sin, +sin) per pair, and swap_pairs exchanging x[2k] and x[2k+1] (a flip of each pair). Three
tensor operations (flip, multiply, multiply-add), where splitting into even and odd halves and stacking them
back takes seven, and autograd's backward pass as many again.
"""

import torch
from torch import Tensor, nn


class RotaryPositionalEmbedding(nn.Module):
    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None):
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE rotates pairs of coordinates, so d_k must be even, got {d_k}")
        self.d_k, self.max_seq_len = d_k, max_seq_len
        frequencies = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)  # (d_k/2,)
        angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float64), frequencies)
        # (max_seq_len, d_k/2, 2): for pair k, cos_k twice, and -sin_k, +sin_k.
        cos = torch.stack((angles.cos(), angles.cos()), dim=-1)
        signed_sin = torch.stack((-angles.sin(), angles.sin()), dim=-1)
        self.register_buffer("cos", cos.float(), persistent=False)
        self.register_buffer("signed_sin", signed_sin.float(), persistent=False)

    def forward(self, x: Tensor, token_positions: Tensor) -> Tensor:
        cos = self.cos[token_positions].to(x.dtype)  # (..., seq, d_k/2, 2)
        signed_sin = self.signed_sin[token_positions].to(x.dtype)
        pairs = x.unflatten(-1, (-1, 2))  # (..., seq, d_k/2, 2), a view of x
        # flip() makes a new tensor (x[2k+1], x[2k]) per pair; the in-place products then reuse its memory.
        rotated = pairs.flip(-1).mul_(signed_sin).addcmul_(pairs, cos)
        return rotated.flatten(-2)  # (..., seq, d_k)
