"""An independent Transformer LM built from torch built-ins (F.linear, F.rms_norm, F.scaled_dot_product_attention,
complex-number RoPE), reading the course's weight names. Tests compare cs336_nn against it."""

import torch
import torch.nn.functional as F


def reference_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as complex multiplication: pair (x[2k], x[2k+1]) is the complex number x[2k] + i x[2k+1]."""
    d = x.shape[-1]
    frequencies = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.to(torch.float64)[..., None] * frequencies  # (..., seq, d/2)
    rotation = torch.polar(torch.ones_like(angles), angles)
    as_complex = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(as_complex * rotation).reshape(x.shape).to(x.dtype)


def reference_attention(x, weights, prefix, num_heads, theta, positions=None):
    batch_shape, seq, d_model = x.shape[:-2], x.shape[-2], x.shape[-1]
    d_head = d_model // num_heads

    def heads(t):
        return t.reshape(*batch_shape, seq, num_heads, d_head).transpose(-3, -2)

    q = heads(F.linear(x, weights[f"{prefix}q_proj.weight"]))
    k = heads(F.linear(x, weights[f"{prefix}k_proj.weight"]))
    v = heads(F.linear(x, weights[f"{prefix}v_proj.weight"]))
    if theta is not None:
        positions = torch.arange(seq) if positions is None else positions
        q = reference_rope(q, positions.unsqueeze(-2) if positions.dim() > 1 else positions, theta)
        k = reference_rope(k, positions.unsqueeze(-2) if positions.dim() > 1 else positions, theta)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = out.transpose(-3, -2).reshape(*batch_shape, seq, d_model)
    return F.linear(out, weights[f"{prefix}output_proj.weight"])


def reference_block(x, weights, prefix, num_heads, theta, eps=1e-5):
    d_model = x.shape[-1]
    h = F.rms_norm(x, (d_model,), weights[f"{prefix}ln1.weight"], eps)
    x = x + reference_attention(h, weights, f"{prefix}attn.", num_heads, theta)
    h = F.rms_norm(x, (d_model,), weights[f"{prefix}ln2.weight"], eps)
    gate = F.silu(F.linear(h, weights[f"{prefix}ffn.w1.weight"])) * F.linear(h, weights[f"{prefix}ffn.w3.weight"])
    return x + F.linear(gate, weights[f"{prefix}ffn.w2.weight"])


def reference_lm(token_ids, weights, num_layers, num_heads, theta):
    x = F.embedding(token_ids, weights["token_embeddings.weight"])
    for layer in range(num_layers):
        x = reference_block(x, weights, f"layers.{layer}.", num_heads, theta)
    x = F.rms_norm(x, (x.shape[-1],), weights["ln_final.weight"], 1e-5)
    return F.linear(x, weights["lm_head.weight"])
