"""Our direct CPU depthwise kernels ('cpu_direct'): float64 equivalence with F.conv1d/2d/3d,
output and every gradient, on a grid and a random search, every layout, strided views and
unbatched inputs; every output element written; thread counts; determinism; compile; autocast;
lower precisions; and the path where the kernels cannot be built."""

from __future__ import annotations

import contextlib
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import diagonalwise as dw
from diagonalwise.algorithms import get_algorithm
from diagonalwise.call import ConvCall
from diagonalwise.kernels import cpu_ops
from diagonalwise.kernels.depthwise_function import _plain_eager
from tests.equivalence import (
    CASES,
    LAYOUTS,
    TOLERANCES,
    assert_func_transforms_match_native,
    assert_matches_native,
    conv_problems,
    make_operands,
)

pytestmark = pytest.mark.skipif(cpu_ops.cpu_kernels_unavailable() is not None,
                                reason=f"cpu kernels not built: {cpu_ops.cpu_kernels_unavailable()}")

DEPTHWISE_CASES = [case for case in CASES if case[2] == 1] + [
    # large and rectangular kernels (RepLKNet 31x31, ConvNeXt 7x7), odd sizes
    (2, 4, 1, 1, (31, 31), 1, 15, 1, (33, 35)),
    (2, 3, 1, 2, (13, 1), (1, 2), (6, 0), 1, (17, 7)),
    (2, 5, 1, 1, (7, 7), 2, 3, 1, (13, 13)),
    # whole channel vectors (16 float64 channels) with windows wider than the window tiles
    (2, 16, 1, 1, (13, 13), 1, 6, 1, (15, 20)),
    (2, 16, 1, 1, (3, 11), 1, (1, 5), 1, (9, 24)),
    (3, 3, 1, 3, (3, 3, 3), 2, "valid", 1, (7, 7, 7)),
    # NCHW with a channel multiplier at stride 1 (the whole-plane loops), and multiplier 1 above
    # 56x56 (channel blocks with whole and short 16-column transposes)
    (2, 3, 1, 2, (3, 3), 1, 1, 1, (57, 61)),
    (2, 2, 1, 3, (5, 3), 1, (1, 2), (2, 1), (60, 58)),
    (3, 2, 1, 2, (3, 3, 3), 1, 1, 1, (3, 40, 30)),
    (2, 3, 1, 1, (3, 3), 1, 1, 1, (57, 61)),
]


@pytest.fixture
def poisoned_outputs():
    """Every output and scratch buffer the kernels allocate starts as NaN: an element left
    unwritten (or a padding position not zeroed) shows up."""
    extension = cpu_ops._extension()
    extension.set_poison(True)
    yield
    extension.set_poison(False)


@pytest.mark.parametrize("case", DEPTHWISE_CASES,
                         ids=lambda c: f"{c[0]}d-g{c[1]}-o{c[3]}-k{'x'.join(map(str, c[4]))}")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_native_float64(case, bias, layout, poisoned_outputs):
    dims, groups, in_pg, out_pg, kernel, stride, padding, dilation, sizes = case
    operands = make_operands(dims, 2, groups, in_pg, out_pg, kernel, sizes, bias, layout)
    assert_matches_native(dims, *operands, stride, padding, dilation, groups,
                          algorithm="cpu_direct")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_unbatched_input(dims, poisoned_outputs):
    operands = make_operands(dims, 0, 4, 1, 2, (3,) * dims, (5,) * dims, True)
    assert_matches_native(dims, *operands, 1, 1, 1, 4, algorithm="cpu_direct")


@pytest.mark.parametrize("geometry", [
    # (kernel, stride, padding, dilation, sizes): widths giving column tiles of 8, 4, 2 and 1,
    # border columns with some taps outside, rows narrower than the kernel, strides, dilation
    ((3, 3), 1, 1, 1, (5, 23)),
    ((3, 3), 2, 1, 1, (9, 16)),
    # 3x3 windows: the forward's tiles as window_tile_widths picks them up to 28 columns (rows of
    # 6 in 4 + 2, 9 in 5 + 4, 10 in 5 + 5, 11 in 7 + 4, 13 in 8 + 5, 14 in 7 + 7, 21 in 8 + 8 + 5),
    # 16 / NB wide above; the weight gradient's in 7s for rows of 14 and 21, else 8, 7, 5, 4, 2, 1
    ((3, 3), 1, 1, 1, (3, 6)),
    ((3, 3), 1, 1, 1, (3, 9)),
    ((3, 3), 1, 1, 1, (2, 10)),
    ((3, 3), 1, 1, 1, (3, 11)),
    ((3, 3), 1, 1, 1, (3, 13)),
    ((3, 3), 1, 1, 1, (3, 14)),
    ((3, 3), 1, 1, 1, (2, 21)),
    ((3, 3), 1, 1, 1, (3, 31)),
    ((7, 7), 1, 3, 1, (4, 4)),
    ((5, 3), (1, 2), (2, 4), (1, 3), (6, 19)),
    ((1, 4), 1, "same", 2, (3, 14)),
    # whole windows of 5 and 7 taps (forward_tile_window, weight_grad_tile_window): tiles of 16,
    # 8, 7, 5, 4, 2 and 1 columns
    ((5, 5), 1, 2, 1, (6, 21)),
    ((5, 5), 1, 2, 1, (5, 5)),
    ((5, 5), 1, 2, 1, (4, 10)),
    ((5, 5), 1, 2, 1, (5, 23)),
    ((7, 7), 1, 3, 1, (9, 30)),
    ((7, 7), 1, 3, 1, (8, 15)),
    # stride-2 input gradients with both column phases in one tile (input_grad_pairs_tile):
    # tiles of 16, 4 and 1 columns, clamped at both ends; rows narrower than the kernel
    ((5, 5), 2, 2, 1, (7, 21)),
    ((3, 3), 2, 1, 1, (4, 7)),
    ((5, 5), 2, 2, 1, (3, 3)),
], ids=lambda g: f"k{'x'.join(map(str, g[0]))}-s{g[1]}-w{g[4][1]}")
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_channels_inner_tiles_match_native_float64(geometry, layout, poisoned_outputs):
    """59 channels: in channels_last 7 whole float64 vectors (groups of 4, 2 and 1) and a tail
    of 3 (one more vector, overlapping the last), through every tile shape of the channels-inner
    forward, input and weight gradients; in NCHW the same tiles on channel blocks, as few as fit
    a row (fewest_tile_widths: rows of 23 in 16 + 7, 31 in 16 + 8 + 7, 21 in 7 + 7 + 7, 10 in
    8 + 2)."""
    kernel, stride, padding, dilation, sizes = geometry
    operands = make_operands(2, 2, 59, 1, 1, kernel, sizes, True, layout)
    assert_matches_native(2, *operands, stride, padding, dilation, 59, algorithm="cpu_direct")


@pytest.mark.parametrize("stride", [1, (1, 2, 2)])
def test_channel_tail_vector_matches_native_float64(stride, poisoned_outputs):
    """54 channels (X3D's first stage) in channels_last_3d: 6 whole float64 vectors and a tail of
    6, which the tiles take as one more vector overlapping the last: written twice in the
    forward and input gradient, summed apart in the weight gradient."""
    operands = make_operands(3, 2, 54, 1, 1, (3, 3, 3), (3, 9, 10), True, "channels_last")
    assert_matches_native(3, *operands, stride, 1, 1, 54, algorithm="cpu_direct")


@pytest.mark.parametrize("padding, dilation, kernel", [(3, 1, 4), (2, 2, 3), (0, 1, 5), ("same", 3, 3)],
                         ids=["causal", "dilated", "valid", "same"])
def test_long_rows_match_native_float64(padding, dilation, kernel, poisoned_outputs):
    """1D rows of 64 columns and more, unit stride (Mamba's causal conv1d): each row through a
    zero-padded buffer, 70 columns a partial last vector; the backward's sums per channel in
    sample order, 5 channels in tasks of 2 and 3."""
    operands = make_operands(1, 3, 5, 1, 1, (kernel,), (70,), True)
    assert_matches_native(1, *operands, 1, padding, dilation, 5, algorithm="cpu_direct")


@pytest.fixture
def streamed_outputs():
    """Every output that can be written with streaming stores is (not only those of calls moving
    more than 16 MB)."""
    extension = cpu_ops._extension()
    previous = extension.set_streaming_threshold(0)
    yield
    extension.set_streaming_threshold(previous)


@pytest.mark.parametrize("geometry", [
    ((3, 3), 1, 1, (9, 23)),  # window tiles, border columns
    ((5, 5), 1, 2, (6, 21)),
    ((3, 3), 2, 1, (9, 16)),  # strided forward tiles; input gradient in pair tiles
    ((3, 3), 3, 1, (7, 17)),  # input gradient by column phases
], ids=lambda g: f"k{'x'.join(map(str, g[0]))}-s{g[1]}")
def test_streamed_outputs_match_native_float64(geometry, poisoned_outputs, streamed_outputs):
    """channels_last, 40 float64 channels: columns of 5 cache lines, so the forward's output and
    the input gradient are written with streaming stores (a group of 4 vectors and a single)."""
    assert torch.empty(1000, dtype=torch.float64).data_ptr() % 64 == 0  # what streaming needs
    kernel, stride, padding, sizes = geometry
    operands = make_operands(2, 2, 40, 1, 1, kernel, sizes, True, "channels_last")
    assert_matches_native(2, *operands, stride, padding, 1, 40, algorithm="cpu_direct")


@settings(max_examples=300)
@given(conv_problems(depthwise=True), st.integers(0, 2**16))
def test_property_matches_native(problem, seed):
    (dims, batch, groups, in_pg, out_pg, kernel, sizes, bias, layout, stride, padding, dilation,
     _) = problem
    operands = make_operands(dims, batch, groups, in_pg, out_pg, kernel, sizes, bias, layout,
                             seed=seed)
    assert_matches_native(dims, *operands, stride, padding, dilation, groups,
                          algorithm="cpu_direct")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels", [16, 20])  # whole channel blocks, and a tail
# rows of 13 and 37 columns (in NCHW, 37 = two whole 16-column transposes and a short one),
# stride 1 and 2; with a channel multiplier, NCHW stride-1 layers take the whole-plane loops
@pytest.mark.parametrize("stride, size, multiplier", [(1, 13, 1), (1, 37, 1), (2, 37, 1),
                                                      (1, 60, 1), (1, 20, 2)],
                         ids=["s1-13", "s1-37", "s2-37", "s1-60", "s1-20-m2"])
def test_lower_precisions_match_native(dtype, layout, channels, stride, size, multiplier):
    """float32 against native float32; bfloat16 and float16 (accumulated in float32) against
    native in float32 of the same rounded operands, within one rounding of the output type."""
    operands = make_operands(2, 2, channels, 1, multiplier, (3, 3), (size, size), True, layout,
                             dtype=dtype)
    if dtype == torch.float32:
        assert_matches_native(2, *operands, stride, 1, 1, channels, dtype=dtype,
                              algorithm="cpu_direct")
        return
    x, weight, bias = (t.detach().requires_grad_() for t in operands)
    ours = dw.conv2d(x, weight, bias, stride, 1, 1, channels, algorithm="cpu_direct")
    wide = [t.detach().float().requires_grad_() for t in operands]
    expected = torch.nn.functional.conv2d(*wide, stride, 1, 1, channels)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(0))
    ours.backward(grad.to(dtype))
    expected.backward(grad.to(dtype).float())
    tolerance = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else TOLERANCES[dtype]
    torch.testing.assert_close(ours.float(), expected, **tolerance)
    for got, want in zip((x, weight, bias), wide):
        scale = want.grad.abs().max()
        torch.testing.assert_close(got.grad.float() / scale, want.grad / scale, **tolerance)


def test_autocast_bfloat16_matches_native():
    x = torch.randn(2, 16, 13, 13).contiguous(memory_format=torch.channels_last)
    layer = dw.DiagonalwiseConv2d(16, 16, 3, padding=1, groups=16, algorithm="cpu_direct")
    native = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
    native.load_state_dict(layer.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, expected = layer(x), native(x)
    assert ours.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(ours, expected, **TOLERANCES[torch.bfloat16])
    dy = torch.randn_like(ours)
    ours.backward(dy)
    expected.backward(dy)
    for mine, theirs in ((layer.weight.grad, native.weight.grad), (layer.bias.grad, native.bias.grad)):
        assert mine.dtype == theirs.dtype == torch.float32  # through autocast's cast, as native's
        torch.testing.assert_close(mine, theirs, **TOLERANCES[torch.bfloat16])


@pytest.mark.parametrize("channels", [32, 54])  # whole vectors, and a tail summed apart
def test_one_and_two_threads_agree_and_repeats_are_bitwise_identical(channels):
    x = torch.randn(4, channels, 17, 17).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, 5, 5)
    previous = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_() for t in (x, weight)]
            dw.conv2d(*leaves, None, 1, 2, 1, channels,
                      algorithm="cpu_direct").square().sum().backward()
            results.setdefault(threads, []).append([t.grad for t in leaves])
    finally:
        torch.set_num_threads(previous)
    first, second = results[2]
    assert torch.equal(first[1], second[1])  # the weight gradient, at a fixed thread count
    # float32 sums of 4 * 17 * 17 terms, split at other places: rounding of ~1e-4 of the largest
    for got, want in zip(results[1][0], first):
        scale = want.abs().max()
        torch.testing.assert_close(got / scale, want / scale, rtol=1e-4, atol=1e-4)


def test_compile_fullgraph_and_checkpointing():
    layer = dw.DiagonalwiseConv2d(8, 16, 3, padding=1, groups=8, algorithm="cpu_direct").double()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.conv2d(x, layer.weight, layer.bias, 1, 1, 1, 8)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, **TOLERANCES[torch.float64])
    checkpointed = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
    checkpointed.sum().backward()
    reference = x.detach().clone().requires_grad_()
    torch.nn.functional.conv2d(reference, layer.weight, layer.bias, 1, 1, 1, 8).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("stride, padding, kernel", [
    (2, 1, 3), (1, "same", 4), (2, 0, 3)])  # trailing padding 0, 2 ('same' even), -1 (input cut)
def test_gradcheck_and_gradgradcheck(stride, padding, kernel):
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def conv(x, weight, bias):
        return dw.conv2d(x, weight, bias, stride, padding, 1, 3, algorithm="cpu_direct")

    assert torch.autograd.gradcheck(conv, (x, weight, bias))
    assert torch.autograd.gradgradcheck(conv, (x, weight, bias))


def test_tuner_candidate_for_depthwise_cpu_calls_only():
    depthwise = ConvCall((2, 8, 6, 6), (8, 1, 3, 3), False, (1, 1), (1, 1), (1, 1), 8, "float32",
                         "contiguous")
    grouped = ConvCall((2, 8, 6, 6), (8, 2, 3, 3), False, (1, 1), (1, 1), (1, 1), 4, "float32",
                       "contiguous")
    assert "cpu_direct" in [a.name for a in dw.candidate_algorithms(depthwise, "cpu")]
    assert "cpu_direct" not in [a.name for a in dw.candidate_algorithms(grouped, "cpu")]
    with pytest.raises(ValueError, match="computes depthwise convolutions"):
        dw.conv2d(torch.randn(1, 8, 5, 5), torch.randn(8, 2, 3, 3), groups=4,
                  algorithm="cpu_direct")


def test_the_kernels_compile_without_avx512():
    """The kernels build with `-march=native`; on a CPU without AVX-512 (AVX2, x86-64-v3) the
    transposes and the bfloat16 pairs drop out and everything else must still compile (from v35
    to v40 it did not, and cpu_direct was unavailable there; built so, the kernel tests pass).
    Syntax and templates only (cpu_depthwise_eager.cpp has no CPU-specific code)."""
    import shutil
    import subprocess
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    if shutil.which("g++") is None:
        pytest.skip("no g++: the kernels are unavailable here anyway (tested below)")
    includes = [f"-I{path}" for path in [*include_paths(), sysconfig.get_paths()["include"]]]
    source = next(path for path in cpu_ops.SOURCES if path.name == "cpu_depthwise.cpp")
    done = subprocess.run(["g++", "-std=c++20", "-fsyntax-only", "-march=x86-64-v3", "-fopenmp",
                           *includes, str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_without_a_compiler_the_algorithm_is_unavailable_and_nothing_else_breaks(monkeypatch):
    monkeypatch.setattr(cpu_ops, "_load", lambda: "CalledProcessError: no compiler here")
    call = ConvCall((2, 8, 6, 6), (8, 1, 3, 3), False, (1, 1), (1, 1), (1, 1), 8, "float32",
                    "contiguous")
    assert "cpu_direct" not in [a.name for a in dw.candidate_algorithms(call, "cpu")]
    with pytest.raises(RuntimeError, match=r"could not be built here \(CalledProcessError: no "
                                           r"compiler here\); use 'native' or a block size"):
        dw.conv2d(torch.randn(1, 8, 5, 5), torch.randn(8, 1, 3, 3), groups=8,
                  algorithm="cpu_direct")
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8))
    plan = dw.tune(model, torch.randn(2, 8, 6, 6), cache=False,
                   timer=lambda call, algorithm, device: 1.0)
    assert plan.summary() == {"native": 1}


@pytest.mark.parametrize("wanted", ["input", "weight", "bias", "input+bias"])
def test_only_the_gradients_asked_for(wanted):
    operands = make_operands(2, 2, 8, 1, 1, (3, 3), (7, 7), True)
    leaves = [t.detach().clone().requires_grad_(name in wanted)
              for t, name in zip(operands, ("input", "weight", "bias"))]
    reference = [t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]
    grad = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    dw.conv2d(*leaves, 1, 1, 1, 8, algorithm="cpu_direct").backward(grad)
    torch.nn.functional.conv2d(*reference, 1, 1, 1, 8).backward(grad)
    for got, want in zip(leaves, reference):
        assert (got.grad is None) == (want.grad is None)
        if want.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_an_empty_batch_and_an_expanded_output_gradient(layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    weight = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    empty = torch.randn(0, 8, 5, 5, dtype=torch.float64).contiguous(memory_format=fmt)
    output = dw.conv2d(empty.requires_grad_(), weight, None, 1, 1, 1, 8, algorithm="cpu_direct")
    output.sum().backward()
    assert output.shape == (0, 8, 5, 5) and torch.equal(weight.grad, torch.zeros_like(weight))
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64).contiguous(memory_format=fmt)
    assert_matches_native(2, x, weight.detach(), None, 1, 1, 1, 8, algorithm="cpu_direct")
    ours = x.clone().requires_grad_()
    reference = x.clone().requires_grad_()
    ones = torch.ones(1, 1, 1, 1, dtype=torch.float64).expand(2, 8, 5, 5)  # stride-0 gradient
    dw.conv2d(ours, weight.detach(), None, 1, 1, 1, 8, algorithm="cpu_direct").backward(ones)
    torch.nn.functional.conv2d(reference, weight.detach(), None, 1, 1, 1, 8).backward(ones)
    torch.testing.assert_close(ours.grad, reference.grad, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels, size, stride", [(20, 37, 1), (20, 37, 2), (16, 13, 1)])
def test_bfloat16_results_are_the_float32_results_rounded(layout, channels, size, stride):
    """bfloat16 accumulates in float32 in the float32 path's order, so its output and all three
    gradients are the float32 path's on the same operands, rounded to nearest even (torch's
    rounding), to the bit: a store that truncated would differ in about half the values."""
    assert_bfloat16_is_float32_rounded(layout, channels, size, stride)


@pytest.mark.parametrize("size, stride", [(13, 1), (14, 2), (13, 3)])
def test_streamed_bfloat16_rows_are_the_float32_results_rounded(size, stride, poisoned_outputs,
                                                                 streamed_outputs):
    """channels_last bfloat16 with 32 channels (rows of whole cache lines): the forward's output
    rows and the input gradient's staged in a buffer and streamed whole, every element written."""
    assert_bfloat16_is_float32_rounded("channels_last", 32, size, stride)


@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_channels_last_view_is_the_float32_results_rounded(stride):
    """The channels_last bfloat16 tiles read x where it lies (since v19, no rows converted to
    float first): a view whose pixels are two apart gives the float32 path's results rounded."""
    assert_bfloat16_is_float32_rounded("channels_last_view", 20, 13, stride)


# NCHW channel blocks through the transposes: volumes with rows of 10 or fewer in flat chunks
# across their rows (7x7 and 10x10: the last chunk overlapping the one before; 3x3: fewer
# positions than a vector; 8x8 at stride 2; a 3D volume), a cut view of 7x7 planes (not dense: row
# chunks, masked), whole and partial blocks of channels (16, 20 = 16 + 4, 6 < 16). The forward and
# input gradient join the rows of 5x5, 7x7 and 10x10 planes (3x5x5: per plane), not of 3x3 or
# 3x4x4 (too many columns between the rows).
SMALL_VOLUMES = {"7x7": ((7, 7), 1, False), "10x10": ((10, 10), 1, False),
                 "5x5": ((5, 5), 1, False), "3x3": ((3, 3), 1, False),
                 "8x8-s2": ((8, 8), 2, False), "3x4x4": ((3, 4, 4), 1, False),
                 "3x5x5": ((3, 5, 5), 1, False), "7x7-view": ((7, 7), 1, True)}


def small_volume_operands(name, channels, dtype):
    sizes, stride, cut = SMALL_VOLUMES[name]
    generator = torch.Generator().manual_seed(0)
    wide = (*sizes[:-1], sizes[-1] + 2) if cut else sizes
    x = torch.randn(2, channels, *wide, generator=generator)[..., :sizes[-1]].to(dtype)
    weight = torch.randn(channels, 1, *([3] * len(sizes)), generator=generator).to(dtype)
    bias = torch.randn(channels, generator=generator).to(dtype)
    return x, weight, bias, stride


@pytest.mark.parametrize("channels", [16, 20, 6])
@pytest.mark.parametrize("name", list(SMALL_VOLUMES))
def test_small_volumes_through_the_transposes_match_native(name, channels, poisoned_outputs):
    x, weight, bias, stride = small_volume_operands(name, channels, torch.float32)
    assert_matches_native(x.dim() - 2, x, weight, bias, stride, 1, 1, channels,
                          dtype=torch.float32, algorithm="cpu_direct")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kernel, sizes", [((7, 7), (9, 11)), ((3, 3, 3), (4, 6, 7))],
                         ids=["k7x7", "k3x3x3"])
@pytest.mark.parametrize("stride", [1, 2])
def test_many_taps_turned_over_in_blocks_match_native(layout, kernel, sizes, stride,
                                                      poisoned_outputs):
    """float32, 40 channels (two blocks of 16 and one of 8) and more than 16 taps (49: three
    whole 16-tap transposes and one of a single tap; 27: 16 and 11): the weights turned over for
    the channels-inner tiles (flipped for the stride-1 input gradient) and the weight gradient's
    sums turned back, 16 x 16 at a time (transposed_taps, store_channel_block); float64 takes
    the element-by-element loops."""
    padding = tuple(k // 2 for k in kernel)
    operands = make_operands(len(kernel), 2, 40, 1, 1, kernel, sizes, True, layout,
                             dtype=torch.float32)
    assert_matches_native(len(kernel), *operands, stride, padding, 1, 40, dtype=torch.float32,
                          algorithm="cpu_direct")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_many_taps_in_bfloat16_are_the_float32_results_rounded(layout):
    """bfloat16 weights of 49 taps turned over from their own bits (load_columns' bfloat16
    transposes): the float32 path's results rounded, to the bit."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 9, 11, generator=generator).bfloat16()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(40, 1, 7, 7, generator=generator).bfloat16()
    bias = torch.randn(40, generator=generator).bfloat16()
    assert_float32_results_rounded(x, weight, bias, 1, 40, padding=3)


@pytest.mark.parametrize("channels", [16, 20, 6])
@pytest.mark.parametrize("name", list(SMALL_VOLUMES))
def test_small_volumes_in_bfloat16_are_the_float32_results_rounded(name, channels,
                                                                    poisoned_outputs):
    assert_float32_results_rounded(*small_volume_operands(name, channels, torch.bfloat16),
                                   channels)


def assert_bfloat16_is_float32_rounded(layout, channels, size, stride):
    fmt = torch.contiguous_format if layout == "contiguous" else torch.channels_last
    generator = torch.Generator().manual_seed(0)
    width = 2 * size if layout == "channels_last_view" else size
    x = torch.randn(2, channels, size, width, generator=generator).to(torch.bfloat16)
    x = x.contiguous(memory_format=fmt)
    if layout == "channels_last_view":
        x = x[..., ::2]
        assert x.stride(1) == 1 and x.stride(3) == 2 * channels
    weight = torch.randn(channels, 1, 3, 3, generator=generator).to(torch.bfloat16)
    bias = torch.randn(channels, generator=generator).to(torch.bfloat16)
    assert_float32_results_rounded(x, weight, bias, stride, channels)


def assert_float32_results_rounded(x, weight, bias, stride, channels, padding=1):
    """The bfloat16 operands' output and gradients equal, to the bit, the float32 path's on the
    same values rounded to bfloat16."""
    results = {}
    for dtype in (torch.bfloat16, torch.float32):
        operands = [t.to(dtype).detach().requires_grad_() for t in (x, weight, bias)]
        out = dw.functional.conv_nd(x.dim() - 2, *operands, stride, padding, 1, channels,
                                    algorithm="cpu_direct")
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        out.backward(grad.to(torch.bfloat16).to(dtype))
        results[dtype] = [out.detach()] + [t.grad for t in operands]
    for ours, wide in zip(results[torch.bfloat16], results[torch.float32]):
        assert torch.equal(ours.view(torch.int16), wide.to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (7, 7), (3, 3, 3)])
@pytest.mark.parametrize("channels, size, padding", [(20, 37, 1), (16, 32, 0), (6, 16, "same"),
                                                     (16, 9, 2)])
def test_bfloat16_window_pairs_are_the_float32_results_rounded(kernel, channels, size, padding,
                                                               poisoned_outputs):
    """NCHW bfloat16 forwards at unit width stride take two taps per `vdpbf16ps` where the CPU
    has it (pairs gathered across 16-column chunks: 37 = 16 + 16 + 5, 32 and 16 whole chunks, 9
    one partial; rows of 3, 5 and 7 taps, a 3D window): the float32 path's results rounded, to
    the bit, as everywhere else."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, *([5] * (len(kernel) - 2)), size, size, generator=generator)
    weight = torch.randn(channels, 1, *kernel, generator=generator)
    bias = torch.randn(channels, generator=generator)
    assert_float32_results_rounded(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), 1, channels,
                                   padding)


@pytest.mark.parametrize("kernel, padding", [(3, 1), (3, 0), (5, 2), (7, 0)])
def test_bfloat16_window_pairs_keep_inf_where_native_puts_it(kernel, padding):
    """An inf beside a window (the column after its last tap, or a row's first column) must not
    reach the output: no tap is paired with a neighbour outside its window."""
    x = torch.randn(2, 16, 11, 23).to(torch.bfloat16)
    x[0, 3, 4, 9], x[1, 7, 2, 0], x[1, 8, 6, 22] = float("inf"), float("-inf"), float("inf")
    weight = torch.randn(16, 1, kernel, kernel).to(torch.bfloat16)
    ours = dw.conv2d(x, weight, None, 1, padding, 1, 16, algorithm="cpu_direct")
    native = torch.nn.functional.conv2d(x.float(), weight.float(), None, 1, padding, 1, 16)
    assert torch.equal(ours.isfinite(), native.isfinite()) and not ours.isfinite().all()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bfloat16_keeps_nan_and_inf_where_native_puts_them(layout):
    """Our bfloat16 stores round on the raw bits or with the AVX512_BF16 instruction; NaN and
    Inf must come out as native's do."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 16, 9, 9).to(torch.bfloat16)
    x[0, 3, 4, 4], x[1, 7, 0, 0] = float("nan"), float("inf")
    x = x.contiguous(memory_format=fmt)
    weight = torch.rand(16, 1, 3, 3).to(torch.bfloat16)  # positive: inf stays inf
    ours = dw.conv2d(x, weight, None, 1, 1, 1, 16, algorithm="cpu_direct")
    native = torch.nn.functional.conv2d(x, weight, None, 1, 1, 1, 16)
    assert torch.equal(ours.isnan(), native.isnan()) and torch.equal(ours.isinf(), native.isinf())
    assert ours.isnan().any() and ours.isinf().any()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("multiplier", [1, 2])  # NCHW: channel blocks, or whole planes
def test_inf_in_the_input_reaches_only_the_weight_gradients_native_puts_it_in(layout, multiplier):
    """x's last column is never read by the left taps: their gradient stays finite, though the
    whole-plane loops compute positions past each row's end (where dy is zero) from it."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    x[1, 2, 5, 8] = float("inf")
    x = x.contiguous(memory_format=fmt).requires_grad_()
    weight = torch.randn(4 * multiplier, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 4 * multiplier, 9, 9, dtype=torch.float64)
    grads = []
    for algorithm in ("cpu_direct", None):
        out = dw.conv2d(x, weight, None, 1, 1, 1, 4, algorithm=algorithm) if algorithm else \
            torch.nn.functional.conv2d(x, weight, None, 1, 1, 1, 4)
        grads.append(torch.autograd.grad(out, weight, dy)[0])
    ours, native = grads
    assert torch.equal(ours.isfinite(), native.isfinite())
    channel = 2 * multiplier  # the first output channel of input channel 2
    assert native[channel, 0, :, 0].isfinite().all() and not native[channel].isfinite().all()


class _PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_plain_eager_calls_alone_skip_the_custom_ops():
    """Plain eager calls run the kernels directly; anything the ops' registrations serve (a
    functorch transform, forward AD, a dispatch mode, a tensor subclass) goes through the ops."""
    x, weight = torch.randn(1, 4, 5, 5), torch.nn.Parameter(torch.randn(4, 1, 3, 3))
    assert _plain_eager(x, weight, None)
    seen = []
    torch.func.vmap(lambda x: seen.append(_plain_eager(x, weight, None)) or x)(x)
    with torch.autograd.forward_ad.dual_level():
        seen.append(_plain_eager(x, weight, None))
    with _PassThrough():
        seen.append(_plain_eager(x, weight, None))

    class Subclass(torch.Tensor):
        pass

    seen.append(_plain_eager(x.as_subclass(Subclass), weight, None))
    assert seen == [False] * 4


@pytest.mark.parametrize("through_the_ops", [False, True])
@pytest.mark.parametrize("padding, kernel, size", [(0, 5, 0), (0, 6, -1), (1, 8, -1)])
def test_a_kernel_larger_than_the_padded_input_is_a_clear_error(through_the_ops, padding, kernel,
                                                                size):
    """F.conv2d's output size (floor division: -3 // 2 is -2), in the eager path's C++ and in the
    ops' Python alike."""
    x, weight = torch.randn(1, 4, 3, 3), torch.randn(4, 1, kernel, kernel)
    message = (f"the output size [{size}, {size}] is not positive: the dilated kernel "
               f"[{kernel}, {kernel}] is larger than the padded input [3, 3]")
    with _PassThrough() if through_the_ops else contextlib.nullcontext():
        with pytest.raises(RuntimeError, match=re.escape(message)):
            dw.conv2d(x, weight, None, 2, padding, 1, 4, algorithm="cpu_direct")


@pytest.mark.parametrize("through_the_ops", [False, True])
@pytest.mark.parametrize("stride, padding, dilation", [((0, 1), (1, 1), (1, 1)),
                                                       ((1, 1), (1, 1), (1, -2)),
                                                       ((1, 2), (-1, 0), (1, 1))])
def test_a_stride_dilation_or_padding_out_of_range_is_a_clear_error(through_the_ops, stride,
                                                                    padding, dilation):
    """Called directly (the functional API and the modules check first), the algorithm too
    names the bad geometry instead of dividing by zero or reading past the kernel's window."""
    x, weight = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    message = (f"strides and dilations must be positive and padding not negative, got stride "
               f"{list(stride)}, padding {list(padding)}, dilation {list(dilation)}")
    with _PassThrough() if through_the_ops else contextlib.nullcontext():
        with pytest.raises(RuntimeError, match=re.escape(message)):
            get_algorithm("cpu_direct")(x, weight, None, stride, padding, dilation, 4)


def test_geometry_of_the_wrong_rank_is_a_clear_error():
    with pytest.raises(RuntimeError, match=re.escape(
            "2 strides, paddings and dilations expected, got [1], [1, 1], [1, 1]")):
        get_algorithm("cpu_direct")(torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3), None,
                                    (1,), (1, 1), (1, 1), 4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_eager_path_and_the_custom_ops_give_the_same_bits(layout):
    x, weight, bias = make_operands(2, 2, 16, 1, 1, (3, 3), (9, 11), True, layout,
                                    dtype=torch.float32)
    dy = torch.randn(2, 16, 9, 11)
    results = []
    for mode in (contextlib.nullcontext(), _PassThrough()):
        with mode:
            inputs = [t.detach().requires_grad_() for t in (x, weight, bias)]
            out = dw.conv2d(*inputs, 1, 1, 1, 16, algorithm="cpu_direct")
            results.append((out, *torch.autograd.grad(out, inputs, dy)))
    for eager, op in zip(*results):
        assert torch.equal(eager, op)


@pytest.mark.parametrize("dims, layout, multiplier", [
    (2, "contiguous", 1), (2, "channels_last", 1), (2, "contiguous", 2), (1, "contiguous", 1),
    (3, "channels_last", 2)])
def test_torch_func_transforms_match_native(dims, layout, multiplier):
    assert_func_transforms_match_native("cpu_direct", layout, multiplier, dims)


def test_second_derivatives_match_native():
    """Differentiated gradients (a gradient penalty, a Hessian) come from native's formulas;
    they must not be silently constant, as a backward kernel without derivatives would make them."""
    x, weight, bias = make_operands(2, 2, 3, 1, 2, (3, 3), (5, 6), True, "channels_last")

    def penalty(conv, x, weight, bias):
        x = x.detach().requires_grad_()
        grad_x, = torch.autograd.grad(conv(x, weight, bias).square().sum(), x, create_graph=True)
        return grad_x.square().sum()

    def ours(x, weight, bias):
        return dw.conv2d(x, weight, bias, 2, 1, 1, 3, algorithm="cpu_direct")

    def native(x, weight, bias):
        return torch.nn.functional.conv2d(x, weight, bias, 2, 1, 1, 3)

    for conv in (ours, native):
        weight.grad = None
        penalty(conv, x, weight.requires_grad_(), bias).backward()
        if conv is ours:
            ours_grad = weight.grad
    assert ours_grad.abs().max() > 0
    torch.testing.assert_close(ours_grad, weight.grad, **TOLERANCES[torch.float64])
    hessians = [torch.func.hessian(lambda w, conv=conv: conv(x, w, bias).square().sum())(
        weight.detach()) for conv in (ours, native)]
    torch.testing.assert_close(*hessians, **TOLERANCES[torch.float64])


def test_an_inf_in_the_output_gradient_gives_native_nan_and_inf():
    """The NCHW channel blocks take every column's whole window over the zero padding: an inf in
    dy meets those zeros in the weight gradient as in native's (NaN), not more or less."""
    x = torch.rand(2, 16, 9, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(16, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    dy = torch.rand(2, 16, 9, 9, dtype=torch.float64)
    dy[1, 5, 4, 0] = float("inf")
    results = []
    for algorithm in ("cpu_direct", None):
        out = dw.conv2d(x, weight, None, 1, 1, 1, 16, algorithm=algorithm) if algorithm else \
            torch.nn.functional.conv2d(x, weight, None, 1, 1, 1, 16)
        results.append(torch.autograd.grad(out, (x, weight), dy))
    for ours, native in zip(*results):
        assert torch.equal(ours.isnan(), native.isnan()) and torch.equal(ours.isinf(), native.isinf())
    assert results[1][1].isnan().any() and results[1][1].isinf().any()
