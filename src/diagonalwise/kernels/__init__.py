"""Our own kernels as an algorithm: ``"triton"``, depthwise 1D/2D/3D convolution in Triton.

Equivalence contract: ``get_algorithm("triton")(x, w, b, stride, padding, dilation, groups)``
equals ``F.conv1d/2d/3d`` for depthwise convolutions (``groups == in_channels``, weight
``(C * M, 1, *kernel)``), in value and in the input, weight and bias gradients, with float32
accumulation. It runs through ``torch.library`` custom ops, so ``torch.compile`` sees no graph
break, and its weight gradient reduces without atomics, so it is deterministic. It needs an NVIDIA
GPU with Triton, or ``TRITON_INTERPRET=1`` (set before Triton is imported) to run on CPU tensors
through Triton's interpreter, which the tests use. Importing this module does not import Triton.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from ..algorithms import Algorithm, register_algorithm


def channels_innermost(x: torch.Tensor) -> bool:
    """Whether channels are the contiguous dimension (a channels_last tensor)."""
    return x.stride(1) == 1 and x.shape[1] > 1


def memory_format_like(x: torch.Tensor) -> torch.memory_format:
    """The format the kernels give their 5-D outputs and gradients: the input's."""
    return torch.channels_last_3d if channels_innermost(x) else torch.contiguous_format


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_usable(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on tensors of ``device`` here."""
    if importlib.util.find_spec("triton") is None:
        return False
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())


def _leading_padding(padding, kernel, dilation):
    """Per dimension, the padding before the first element: for 'same' the smaller half of
    dilation * (kernel - 1), as PyTorch pads."""
    if padding == "valid":
        return [0] * len(kernel)
    if padding == "same":
        return [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
    return list(padding)


def _output_size(size, kernel, stride, padding, dilation, same):
    if same:
        return list(size)
    return [(s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)]


@torch.library.custom_op("diagonalwise::triton_depthwise3d", mutates_args=())
def _depthwise3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: list[int], padding: list[int], dilation: list[int],
                 output_size: list[int]) -> torch.Tensor:
    from . import triton_depthwise

    return triton_depthwise.forward(x, weight, bias, stride, padding, dilation, output_size)


@_depthwise3d.register_fake
def _(x, weight, bias, stride, padding, dilation, output_size):
    return torch.empty((x.shape[0], weight.shape[0], *output_size), dtype=x.dtype,
                       device=x.device, memory_format=memory_format_like(x))


@torch.library.custom_op("diagonalwise::triton_depthwise3d_backward", mutates_args=())
def _depthwise3d_backward(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          stride: list[int], padding: list[int], dilation: list[int],
                          input_grad: bool, weight_grad: bool
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton_depthwise

    grad_output = grad_output.contiguous(memory_format=memory_format_like(x))
    dx = (triton_depthwise.input_grad(grad_output, x, weight, stride, padding, dilation)
          if input_grad else torch.zeros_like(x))
    dw = (triton_depthwise.weight_grad(grad_output, x, weight, stride, padding, dilation)
          if weight_grad else torch.zeros_like(weight))
    return dx, dw


@_depthwise3d_backward.register_fake
def _(grad_output, x, weight, stride, padding, dilation, input_grad, weight_grad):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (stride, padding, dilation)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    x, weight = ctx.saved_tensors
    dx, dw = _depthwise3d_backward(grad_output, x, weight, *ctx.geometry,
                                   ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    db = grad_output.sum((0, 2, 3, 4)) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return dx, dw, db, None, None, None, None


_depthwise3d.register_autograd(_backward, setup_context=_setup_context)


@dataclass(frozen=True, repr=False)
class TritonDepthwise(Algorithm):
    """Our Triton kernels for depthwise 1D/2D/3D convolutions (see the module docstring)."""

    name = "triton"

    def __call__(self, input, weight, bias, stride, padding, dilation, groups):
        spatial_dims = weight.dim() - 2
        batched = input.dim() == spatial_dims + 2
        channels = input.shape[1 if batched else 0]
        if weight.shape[1] != 1 or groups != channels:
            raise ValueError("the 'triton' algorithm computes depthwise convolutions "
                             "(groups == in_channels, weight (C * M, 1, *kernel)); use 'native' "
                             "or a block size for this one")
        if not triton_usable(input.device):
            raise RuntimeError(
                "the 'triton' algorithm needs an NVIDIA GPU with Triton (pip install triton), or "
                "TRITON_INTERPRET=1 for Triton's CPU interpreter; use 'native' or a block size")
        if torch.is_autocast_enabled(input.device.type):
            dtype = torch.get_autocast_dtype(input.device.type)
            input, weight = input.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        if not batched:
            input = input.unsqueeze(0)
        # 1D and 2D run as 3D with leading spatial dimensions of size 1
        missing = 3 - spatial_dims
        for _ in range(missing):
            input, weight = input.unsqueeze(2), weight.unsqueeze(2)
        stride, dilation = (1,) * missing + tuple(stride), (1,) * missing + tuple(dilation)
        if not isinstance(padding, str):
            padding = (0,) * missing + tuple(padding)
        kernel = weight.shape[2:]
        leading = _leading_padding(padding, kernel, dilation)
        size = _output_size(input.shape[2:], kernel, stride, leading, dilation, padding == "same")
        output = _depthwise3d(input, weight, bias, list(stride), leading, list(dilation), size)
        for _ in range(missing):
            output = output.squeeze(2)
        return output if batched else output.squeeze(0)


def _triton_factory(argument: str | None) -> Algorithm:
    if argument is not None:
        raise ValueError(f"algorithm 'triton' takes no ':' argument, got {argument!r}")
    return TritonDepthwise()


register_algorithm("triton", _triton_factory)


def triton_candidates(call, device: torch.device) -> list[Algorithm]:
    """The autotuner's provider: the Triton kernels for depthwise calls where they run."""
    if call.weight_shape[1] == 1 and \
            call.groups == call.input_shape[1] and triton_usable(device):
        return [TritonDepthwise()]
    return []
