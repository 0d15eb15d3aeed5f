"""Helpers shared by the cs336-nn tests: outputs and gradients of a function, compared with a tolerance."""

import torch


def assert_close(actual, expected, atol=1e-5, rtol=1e-4):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def values_and_grads(function, *inputs, seed=0):
    """function(*inputs) and the gradients of <function(*inputs), a fixed random upstream gradient>."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    output = function(*inputs)
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed)).to(output.dtype)
    return output.detach(), torch.autograd.grad(output, inputs, upstream)
