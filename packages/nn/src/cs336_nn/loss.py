"""Cross-entropy and perplexity (handout §4.1).

    loss = -log softmax(logits)[target] = logsumexp(logits) - logits[target]

Written with logsumexp instead of log(softmax(...)): the exp and the log cancel, and subtracting the maximum
first keeps exp() finite, so the loss is stable even for logits in the thousands. Logits are upcast to float32.
"""

import math

import torch
from torch import Tensor


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int | None = None) -> Tensor:
    """logits (..., vocab), targets (...) -> mean loss over all positions (except `ignore_index` targets)."""
    logits = logits.float()
    maximum = logits.amax(dim=-1, keepdim=True)
    log_sum_exp = torch.log(torch.exp(logits - maximum).sum(dim=-1)) + maximum.squeeze(-1)  # (...)
    if ignore_index is None:
        target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (log_sum_exp - target_logits).mean()
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    target_logits = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    losses = (log_sum_exp - target_logits) * keep
    return losses.sum() / keep.sum().clamp_min(1)


def perplexity(mean_loss: float | Tensor) -> float:
    """exp(mean cross-entropy in nats): the 'effective number of choices' per token."""
    return math.exp(float(mean_loss))
