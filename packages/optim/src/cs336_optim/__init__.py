"""cs336-optim: optimizers, learning-rate schedules and gradient clipping, from scratch (handout §4).

The plain, handout-shaped AdamW and clipping are in `cs336_optim.reference`; read them first.
"""

from cs336_optim import reference
from cs336_optim.adamw import AdamW, parameter_groups
from cs336_optim.clipping import clip_gradients, gradient_norms, scale_to_norm_
from cs336_optim.schedules import cosine_schedule, wsd_schedule
from cs336_optim.sgd import SGD

IMPLEMENTATIONS = ("reference", "scratch", "torch")


def make_adamw(params, impl: str = "scratch", **hyperparameters):
    """AdamW with these hyperparameters: Algorithm 1 one parameter at a time (impl="reference"), ours with
    multi-tensor operations ("scratch"), or torch's fused one ("torch")."""
    if impl == "reference":
        return reference.AdamW(params, **hyperparameters)
    if impl == "scratch":
        return AdamW(params, **hyperparameters)
    if impl == "torch":
        from cs336_optim.builtin import torch_adamw

        return torch_adamw(params, **hyperparameters)
    raise ValueError(f"optimizer impl {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")


__all__ = ["IMPLEMENTATIONS", "SGD", "AdamW", "clip_gradients", "cosine_schedule", "gradient_norms", "make_adamw",
           "parameter_groups", "reference", "scale_to_norm_", "wsd_schedule"]
__version__ = "0.1.0"
