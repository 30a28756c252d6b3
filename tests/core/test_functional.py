"""float64 equivalence of every algorithm with F.convNd: output and input/weight/bias gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diagonalwise as dw
from diagonalwise.blocking import block_diagonal_position, valid_block_sizes
from tests.equivalence import TOLERANCES, assert_matches_native

LAYOUTS = ("contiguous", "channels_last", "non_contiguous")


def make_operands(spatial_dims, batch, groups, in_per_group, out_per_group, kernel, sizes, bias,
                  layout="contiguous", dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = ((batch,) if batch else ()) + (groups * in_per_group, *sizes)
    if layout == "non_contiguous":
        # every other element of a twice-as-long last dimension: a strided view
        wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=generator, dtype=dtype)
        input = wide[..., ::2]
        # PyTorch calls a view contiguous when no dimension larger than 1 is strided (one
        # element, say), so the stride itself says it is a view
        assert input.stride(-1) == 2
    else:
        input = torch.randn(shape, generator=generator, dtype=dtype)
    if layout == "channels_last" and batch and spatial_dims in (2, 3):
        fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        input = input.contiguous(memory_format=fmt)
    weight = torch.randn(groups * out_per_group, in_per_group, *kernel, generator=generator,
                         dtype=dtype)
    bias_tensor = (torch.randn(groups * out_per_group, generator=generator, dtype=dtype)
                   if bias else None)
    return input, weight, bias_tensor


# (dims, groups, in/group, out/group, kernel, stride, padding, dilation, sizes)
CASES = [
    # MobileNet-style 3x3 depthwise, stride 1 and 2
    (2, 8, 1, 1, (3, 3), 1, 1, 1, (7, 7)),
    (2, 8, 1, 1, (3, 3), 2, 1, 1, (13, 13)),
    # channel multiplier 2 and 3, rectangular kernels, tuple padding
    (2, 6, 1, 2, (1, 5), 1, (0, 2), 1, (7, 9)),
    (2, 4, 1, 3, (7, 3), (2, 1), (3, 1), (1, 2), (13, 7)),
    # grouped: several input and output channels per group (ResNeXt/RegNet)
    (2, 4, 3, 2, (3, 3), 1, 1, 1, (7, 7)),
    (2, 6, 2, 2, (3, 3), 3, 2, 3, (13, 13)),
    # large kernel, dilation, 'same' and 'valid'
    (2, 4, 1, 1, (7, 7), 1, "same", 1, (13, 13)),
    (2, 4, 1, 1, (4, 2), 1, "same", (2, 3), (7, 13)),
    (2, 6, 1, 1, (3, 3), 1, "valid", 2, (13, 7)),
    # size-1 spatial dimension and 1x1 kernels
    (2, 4, 1, 1, (1, 1), 1, 0, 1, (1, 7)),
    # 1D: Mamba-style causal conv1d (left padding done by the caller) and strided
    (1, 8, 1, 1, (4,), 1, 3, 1, (13,)),
    (1, 6, 2, 1, (7,), 2, "valid", 2, (13,)),
    (1, 4, 1, 2, (3,), 1, "same", 3, (7,)),
    # 3D: X3D-style depthwise 3x3x3, grouped, strided
    (3, 4, 1, 1, (3, 3, 3), 1, 1, 1, (5, 7, 7)),
    (3, 6, 2, 1, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, (3, 7, 5)),
    (3, 4, 1, 2, (3, 1, 2), 1, "same", (2, 1, 1), (5, 3, 4)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-g{c[1]}-i{c[2]}-o{c[3]}-k{c[4]}")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_block_size_matches_native_float64(case, bias, layout):
    dims, groups, in_pg, out_pg, kernel, stride, padding, dilation, sizes = case
    operands = make_operands(dims, 2, groups, in_pg, out_pg, kernel, sizes, bias, layout)
    for block_size in valid_block_sizes(groups):
        assert_matches_native(dims, *operands, stride, padding, dilation, groups,
                              block_size=block_size)
    assert_matches_native(dims, *operands, stride, padding, dilation, groups, block_size=None)


@pytest.mark.parametrize("algorithm", ["native", "native_channels_last"])
@pytest.mark.parametrize("case", CASES[:2] + CASES[10:11] + CASES[13:14], ids=str)
def test_named_algorithms_match_native_float64(algorithm, case):
    dims, groups, in_pg, out_pg, kernel, stride, padding, dilation, sizes = case
    operands = make_operands(dims, 2, groups, in_pg, out_pg, kernel, sizes, True)
    assert_matches_native(dims, *operands, stride, padding, dilation, groups, algorithm=algorithm)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_unbatched_input(dims):
    operands = make_operands(dims, 0, 4, 1, 2, (3,) * dims, (5,) * dims, True)
    for block_size in (2, 4):
        assert_matches_native(dims, *operands, 1, 1, 1, 4, block_size=block_size)
    assert_matches_native(dims, *operands, 1, 1, 1, 4, algorithm="native_channels_last")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision_on_cpu(dtype):
    """float32 and bf16 run the same algorithms; tolerances are those of TOLERANCES[dtype]."""
    operands = make_operands(2, 2, 16, 1, 1, (3, 3), (13, 13), True, dtype=dtype)
    for block_size in (4, 16):
        assert_matches_native(2, *operands, 1, 1, 1, 16, dtype=dtype, block_size=block_size)


@pytest.mark.parametrize("groups, in_pg, out_pg, block", [(6, 1, 1, 3), (4, 2, 3, 2), (8, 1, 2, 8)])
def test_block_diagonal_weight_layout(groups, in_pg, out_pg, block):
    """Every entry of the dense weight is either the compact entry the index map names, or zero."""
    weight = torch.randn(groups * out_pg, in_pg, 3, 2, dtype=torch.float64)
    dense = dw.block_diagonal_weight(weight, groups, block)
    assert dense.shape == (groups * out_pg, block * in_pg, 3, 2)
    expected = torch.zeros_like(dense)
    for o in range(groups * out_pg):
        slot = block_diagonal_position(o, out_pg, block)
        expected[o, slot * in_pg:(slot + 1) * in_pg] = weight[o]
    assert torch.equal(dense, expected)


def test_weight_gradient_ignores_off_diagonal_terms():
    """The dense weight gradient has nonzero cross-channel entries; none may reach the compact one."""
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    weight = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    dense = dw.block_diagonal_weight(weight, 4, 4)
    dense.retain_grad()
    torch.nn.functional.conv2d(x, dense, padding=1).square().sum().backward()
    off_diagonal = dense.grad.clone()
    for o in range(4):
        off_diagonal[o, o] = 0
    assert off_diagonal.abs().max() > 1e-3  # the dense gradient does carry cross-channel terms
    native_weight = weight.detach().clone().requires_grad_()
    torch.nn.functional.conv2d(x, native_weight, padding=1, groups=4).square().sum().backward()
    torch.testing.assert_close(weight.grad, native_weight.grad, **TOLERANCES[torch.float64])


@st.composite
def conv_problems(draw):
    dims = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    in_pg = draw(st.integers(1, 3))
    out_pg = draw(st.integers(1, 3))
    max_kernel = 7 if dims < 3 else 3
    kernel = tuple(draw(st.integers(1, max_kernel)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    padding_kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    if padding_kind == "same":
        stride = (1,) * dims
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    if padding_kind == "int":
        padding = draw(st.integers(0, 3))
    elif padding_kind == "tuple":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(dims))
    else:
        padding = padding_kind
    # spatial sizes: at least the dilated kernel so every padding gives an output
    sizes = tuple(d * (k - 1) + 1 + draw(st.sampled_from([0, 1, 2, 5]))
                  for k, d in zip(kernel, dilation))
    batch = draw(st.sampled_from([0, 1, 2]))
    bias = draw(st.booleans())
    layout = draw(st.sampled_from(LAYOUTS))
    block_size = draw(st.sampled_from(valid_block_sizes(groups) + [None]))
    return dims, batch, groups, in_pg, out_pg, kernel, sizes, bias, layout, stride, padding, \
        dilation, block_size


@settings(max_examples=1000)
@given(conv_problems(), st.integers(0, 2**16))
def test_property_block_diagonal_matches_native(problem, seed):
    (dims, batch, groups, in_pg, out_pg, kernel, sizes, bias, layout, stride, padding, dilation,
     block_size) = problem
    operands = make_operands(dims, batch, groups, in_pg, out_pg, kernel, sizes, bias, layout,
                             seed=seed)
    assert_matches_native(dims, *operands, stride, padding, dilation, groups,
                          block_size=block_size)
