"""`TransformerBlock` (handout §3.4, Figure 2): attention then feed-forward, each in a residual branch.

Plain version: `reference.transformer_block`, the handout's block as a function of a state dict. This module
holds the parameters and builds its parts from a `ModelConfig` (the ablations' variants, the `*_impl` choices).

Pre-norm (the default):  x = x + attn(norm1(x));  x = x + ffn(norm2(x))
Post-norm (original):    x = norm1(x + attn(x));  x = norm2(x + ffn(x))

Pre-norm leaves the residual stream x untouched from embedding to output, a clean path for gradients; that is
why it trains stably without careful warm-up, where post-norm often diverges early.
"""

from torch import Tensor, nn

from cs336_nn.attention import MultiHeadSelfAttention
from cs336_nn.components import causal_attention_for, make_ffn, make_norm
from cs336_nn.config import ModelConfig
from cs336_nn.kv_cache import LayerKVCache
from cs336_nn.rope import RotaryPositionalEmbedding


def pre_norm_residual(x: Tensor, norm: nn.Module, sublayer) -> Tensor:
    return x + sublayer(norm(x))


def post_norm_residual(x: Tensor, norm: nn.Module, sublayer) -> Tensor:
    return norm(x + sublayer(x))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, rope: RotaryPositionalEmbedding | None = None, device=None, dtype=None):
        super().__init__()
        self.ln1 = make_norm(config, device=device, dtype=dtype)
        self.attn = MultiHeadSelfAttention(config.d_model, config.num_heads, rope=rope,
                                           causal_attention_fn=causal_attention_for(config),
                                           device=device, dtype=dtype)
        self.ln2 = make_norm(config, device=device, dtype=dtype)
        self.ffn = make_ffn(config, device=device, dtype=dtype)
        self.residual = pre_norm_residual if config.norm_position == "pre" else post_norm_residual

    def forward(self, x: Tensor, token_positions: Tensor | None = None,
                kv_cache: LayerKVCache | None = None) -> Tensor:
        """x (..., seq, d_model) -> (..., seq, d_model). `kv_cache`: this layer's keys and values (generation)."""
        x = self.residual(x, self.ln1, lambda h: self.attn(h, token_positions, kv_cache))
        return self.residual(x, self.ln2, self.ffn)
