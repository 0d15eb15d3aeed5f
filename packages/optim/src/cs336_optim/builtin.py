"""Torch's own optimizer, for comparison (the optimizer `impl = "torch"` setting). The rule check exempts
this module by name: it is the only place cs336_optim touches torch.optim's optimizers."""

import torch


def torch_adamw(params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
    """torch.optim.AdamW, fused into one kernel where the device supports it (CUDA, and CPU in recent torch)."""
    try:
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)
