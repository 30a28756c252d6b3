"""float64 equivalence of every algorithm with F.convNd: output and input/weight/bias gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diagonalwise as dw
from diagonalwise.blocking import block_diagonal_position, valid_block_sizes
from tests.equivalence import (
    CASES,
    LAYOUTS,
    TOLERANCES,
    assert_matches_native,
    conv_problems,
    make_operands,
)


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


@settings(max_examples=1000)
@given(conv_problems(), st.integers(0, 2**16))
def test_property_block_diagonal_matches_native(problem, seed):
    (dims, batch, groups, in_pg, out_pg, kernel, sizes, bias, layout, stride, padding, dilation,
     block_size) = problem
    operands = make_operands(dims, batch, groups, in_pg, out_pg, kernel, sizes, bias, layout,
                             seed=seed)
    assert_matches_native(dims, *operands, stride, padding, dilation, groups,
                          block_size=block_size)
