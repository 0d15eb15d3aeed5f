"""Scaled dot-product attention and causal multi-head self-attention (handout §3.4.4, §3.4.5).

Plain versions: `reference.scaled_dot_product_attention`, `reference.causal_attention` and
`reference.multihead_self_attention`. Here the model's causal attention is `fused_attention`'s (the score matrix a
chunk at a time, nothing of it kept for the backward pass), and one matrix product makes Q, K and V together.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

The mask is boolean, True = may attend. Heads are just another batch dimension: we project once to all heads,
split d_model into (heads, d_head), attend, and merge the heads back.
"""

import math
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import Tensor, nn

from cs336_nn.activations import softmax
from cs336_nn.fused_attention import fused_causal_attention
from cs336_nn.linear import Linear
from cs336_nn.rope import RotaryPositionalEmbedding

if TYPE_CHECKING:  # kv_cache imports this module, so only the type checker imports it back
    from cs336_nn.kv_cache import LayerKVCache


def scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    """Q (..., queries, d_k), K (..., keys, d_k), V (..., keys, d_v), mask (queries, keys) -> (..., queries, d_v)."""
    # Scaling Q (queries x d_k values) instead of the scores (queries x keys values) is the same math, cheaper.
    scores = (Q / math.sqrt(Q.shape[-1])) @ K.transpose(-2, -1)  # (..., queries, keys)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ V


def causal_mask(sequence_length: int, device=None) -> Tensor:
    """(seq, seq) boolean: position i may attend to positions 0..i."""
    return torch.ones(sequence_length, sequence_length, dtype=torch.bool, device=device).tril()


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention where each position sees itself and the positions before it. (..., seq, d) -> (..., seq, d).

    The same result as `scaled_dot_product_attention(q, k, v, causal_mask(seq))`, computed by
    `fused_attention.CausalAttention`: in chunks, with a hand-written backward pass, never holding the whole
    (..., seq, seq) score matrix (on a GPU, in one piece with the fewest launches: `OneChunkCausalAttention`).
    Read `scaled_dot_product_attention` for the math, the fused versions for speed.
    """
    return fused_causal_attention(q, k, v)


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention, with RoPE on queries and keys when `rope` is given.

    The state dict keeps the course's names (q_proj, k_proj, v_proj, output_proj), but the forward pass
    concatenates the three projection matrices and does one matrix product for Q, K and V together.
    """

    def __init__(self, d_model: int, num_heads: int, rope: RotaryPositionalEmbedding | None = None,
                 causal_attention_fn=causal_attention, device=None, dtype=None):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.rope = rope
        self.causal_attention_fn = causal_attention_fn

    def forward(self, x: Tensor, token_positions: Tensor | None = None,
                kv_cache: "LayerKVCache | None" = None) -> Tensor:
        """x (..., seq, d_model), token_positions (..., seq) or None for 0..seq-1 -> (..., seq, d_model).

        With `kv_cache` (generation), see `forward_cached`.
        """
        if kv_cache is not None:
            return self.forward_cached(x, token_positions, kv_cache)
        sequence_length = x.shape[-2]
        qkv_weight = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))  # (3 d_model, d_model)
        qkv = x @ qkv_weight.T  # (..., seq, 3 d_model)
        q, k, v = rearrange(qkv, "... seq (three heads d_head) -> three ... heads seq d_head",
                            three=3, heads=self.num_heads)
        if self.rope is not None:
            if token_positions is None:
                token_positions = torch.arange(sequence_length, device=x.device)
            positions = token_positions.unsqueeze(-2)  # (..., 1, seq): the same positions for every head
            q, k = self.rope(q, positions), self.rope(k, positions)
        attended = self.causal_attention_fn(q, k, v)  # (..., heads, seq, d_head)
        return self.output_proj(rearrange(attended, "... heads seq d_head -> ... seq (heads d_head)"))

    def forward_cached(self, x: Tensor, token_positions: Tensor, kv_cache: "LayerKVCache") -> Tensor:
        """Generation: x (batch, seq, d_model) at token_positions (batch, seq) -> (batch, seq, d_model).

        The new keys and values are stored in `kv_cache` at their positions, and each query attends to the
        cached keys at or before its own position. Q, K and V come from three products here: a step is
        usually one token, and concatenating the weights would copy more memory than the products read.
        """
        if token_positions is None:
            raise ValueError("attention with a KV cache needs token_positions: where to store the new keys")
        q, k, v = (rearrange(projection(x), "batch seq (heads d_head) -> batch heads seq d_head", heads=self.num_heads)
                   for projection in (self.q_proj, self.k_proj, self.v_proj))
        if self.rope is not None:
            positions = token_positions.unsqueeze(-2)  # (batch, 1, seq): the same positions for every head
            q, k = self.rope(q, positions), self.rope(k, positions)
        attended = kv_cache.attend(q, k, v)  # (batch, heads, seq, d_head), at kv_cache.token_positions
        return self.output_proj(rearrange(attended, "batch heads seq d_head -> batch seq (heads d_head)"))
