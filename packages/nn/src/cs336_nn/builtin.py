"""Torch built-in versions of our components, for comparison (the `*_impl = "torch"` settings).

This is the one module of cs336_nn that uses torch.nn.functional: the rule check in the tests exempts it by
name. Each function or class here has the same interface as the from-scratch one it stands in for.
"""

import torch.nn.functional as F
from torch import Tensor

from cs336_nn.feedforward import SwiGLU
from cs336_nn.rmsnorm import LayerNorm, RMSNorm


def torch_scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    return F.scaled_dot_product_attention(Q, K, V, attn_mask=mask)


def torch_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """is_causal=True lets torch pick its fused kernels (flash attention on GPUs) and skip building a mask."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class TorchRMSNorm(RMSNorm):
    """Our RMSNorm's parameters and float32 computation, with F.rms_norm doing the work."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class TorchLayerNorm(LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class TorchSwiGLU(SwiGLU):
    """Our SwiGLU's parameters, with F.linear and F.silu doing the work."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.silu(F.linear(x, self.w1.weight)) * F.linear(x, self.w3.weight), self.w2.weight)


def torch_silu(x: Tensor) -> Tensor:
    return F.silu(x)


def torch_relu(x: Tensor) -> Tensor:
    return F.relu(x)


def torch_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int | None = None) -> Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100 if ignore_index is None else ignore_index)
