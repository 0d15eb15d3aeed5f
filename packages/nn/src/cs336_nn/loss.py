"""Cross-entropy and perplexity (handout §4.1).

    loss = -log softmax(logits)[target] = logsumexp(logits) - logits[target]

Written with logsumexp instead of log(softmax(...)): the exp and the log cancel, and subtracting the maximum
first keeps exp() finite, so the loss is stable even for logits in the thousands. Logits are upcast to float32.
"""

import math

import torch
from torch import Tensor


class _CrossEntropy(torch.autograd.Function):
    """Per-position losses with the textbook gradient: d loss / d logits = softmax(logits) - one_hot(target).

    Writing the backward by hand (instead of letting autograd differentiate max, exp, sum and log one by one)
    saves the large (..., vocab) intermediates: we keep only the logits and one log-sum-exp per position, and
    recompute the probabilities in the backward pass.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        maximum = logits.amax(dim=-1, keepdim=True)
        exponentials = (logits - maximum).exp_()  # in place: one (..., vocab) buffer instead of two
        log_sum_exp = torch.log(exponentials.sum(dim=-1, keepdim=True)) + maximum  # (..., 1)
        del exponentials
        ctx.save_for_backward(logits, targets, log_sum_exp)
        return (log_sum_exp - logits.gather(-1, targets.unsqueeze(-1))).squeeze(-1)  # (...)

    @staticmethod
    def backward(ctx, grad_losses: Tensor):
        logits, targets, log_sum_exp = ctx.saved_tensors
        grad_logits = (logits - log_sum_exp).exp_()  # softmax(logits), computed in place
        grad_logits.scatter_add_(-1, targets.unsqueeze(-1), torch.full_like(log_sum_exp, -1.0))  # - one_hot
        return grad_logits.mul_(grad_losses.unsqueeze(-1)), None


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int | None = None) -> Tensor:
    """logits (..., vocab), targets (...) -> mean loss over all positions (except `ignore_index` targets)."""
    logits = logits.float()
    if ignore_index is None:
        return _CrossEntropy.apply(logits, targets).mean()
    keep = targets != ignore_index
    losses = _CrossEntropy.apply(logits, torch.where(keep, targets, torch.zeros_like(targets)))
    return (losses * keep).sum() / keep.sum().clamp_min(1)


def perplexity(mean_loss: float | Tensor) -> float:
    """exp(mean cross-entropy in nats): the 'effective number of choices' per token."""
    return math.exp(float(mean_loss))
