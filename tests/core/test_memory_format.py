"""Every algorithm gives its output in the memory layout native gives, for every combination of
input and weight layout (a model moved to channels_last and fed NCHW data has channels_last
weights and NCHW inputs), in 2D and 3D, for functions and converted modules."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch._prims_common import suggest_memory_format

import diagonalwise as dw
from diagonalwise.layout import CHANNELS_LAST_FORMAT, suggests_channels_last

ALGORITHMS = ["block_diagonal:2", "block_diagonal:8", "native_channels_last", "cpu_direct"]


def layout_of(tensor: torch.Tensor) -> str:
    fmt = CHANNELS_LAST_FORMAT[tensor.dim()]
    return "channels_last" if tensor.is_contiguous(memory_format=fmt) and \
        not tensor.is_contiguous() else "contiguous"


def operands(dims, dtype, input_layout, weight_layout, multiplier):
    fmt = CHANNELS_LAST_FORMAT[dims + 2]
    x = torch.randn(2, 8, *(6,) * dims, dtype=dtype)
    weight = torch.randn(8 * multiplier, 1, *(3,) * dims, dtype=dtype)
    if input_layout == "channels_last":
        x = x.contiguous(memory_format=fmt)
    if weight_layout == "channels_last":
        weight = weight.to(memory_format=fmt)  # what model.to(memory_format=...) does
    return x, weight


@pytest.mark.parametrize("dims, dtype", [(2, torch.float64), (2, torch.float32),
                                         (2, torch.bfloat16), (3, torch.float64),
                                         (3, torch.float32)])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_output_layout_is_natives(dims, dtype, algorithm):
    conv = {2: dw.conv2d, 3: dw.conv3d}[dims]
    for input_layout, weight_layout, multiplier in itertools.product(
            ("contiguous", "channels_last"), ("contiguous", "channels_last"), (1, 2)):
        x, weight = operands(dims, dtype, input_layout, weight_layout, multiplier)
        want = layout_of(dw.reference_conv(x, weight, None, 1, 1, 1, 8))
        got = layout_of(conv(x, weight, None, 1, 1, 1, 8, algorithm=algorithm))
        assert got == want, (input_layout, weight_layout, multiplier)


@pytest.mark.parametrize("block_size", [2, 8])
def test_a_converted_channels_last_model_fed_nchw_gives_natives_layout(block_size):
    native = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1, groups=8))
    native = native.to(memory_format=torch.channels_last)
    converted = dw.convert(native, block_size=block_size)
    x = torch.randn(2, 8, 7, 7)
    assert layout_of(converted(x)) == layout_of(dw.revert(converted)(x)) == "channels_last"


def test_channels_last_suggestion_follows_pytorch():
    for shape in [(8, 1, 3, 3), (2, 8, 6, 6), (1, 1, 1, 1), (4, 1, 1, 1), (8, 2, 3, 3),
                  (1, 8, 1, 6), (8, 1, 3, 3, 3), (2, 8, 4, 4, 4)]:
        tensor = torch.randn(shape)
        fmt = CHANNELS_LAST_FORMAT[len(shape)]
        for variant in (tensor, tensor.to(memory_format=fmt), tensor.transpose(-1, -2)):
            assert suggests_channels_last(variant) == \
                (suggest_memory_format(variant) != torch.contiguous_format), variant.stride()
