"""`AdamW` (handout §4.3, Algorithm 1), fast: the plain version is `reference.AdamW`, one parameter at a time;
this one updates all parameters of a group at once with torch's `_foreach_*` operations, a handful of
multi-tensor kernels per step instead of a Python loop of small kernels for every parameter.

    α_t ← α · sqrt(1 - β2^t) / (1 - β1^t)   bias correction (m and v start at 0)
    θ ← θ - α λ θ                           decoupled weight decay: not part of the gradient, so not rescaled
    m ← β1 m + (1 - β1) g                   first moment: a running mean of the gradient
    v ← β2 v + (1 - β2) g²                  second moment: a running mean of its square
    θ ← θ - α_t · m / (sqrt(v) + ε)         each coordinate's step is scaled by its own gradient size

Why "decoupled": adding λθ to the gradient (L2 regularisation, as in Adam) would divide the decay by sqrt(v),
shrinking it for parameters with large gradients. AdamW decays every weight at the same rate α λ. (ε is added to
sqrt(v), as in Kingma & Ba's form with α_t; the handout typesets sqrt(v + ε): see reference.AdamW.)

The learning rate may be a number or a 0-dim tensor on the parameters' device. A trainer on a GPU keeps it there
so that no step waits for the host, and multiplies it by 0 to skip a step whose gradients are not finite: with
α = 0 the step leaves every weight exactly as it was (the gradients must be finite, so m and v stay finite).
"""

import math
from collections.abc import Callable

import torch

# The update's one temporary, sqrt(v) + ε, is made for a batch of parameters of about this many numbers at a time
# (16 MB in float32): a temporary as large as the whole model would be fresh memory, with its page faults, on
# every step, where a small one is reused.
BATCH_ELEMENTS = 2**22


def _batches(parameters: list[torch.Tensor]) -> list[list[int]]:
    """Indices of `parameters`, cut into consecutive batches of about BATCH_ELEMENTS numbers."""
    batches, current, size = [], [], 0
    for index, parameter in enumerate(parameters):
        if current and size + parameter.numel() > BATCH_ELEMENTS:
            batches.append(current)
            current, size = [], 0
        current.append(index)
        size += parameter.numel()
    return batches + [current] if current else batches


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        if not lr >= 0:  # a tensor learning rate is checked here once, at construction
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
            parameters = [p for p in group["params"] if p.grad is not None]
            if not parameters:
                continue
            lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            gradients = [p.grad for p in parameters]
            states = [self.state[p] for p in parameters]
            for parameter, state in zip(parameters, states):
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                    state["v"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                state["t"] += 1
            first_moments = [state["m"] for state in states]
            second_moments = [state["v"] for state in states]

            if weight_decay:  # θ ← θ - α λ θ, before the Adam step, as in Algorithm 1
                torch._foreach_mul_(parameters, 1 - lr * weight_decay)
            torch._foreach_lerp_(first_moments, gradients, 1 - beta1)  # m = β1 m + (1 - β1) g
            torch._foreach_mul_(second_moments, beta2)
            torch._foreach_addcmul_(second_moments, gradients, gradients, value=1 - beta2)  # v += (1 - β2) g²

            # -α_t for each step count t present (all parameters of a group share one, unless some skipped steps
            # without a gradient). It divides the denominator, θ += m / ((sqrt(v) + ε) / -α_t), rather than
            # scaling m / (sqrt(v) + ε), because torch's multi-tensor ops take a tensor α_t only as a divisor there.
            step_sizes = {t: -lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t) for t in {s["t"] for s in states}}
            for batch in _batches(parameters):
                denominators = torch._foreach_sqrt([second_moments[i] for i in batch])  # sqrt(v) + ε
                torch._foreach_add_(denominators, eps)
                divisors = [step_sizes[states[i]["t"]] for i in batch]
                torch._foreach_div_(denominators, divisors[0] if len(step_sizes) == 1 else divisors)
                torch._foreach_addcdiv_([parameters[i] for i in batch], [first_moments[i] for i in batch],
                                        denominators)  # θ -= α_t m / (sqrt(v) + ε)
        return loss


def parameter_groups(named_parameters, weight_decay: float) -> list[dict]:
    """Two groups: matrices get weight decay; norms' gains, biases and embeddings do not.

    Decaying a norm's gain or a bias pulls it towards 0, which is not a simpler model, just a different one;
    embeddings are rows looked up, and rare tokens would be decayed away between their updates.
    """
    decay, no_decay = [], []
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "embedding" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
