"""cs336-optim: optimizers, learning-rate schedules and gradient clipping, from scratch (handout §4)."""

from cs336_optim.adamw import AdamW, parameter_groups
from cs336_optim.clipping import clip_gradients, gradient_norms, scale_to_norm_
from cs336_optim.schedules import cosine_schedule, wsd_schedule
from cs336_optim.sgd import SGD


def make_adamw(params, impl: str = "scratch", **hyperparameters):
    """Our AdamW (impl="scratch") or torch's fused one (impl="torch"), with the same hyperparameters."""
    if impl == "scratch":
        return AdamW(params, **hyperparameters)
    if impl == "torch":
        from cs336_optim.builtin import torch_adamw

        return torch_adamw(params, **hyperparameters)
    raise ValueError(f"optimizer impl {impl!r} is not one of scratch, torch")


__all__ = ["SGD", "AdamW", "clip_gradients", "cosine_schedule", "gradient_norms", "make_adamw", "parameter_groups",
           "scale_to_norm_", "wsd_schedule"]
__version__ = "0.1.0"
