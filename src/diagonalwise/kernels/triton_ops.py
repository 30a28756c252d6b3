"""The Triton depthwise kernels as ``torch.library`` custom ops with autograd (and the rest of
:mod:`.depthwise_function`).

Equivalence contract: ``triton_depthwise_conv(x, w, b, stride, padding, dilation)`` equals
``F.conv1d/2d/3d`` for depthwise convolutions (``groups == in_channels``, weight
``(C * M, 1, *kernel)``), in value and in the input, weight and bias gradients, with float32
accumulation. The custom ops keep ``torch.compile`` free of graph breaks, and the weight gradient
reduces without atomics, so it is deterministic. They need an NVIDIA GPU with Triton, or
``TRITON_INTERPRET=1`` (set before Triton is imported) to run on CPU tensors through Triton's
interpreter, which the tests use. Importing this module does not import Triton.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..layout import memory_format_like
from .depthwise_function import differentiable
from .lifting import depthwise_via_3d

# looked up once: Dynamo refuses to trace importlib.util.find_spec, which a fullgraph compile of a
# Triton layer would meet on every call
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_usable(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on tensors of ``device`` here."""
    if not TRITON_INSTALLED:
        return False
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())


@torch.library.custom_op("diagonalwise::triton_depthwise3d", mutates_args=())
def _depthwise3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: list[int], padding: list[int], dilation: list[int],
                 output_size: list[int]) -> torch.Tensor:
    from . import triton_depthwise

    return triton_depthwise.forward(x, weight, bias, stride, padding, dilation, output_size)


@torch.library.custom_op("diagonalwise::triton_depthwise3d_backward", mutates_args=())
def _depthwise3d_backward(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          stride: list[int], padding: list[int], dilation: list[int],
                          input_grad: bool, weight_grad: bool, bias_grad: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton_depthwise

    grad_output = grad_output.contiguous(memory_format=memory_format_like(x))
    # the gradients not asked for are empty (and distinct: custom op outputs may not alias)
    dx = (triton_depthwise.input_grad(grad_output, x, weight, stride, padding, dilation)
          if input_grad else x.new_empty(0))
    dw = (triton_depthwise.weight_grad(grad_output, x, weight, stride, padding, dilation)
          if weight_grad else x.new_empty(0))
    db = grad_output.sum((0, 2, 3, 4)) if bias_grad else x.new_empty(0)
    return dx, dw, db


_depthwise = differentiable(_depthwise3d, _depthwise3d_backward)


def triton_depthwise_conv(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          stride: tuple[int, ...], padding: tuple[int, ...] | str,
                          dilation: tuple[int, ...]) -> torch.Tensor:
    """A depthwise 1D/2D/3D convolution (batched or not) through the custom ops; follows autocast.
    The caller checks that the convolution is depthwise and that :func:`triton_usable` holds."""
    return depthwise_via_3d(_depthwise, input, weight, bias, stride, padding, dilation)
