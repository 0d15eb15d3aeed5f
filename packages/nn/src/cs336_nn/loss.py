"""Cross-entropy and perplexity (handout §4.1).

Plain version: `reference.cross_entropy`. This one writes the gradient out (softmax - one-hot) and goes through
the logits in cache-sized chunks, so that no (positions, vocab) temporary but the gradient itself is made; and it
uses exp2, which has no slow path on a CPU.

    loss = -log softmax(logits)[target] = logsumexp(logits) - logits[target]

Written with logsumexp instead of log(softmax(...)): the exp and the log cancel, and subtracting the maximum
first keeps exp() finite, so the loss is stable even for logits in the thousands. Logits are upcast to (at least)
float32. On a GPU the same computation runs as one piece, with torch's log_softmax kernel doing the max, exp, sum
and log of each row at once (`_OneChunkCrossEntropy`).
"""

import math

import torch
from torch import Tensor

from cs336_nn.activations import exp_shifted
from cs336_nn.kernel_policy import part, policy_for

# Rows are processed in chunks of about `loss_chunk_elements` logits (kernel_policy.py). On a CPU, 2^20 (4 MB in
# float32): each chunk's temporaries stay in cache and are reused by the allocator, where one (positions, vocab)
# temporary would be fresh memory, with its page faults, on every step. On a GPU, where each operation is a kernel
# launch, 2^30: one chunk, which runs as one piece (`_OneChunkCrossEntropy`).


def _row_chunks(rows: int, row_length: int, chunk_elements: int) -> list[slice]:
    step = max(1, chunk_elements // row_length)
    return [slice(start, start + step) for start in range(0, rows, step)]


class _CrossEntropy(torch.autograd.Function):
    """Per-position losses with the textbook gradient: d loss / d logits = softmax(logits) - one_hot(target).

    Writing the backward by hand (instead of letting autograd differentiate max, exp, sum and log one by one)
    saves the large (..., vocab) intermediates: we keep only the logits and one log-sum-exp per position, and
    recompute the probabilities in the backward pass.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        flat = logits.reshape(-1, logits.shape[-1])  # (positions, vocab)
        maximum = flat.amax(dim=-1, keepdim=True)  # (positions, 1)
        sums = torch.empty_like(maximum)
        chunk_elements = policy_for(logits.device).loss_chunk_elements
        for rows in _row_chunks(*flat.shape, chunk_elements):
            torch.sum(exp_shifted(part(flat, rows), part(maximum, rows)), dim=-1, keepdim=True, out=part(sums, rows))
        log_sum_exp = sums.log_().add_(maximum)  # (positions, 1)
        flat_targets = targets.reshape(-1, 1)
        ctx.save_for_backward(flat, flat_targets, log_sum_exp)
        ctx.logits_shape, ctx.chunk_elements = logits.shape, chunk_elements
        return (log_sum_exp - flat.gather(-1, flat_targets)).view(targets.shape)  # (...)

    @staticmethod
    def backward(ctx, grad_losses: Tensor):
        flat, flat_targets, log_sum_exp = ctx.saved_tensors
        grad_losses = grad_losses.reshape(-1, 1)
        grad_logits = torch.empty_like(flat)
        for rows in _row_chunks(*flat.shape, ctx.chunk_elements):
            # softmax(logits) * dloss, written chunk by chunk into the gradient
            exp_shifted(part(flat, rows), part(log_sum_exp, rows), out=part(grad_logits, rows)).mul_(
                part(grad_losses, rows))
        grad_logits.scatter_add_(-1, flat_targets, -grad_losses)  # - one_hot(target) * dloss
        return grad_logits.view(ctx.logits_shape), None


class _OneChunkCrossEntropy(torch.autograd.Function):
    """The same per-position losses and gradient when all the logits are one chunk and the policy asks for the
    fewest launches (a GPU's).

    The chunked version takes nine launches forward (max, subtract, scale by log2 e, exp2, sum, log, add, gather,
    subtract) and six backward, most of them a pass over the (positions, vocab) logits, the largest tensor of the
    step. Here torch's fused softmax kernels do the row-wise part in one kernel each:

        forward:   loss = -log_softmax(logits)[target]                     three launches: log_softmax, gather, neg
        backward:  d loss / d logits = (softmax(logits) - one_hot(target)) * dloss    softmax, mul, neg, scatter_add

    As in the chunked version only the logits are kept for the backward pass, where the probabilities are
    recomputed; the log-probabilities exist only during the forward pass, as one temporary the size of the logits.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        flat = logits.reshape(-1, logits.shape[-1])  # (positions, vocab)
        flat_targets = targets.reshape(-1, 1)  # (positions, 1)
        losses = torch.log_softmax(flat, dim=-1).gather(-1, flat_targets).neg_()  # (positions, 1)
        ctx.save_for_backward(flat, flat_targets)
        ctx.logits_shape = logits.shape
        return losses.view(targets.shape)

    @staticmethod
    def backward(ctx, grad_losses: Tensor):
        flat, flat_targets = ctx.saved_tensors
        grad_losses = grad_losses.reshape(-1, 1)
        grad_logits = torch.softmax(flat, dim=-1).mul_(grad_losses)  # softmax(logits) * dloss
        grad_logits.scatter_add_(-1, flat_targets, -grad_losses)  # - one_hot(target) * dloss
        return grad_logits.view(ctx.logits_shape), None


def _losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-position losses: in chunks, or in one piece where a GPU's policy makes one chunk of all the logits."""
    policy = policy_for(logits.device)
    positions = math.prod(logits.shape[:-1])
    if policy.fewest_launches and len(_row_chunks(positions, logits.shape[-1], policy.loss_chunk_elements)) <= 1:
        return _OneChunkCrossEntropy.apply(logits, targets)
    return _CrossEntropy.apply(logits, targets)


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int | None = None) -> Tensor:
    """logits (..., vocab), targets (...) -> mean loss over all positions (except `ignore_index` targets)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bfloat16 -> float32; float64 stays
    if ignore_index is None:
        return _losses(logits, targets).mean()
    keep = targets != ignore_index
    losses = _losses(logits, torch.where(keep, targets, torch.zeros_like(targets)))
    return (losses * keep).sum() / keep.sum().clamp_min(1)


def perplexity(mean_loss: float | Tensor) -> float:
    """exp(mean cross-entropy in nats): the 'effective number of choices' per token.

    A loss above ln(float max) ~ 709.8 nats (a diverged model) has no finite perplexity: inf, not an error.

    >>> perplexity(0.0), perplexity(1000.0)
    (1.0, inf)
    """
    try:
        return math.exp(float(mean_loss))
    except OverflowError:
        return math.inf
