"""Factories that turn a `ModelConfig` choice into a module or function, so forward passes need no if-chains.

Each table maps a config value to what builds it; adding a variant is one line here. The `*_impl` settings pick,
per component, the plain version of reference.py ("reference"), our fast from-scratch one ("scratch") or the torch
built-in it replaces ("torch", from builtin.py); all three share parameters, so one state dict loads into any.
"""

from collections.abc import Callable

from torch import Tensor, nn

from cs336_nn import builtin, reference
from cs336_nn.activations import relu, silu
from cs336_nn.attention import causal_attention
from cs336_nn.config import IMPLEMENTATIONS, ModelConfig
from cs336_nn.feedforward import MLP, SwiGLU
from cs336_nn.loss import cross_entropy
from cs336_nn.rmsnorm import LayerNorm, RMSNorm

_NORMS = {
    ("rmsnorm", "reference"): reference.ReferenceRMSNorm,
    ("rmsnorm", "scratch"): RMSNorm,
    ("rmsnorm", "torch"): builtin.TorchRMSNorm,
    ("layernorm", "reference"): LayerNorm,  # our LayerNorm is the plain version already: autograd does its backward
    ("layernorm", "scratch"): LayerNorm,
    ("layernorm", "torch"): builtin.TorchLayerNorm,
}
_CAUSAL_ATTENTION = {"reference": reference.causal_attention, "scratch": causal_attention,
                     "torch": builtin.torch_causal_attention}
_GATED_FFNS = {"reference": reference.ReferenceSwiGLU, "scratch": SwiGLU, "torch": builtin.TorchSwiGLU}
_ACTIVATIONS = {
    ("silu", "reference"): reference.silu,
    ("silu", "scratch"): silu,
    ("silu", "torch"): builtin.torch_silu,
    ("relu", "reference"): reference.relu,
    ("relu", "scratch"): relu,
    ("relu", "torch"): builtin.torch_relu,
}
_LOSSES = {"reference": reference.cross_entropy, "scratch": cross_entropy, "torch": builtin.torch_cross_entropy}


def make_norm(config: ModelConfig, device=None, dtype=None) -> nn.Module:
    if config.norm == "none":
        return nn.Identity()
    return _NORMS[(config.norm, config.norm_impl)](config.d_model, eps=config.norm_eps, device=device, dtype=dtype)


def make_ffn(config: ModelConfig, device=None, dtype=None) -> nn.Module:
    if config.ffn == "swiglu":
        return _GATED_FFNS[config.ffn_impl](config.d_model, config.d_ff, device=device, dtype=dtype)
    activation = _ACTIVATIONS[(config.ffn, config.ffn_impl)]
    return MLP(config.d_model, config.d_ff, activation, device=device, dtype=dtype)


def causal_attention_for(config: ModelConfig) -> Callable:
    return _CAUSAL_ATTENTION[config.attention_impl]


def loss_function(impl: str = "scratch") -> Callable[[Tensor, Tensor], Tensor]:
    """The cross-entropy of `impl` (reference, scratch or torch): loss(logits (..., vocab), targets (...)), the mean
    over all positions, in float32 at least.

    >>> loss_function("reference").__name__, loss_function("scratch").__module__
    ('cross_entropy', 'cs336_nn.loss')
    """
    if impl not in _LOSSES:
        raise ValueError(f"loss impl {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    return _LOSSES[impl]
