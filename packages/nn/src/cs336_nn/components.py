"""Factories that turn a `ModelConfig` choice into a module or function, so forward passes need no if-chains.

Each table maps a config value to what builds it; adding a variant is one line here.
"""

from collections.abc import Callable

from torch import nn

from cs336_nn import builtin
from cs336_nn.activations import relu, silu
from cs336_nn.attention import causal_attention
from cs336_nn.config import ModelConfig
from cs336_nn.feedforward import MLP, SwiGLU
from cs336_nn.rmsnorm import LayerNorm, RMSNorm

_NORMS = {
    ("rmsnorm", "scratch"): RMSNorm,
    ("rmsnorm", "torch"): builtin.TorchRMSNorm,
    ("layernorm", "scratch"): LayerNorm,
    ("layernorm", "torch"): builtin.TorchLayerNorm,
}
_CAUSAL_ATTENTION = {"scratch": causal_attention, "torch": builtin.torch_causal_attention}


def make_norm(config: ModelConfig, device=None, dtype=None) -> nn.Module:
    if config.norm == "none":
        return nn.Identity()
    return _NORMS[(config.norm, config.norm_impl)](config.d_model, eps=config.norm_eps, device=device, dtype=dtype)


def make_ffn(config: ModelConfig, device=None, dtype=None) -> nn.Module:
    if config.ffn == "swiglu":
        return SwiGLU(config.d_model, config.d_ff, device=device, dtype=dtype)
    activation = {"silu": silu, "relu": relu}[config.ffn]
    return MLP(config.d_model, config.d_ff, activation, device=device, dtype=dtype)


def causal_attention_for(config: ModelConfig) -> Callable:
    return _CAUSAL_ATTENTION[config.attention_impl]
