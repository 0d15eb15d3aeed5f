"""The plain version of every part of the model: read this file first (handout §3 and §4.1).

Each function is the handout's definition written as a few tensor expressions, differentiated by autograd: no
hand-written backward pass, no chunks, no in-place tricks. The other modules of cs336_nn compute the same things
faster; each starts by naming its plain counterpart here and saying what it changes and why. The tests check these
functions against torch's built-ins, and the fast versions against these; `cs336-train compare CONFIG` prints how
far apart the three are (reference, scratch, torch) and how long each takes, at a config's sizes.

A model can run on these: `ModelConfig(..., norm_impl="reference", attention_impl="reference",
ffn_impl="reference")` builds the classes at the end of this file, and `loss_function("reference")` (components.py)
returns `cross_entropy` below. They are slower and keep more memory, and give the same numbers:

    >>> import torch
    >>> softmax(torch.tensor([1000.0, 1000.0]))   # the max is subtracted first, so exp(1000) never happens
    tensor([0.5000, 0.5000])
    >>> cross_entropy(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), torch.tensor([2]))   # log 4: four equal choices
    tensor(1.3863)
"""

import math

import torch
from einops import einsum, rearrange
from torch import Tensor

from cs336_nn.feedforward import SwiGLU
from cs336_nn.rmsnorm import RMSNorm


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """§3.3.2: y = x Wᵀ, no bias. x (..., d_in), W (d_out, d_in) -> (..., d_out)."""
    return einsum(x, weight, "... d_in, d_out d_in -> ... d_out")


def embedding(token_ids: Tensor, weight: Tensor) -> Tensor:
    """§3.3.3: row `token_id` of W for each id. token_ids (...), W (vocab, d_model) -> (..., d_model)."""
    return weight[token_ids]


def rmsnorm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """§3.4.1: x / RMS(x) · g, with RMS(x) = sqrt(mean(x²) + ε) over the last axis. (..., d_model) -> same.

    In float32 (at least), as the handout asks: squares of bfloat16 values overflow and lose digits.
    """
    in_dtype = x.dtype
    x = x.to(torch.promote_types(in_dtype, torch.float32))
    rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return (x / rms * weight).to(in_dtype)


def silu(x: Tensor) -> Tensor:
    """§3.4.2: SiLU(x) = x · σ(x), σ the sigmoid."""
    return x * torch.sigmoid(x)


def relu(x: Tensor) -> Tensor:
    """ReLU(x) = max(0, x), the original Transformer's activation (for the handout's swiglu_ablation)."""
    return x.clamp(min=0)


def swiglu(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    """§3.4.2: FFN(x) = W2 (SiLU(W1 x) ⊙ W3 x). W1, W3 (d_ff, d_model), W2 (d_model, d_ff); (..., d_model) -> same."""
    return linear(silu(linear(x, w1)) * linear(x, w3), w2)


def rope(x: Tensor, token_positions: Tensor, theta: float) -> Tensor:
    """§3.4.3: rotate each pair (x[2k], x[2k+1]) of a query or key at position i by the angle i / θ^(2k/d).

    x (..., seq, d), token_positions (..., seq) -> (..., seq, d). As a rotation of each pair:

        out[2k]   = x[2k] cos - x[2k+1] sin
        out[2k+1] = x[2k] sin + x[2k+1] cos
    """
    d = x.shape[-1]
    # Angles in float64 (float32 on Apple's MPS, which has none): at position 10,000 a float32 angle is off by
    # about 1e-3 radians.
    precise = torch.float32 if x.device.type == "mps" else torch.float64
    inverse_frequencies = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=precise) / d)  # (d/2,)
    angles = token_positions.to(precise)[..., None] * inverse_frequencies  # (..., seq, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    pairs = rearrange(x, "... (half two) -> ... half two", two=2)
    even, odd = pairs[..., 0], pairs[..., 1]  # (..., seq, d/2) each
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rearrange(rotated, "... half two -> ... (half two)")


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """§3.4.4: exp(x_i - max x) / Σ_j exp(x_j - max x) along `dim`.

    Subtracting the maximum changes nothing (it cancels in the ratio) and keeps exp() finite: the largest exponent
    becomes exp(0) = 1.
    """
    exponentials = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return exponentials / exponentials.sum(dim=dim, keepdim=True)


def scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    """§3.4.4: softmax(Q Kᵀ / √d_k) V, with -∞ added where `mask` is False (True = may attend).

    Q (..., queries, d_k), K (..., keys, d_k), V (..., keys, d_v), mask (queries, keys) -> (..., queries, d_v).
    """
    scores = einsum(Q, K, "... queries d_k, ... keys d_k -> ... queries keys") / math.sqrt(Q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return einsum(softmax(scores, dim=-1), V, "... queries keys, ... keys d_v -> ... queries d_v")


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """§3.4.5: attention in which position i sees positions 0..i. q, k, v (..., seq, d) -> (..., seq, d).

    With fewer queries than keys (new tokens attending to cached ones), the queries are the last positions.
    """
    queries, keys = q.shape[-2], k.shape[-2]
    mask = torch.ones(queries, keys, dtype=torch.bool, device=q.device).tril(diagonal=keys - queries)
    return scaled_dot_product_attention(q, k, v, mask)


def multihead_self_attention(x: Tensor, weights: dict[str, Tensor], num_heads: int, theta: float | None = None,
                             token_positions: Tensor | None = None) -> Tensor:
    """§3.4.5: causal multi-head self-attention, with RoPE on queries and keys unless `theta` is None.

    x (..., seq, d_model) -> (..., seq, d_model); `weights` holds q_proj.weight, k_proj.weight, v_proj.weight and
    output_proj.weight, each (d_model, d_model), as in the course's state dict.
    """
    def heads(weight: Tensor) -> Tensor:  # project, then split d_model into (heads, d_head)
        return rearrange(linear(x, weight), "... seq (heads d_head) -> ... heads seq d_head", heads=num_heads)

    q, k, v = heads(weights["q_proj.weight"]), heads(weights["k_proj.weight"]), heads(weights["v_proj.weight"])
    if theta is not None:
        if token_positions is None:
            token_positions = torch.arange(x.shape[-2], device=x.device)
        positions = rearrange(token_positions, "... seq -> ... 1 seq")  # the same positions for every head
        q, k = rope(q, positions, theta), rope(k, positions, theta)
    attended = rearrange(causal_attention(q, k, v), "... heads seq d_head -> ... seq (heads d_head)")
    return linear(attended, weights["output_proj.weight"])


def weights_under(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of a state dict whose names start with `prefix`, without it: a submodule's state dict."""
    return {name.removeprefix(prefix): weight for name, weight in weights.items() if name.startswith(prefix)}


def transformer_block(x: Tensor, weights: dict[str, Tensor], num_heads: int, theta: float | None = 10_000.0,
                      eps: float = 1e-5, token_positions: Tensor | None = None) -> Tensor:
    """§3.4, Figure 2: the pre-norm block, x + attention(RMSNorm(x)), then + SwiGLU(RMSNorm(·)).

    `weights`: a block's state dict (ln1.weight, attn.q_proj.weight, ..., ffn.w1.weight, ..., ln2.weight).
    """
    x = x + multihead_self_attention(rmsnorm(x, weights["ln1.weight"], eps), weights_under(weights, "attn."),
                                     num_heads, theta, token_positions)
    h = rmsnorm(x, weights["ln2.weight"], eps)
    return x + swiglu(h, weights["ffn.w1.weight"], weights["ffn.w2.weight"], weights["ffn.w3.weight"])


def transformer_lm(token_ids: Tensor, weights: dict[str, Tensor], num_layers: int, num_heads: int,
                   theta: float = 10_000.0, eps: float = 1e-5) -> Tensor:
    """§3.5, Figure 1: embed, num_layers pre-norm blocks, a final RMSNorm, the LM head. (batch, seq) -> logits
    (batch, seq, vocab).

    `weights` is the course's state dict (token_embeddings.weight, layers.{i}...., ln_final.weight,
    lm_head.weight), so `transformer_lm(ids, model.state_dict(), ...)` runs a `TransformerLM`'s weights. The
    handout's architecture only (RMSNorm, pre-norm, RoPE, SwiGLU); the ablations' variants live in the modules.
    """
    x = embedding(token_ids, weights["token_embeddings.weight"])  # (batch, seq, d_model)
    for layer in range(num_layers):
        x = transformer_block(x, weights_under(weights, f"layers.{layer}."), num_heads, theta, eps)
    return linear(rmsnorm(x, weights["ln_final.weight"], eps), weights["lm_head.weight"])


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """§4.1: the mean over all positions of -log softmax(o)[x] = log Σ_a exp(o[a] - max o) - (o[x] - max o).

    logits (..., vocab), targets (...) -> a scalar. Written with the max subtracted and the log cancelling the
    exp of softmax, so it stays finite for logits in the thousands; in float32 at least.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    shifted = logits - logits.amax(dim=-1, keepdim=True)  # (..., vocab), largest entry 0
    log_sum_exp = torch.log(torch.exp(shifted).sum(dim=-1))  # (...)
    target_logits = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
    return (log_sum_exp - target_logits).mean()


# As modules, for ModelConfig's *_impl = "reference": the scratch modules' parameters (so state dicts and
# initialisation are the same) with these functions as the forward pass.


class ReferenceRMSNorm(RMSNorm):
    def forward(self, x: Tensor) -> Tensor:
        return rmsnorm(x, self.weight, self.eps)


class ReferenceSwiGLU(SwiGLU):
    def forward(self, x: Tensor) -> Tensor:
        return swiglu(x, self.w1.weight, self.w2.weight, self.w3.weight)
