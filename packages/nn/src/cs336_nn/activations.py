"""Element-wise and normalising functions: `silu`, `silu_gate`, `softmax` (handout §3.4.2, §3.4.4).

Plain versions: `reference.silu`, `reference.swiglu`'s silu(a)·b and `reference.softmax`. `silu_gate` and
`softmax` here write their backward passes out and work in place, so autograd keeps fewer activation-sized
tensors; and exp becomes exp2, which has no slow path on a CPU (`exp_shifted`).

    silu(x) = x * sigmoid(x)
    softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x)

Subtracting the maximum changes nothing mathematically (it cancels) but keeps exp() from overflowing: the
largest exponent becomes exp(0) = 1.
"""

import math

import torch
from torch import Tensor

LOG2_E = math.log2(math.e)


def exp_shifted(x: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """exp(x - shift), computed as 2^((x - shift) log2 e).

    The same number, but torch's float32 exp on a CPU takes a slow path (about 10-100x slower) wherever the result
    underflows (masked -inf entries, values far below the maximum); exp2 does not. Softmax and cross-entropy use it.
    """
    return torch.sub(x, shift, out=out).mul_(LOG2_E).exp2_()


def silu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class _SiluGate(torch.autograd.Function):
    """silu(a) * b, SwiGLU's activation, with its gradient written out. With s = sigmoid(a):

        d/db = silu(a) = a s
        d/da = b * silu'(a) = b * s (1 + a (1 - s)) = b * s (1 + a - a s)

    Autograd through `silu(a) * b` would keep a, s, a s and b for the backward pass and allocate a new
    (..., d_ff) tensor for each of its five products; this keeps a and b only, recomputes s, and works in place.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return torch.sigmoid(a).mul_(a).mul_(b)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        a, b = ctx.saved_tensors
        grad_a = torch.sigmoid(a)  # s; becomes d/da below
        silu_a = a * grad_a  # a s; becomes d/db below
        # s (1 + a - a s) = s - (a s) s + a s: two in-place steps, no further temporaries
        grad_a.addcmul_(silu_a, grad_a, value=-1).add_(silu_a).mul_(grad_out).mul_(b)
        return grad_a, silu_a.mul_(grad_out)


def silu_gate(a: Tensor, b: Tensor) -> Tensor:
    """silu(a) * b (SwiGLU's gated activation), with a hand-written backward pass."""
    return _SiluGate.apply(a, b)


def relu(x: Tensor) -> Tensor:
    return torch.clamp_min(x, 0.0)


class _Softmax(torch.autograd.Function):
    """softmax with its analytic gradient: for y = softmax(x), dx = y * (dy - sum(dy * y)).

    Autograd could differentiate exp, sum and the division one by one, but that keeps several full-size
    intermediates and runs twice as many passes over them; attention scores are the largest tensors we have.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        # Subtracting the max changes nothing (it cancels in the ratio) but keeps exp() from overflowing.
        y = exp_shifted(x, x.amax(dim=dim, keepdim=True))
        y.div_(y.sum(dim=dim, keepdim=True))
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        (y,) = ctx.saved_tensors
        return y * (dy - (dy * y).sum(dim=ctx.dim, keepdim=True)), None


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return _Softmax.apply(x, dim)
