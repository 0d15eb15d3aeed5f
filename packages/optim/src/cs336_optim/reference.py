"""The plain versions of AdamW and gradient clipping: read this file first (handout §4.3 and §4.5).

Each is the handout's pseudocode line by line, one parameter at a time, in ordinary tensor arithmetic. `adamw.py`
and `clipping.py` compute the same numbers faster (each says how, and why); the tests check them against these,
and these against torch's `AdamW` and `clip_grad_norm_`. `make_adamw(params, impl="reference")` trains with this
AdamW (the optimizer.impl setting of a training config); `cs336-train compare CONFIG` times the three.

The other parts of cs336_optim are plain already: `sgd.py` (§4.2) and the schedules (§4.4) are the handout's
formulas as written.
"""

import math
from collections.abc import Callable, Iterable

import torch


class AdamW(torch.optim.Optimizer):
    """§4.3, Algorithm 1, for each parameter θ with gradient g, at step t = 1, 2, ...:

        α_t ← α · sqrt(1 - β2^t) / (1 - β1^t)   bias correction: m and v start at 0, too small in early steps
        θ ← θ - α λ θ                            decoupled weight decay: every weight shrinks at the same rate
        m ← β1 m + (1 - β1) g                    first moment: a running mean of the gradient
        v ← β2 v + (1 - β2) g²                   second moment: a running mean of its square
        θ ← θ - α_t m / (sqrt(v) + ε)            each coordinate's step scaled by its own gradient size

    ε is added to sqrt(v), as in the form with α_t that Kingma & Ba give for Adam (§2 of their paper), which the
    handout follows (it typesets sqrt(v + ε): with ε = 1e-8 inside the root, every coordinate whose v is below about
    1e-8 would move less than its gradient asks). torch adds ε to the bias-corrected sqrt(v / (1 - β2^t)) instead:
    the two differ only where gradients come within a few orders of magnitude of ε, in the first steps.
    The learning rate α may be a number or a 0-dim tensor, as for the fast version.
    """

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        if not lr >= 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps} and {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for theta in group["params"]:
                if theta.grad is None:
                    continue
                g = theta.grad
                state = self.state[theta]  # the same keys as the fast AdamW: their state dicts are interchangeable
                if not state:
                    state["t"], state["m"], state["v"] = 0, torch.zeros_like(theta), torch.zeros_like(theta)
                state["t"] += 1
                t = state["t"]
                alpha_t = alpha * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                theta -= alpha * weight_decay * theta
                state["m"] = beta1 * state["m"] + (1 - beta1) * g
                state["v"] = beta2 * state["v"] + (1 - beta2) * g**2
                theta -= alpha_t * state["m"] / (torch.sqrt(state["v"]) + eps)
        return loss


@torch.no_grad()
def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """§4.5: if ‖g‖₂ of all gradients together exceeds M, scale each by M / (‖g‖₂ + ε), in place.

    Returns ‖g‖₂ before clipping. `if norm > max_l2_norm` reads the norm back to the host: on a GPU the host then
    waits for the whole backward pass; the fast version (clipping.py) multiplies by min(1, M / (‖g‖₂ + ε)) instead.
    """
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients:
        return torch.tensor(0.0)
    total_norm = torch.sqrt(sum((g**2).sum() for g in gradients))
    if total_norm > max_l2_norm:
        for g in gradients:
            g *= max_l2_norm / (total_norm + eps)
    return total_norm
