"""Shared checks: an algorithm against F.convNd in value and in every gradient."""

from __future__ import annotations

import torch

import diagonalwise as dw

#: Tolerances per dtype. float64 is the exactness check: the dense conv only adds exact zeros and
#: may sum in another order, so the error is a few ulps of the accumulated magnitude.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


def leaf(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A fresh leaf with the same values and strides (layout is kept: clone preserves it)."""
    return None if tensor is None else tensor.detach().clone().requires_grad_(True)


def run_with_grads(fn, input, weight, bias, grad_output_seed: int = 0):
    """Output of fn(input, weight, bias) and the gradients of a fixed random projection of it."""
    input, weight, bias = leaf(input), leaf(weight), leaf(bias)
    output = fn(input, weight, bias)
    generator = torch.Generator().manual_seed(grad_output_seed)
    grad_output = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    grad_output = grad_output.to(output.dtype)
    wrt = [t for t in (input, weight, bias) if t is not None]
    grads = torch.autograd.grad(output, wrt, grad_output)
    return output, grads


def assert_matches_native(spatial_dims, input, weight, bias, stride, padding, dilation, groups,
                          *, dtype=torch.float64, **choice):
    """dw.conv_nd with ``choice`` (block_size= or algorithm=) equals F.convNd: output and the
    input, weight and bias gradients."""

    def native(x, w, b):
        return dw.reference_conv(x, w, b, stride, padding, dilation, groups)

    def ours(x, w, b):
        return dw.functional.conv_nd(spatial_dims, x, w, b, stride, padding, dilation, groups,
                                     **choice)

    expected, expected_grads = run_with_grads(native, input, weight, bias)
    actual, actual_grads = run_with_grads(ours, input, weight, bias)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"output {choice}: {m}")
    for name, got, want in zip(("input", "weight", "bias"), actual_grads, expected_grads):
        torch.testing.assert_close(got, want, **tol,
                                   msg=lambda m, name=name: f"{name} gradient {choice}: {m}")
