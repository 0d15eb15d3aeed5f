"""`SGD` with the handout's decaying step size (§4.2): θ_{t+1} = θ_t - lr / sqrt(t + 1) · ∇L(θ_t).

The smallest example of a `torch.optim.Optimizer`: parameters come in groups (each with its own `lr`), and
per-parameter state (here, the step count t) lives in `self.state[p]`.
"""

import math
from collections.abc import Callable

import torch


class SGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3):
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                t = state.get("t", 0)
                parameter.add_(parameter.grad, alpha=-group["lr"] / math.sqrt(t + 1))
                state["t"] = t + 1
        return loss
