"""The Triton kernels on a CUDA GPU, or without one through Triton's CPU interpreter (run with
TRITON_INTERPRET=1, set by the Makefile before Triton is imported): float64 equivalence with
F.conv1d/2d/3d, output and every gradient, plus layouts, autocast, torch.compile, determinism
and the tuner."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("triton", reason="the Triton kernels need Triton (pip install triton)")
import torch  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("without a CUDA GPU these tests run the kernels on CPU tensors through Triton's "
                "interpreter: set TRITON_INTERPRET=1 (make test-triton)", allow_module_level=True)
DEVICE = "cpu" if INTERPRETED else "cuda"
import torch.nn.functional as F  # noqa: E402

import diagonalwise as dw  # noqa: E402
from diagonalwise import tuning  # noqa: E402
from diagonalwise.call import ConvCall  # noqa: E402
from tests.equivalence import assert_func_transforms_match_native  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(autouse=True)
def on_the_kernels_device():
    """Every tensor a test makes lands where the kernels run (the GPU, or the interpreter's CPU)."""
    with torch.device(DEVICE):
        yield


def check(x, w, b, stride, padding, dilation, groups, tol=TOL):
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    ours = dw.functional.conv_nd(w.dim() - 2, *leaves, stride, padding, dilation, groups,
                                 algorithm="triton")
    reference_leaves = [t.detach().clone().requires_grad_() if t is not None else None
                        for t in (x, w, b)]
    expected = conv(*reference_leaves, stride, padding, dilation, groups)
    torch.testing.assert_close(ours, expected, **tol)
    grad = torch.randn_like(expected)
    wrt = [t for t in leaves if t is not None]
    wrt_ref = [t for t in reference_leaves if t is not None]
    for got, want in zip(torch.autograd.grad(ours, wrt, grad),
                         torch.autograd.grad(expected, wrt_ref, grad)):
        torch.testing.assert_close(got, want, **tol)


# (channels, multiplier, kernel, stride, padding, dilation, size)
CASES_2D = [
    (4, 1, (3, 3), 1, 1, 1, (7, 7)),
    (4, 2, (3, 3), 2, 1, 1, (13, 7)),
    (3, 3, (5, 3), (1, 2), (2, 0), (1, 2), (9, 8)),
    (2, 1, (7, 7), 1, "same", 1, (7, 13)),
    (2, 1, (4, 2), 1, "same", (2, 3), (7, 9)),
    (5, 1, (3, 3), 3, "valid", 2, (13, 13)),
    (4, 1, (1, 1), 1, 0, 1, (1, 7)),
    (2, 1, (13, 13), 1, 6, 1, (13, 13)),
]


@pytest.mark.parametrize("case", CASES_2D, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("bias", [True, False])
def test_2d_matches_native_float64(case, layout, bias):
    channels, multiplier, kernel, stride, padding, dilation, size = case
    torch.manual_seed(0)
    if layout == "strided":
        x = torch.randn(2, channels, size[0], 2 * size[1], dtype=torch.float64)[..., ::2]
    else:
        x = torch.randn(2, channels, *size, dtype=torch.float64)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels * multiplier, 1, *kernel, dtype=torch.float64)
    b = torch.randn(channels * multiplier, dtype=torch.float64) if bias else None
    check(x, w, b, stride, padding, dilation, channels)


@pytest.mark.parametrize("case", [(6, 1, 4, 1, 3, 1, 13), (4, 2, 3, 2, "valid", 2, 9),
                                  (3, 1, 5, 1, "same", 1, 7)], ids=str)
def test_1d_matches_native_float64(case):
    channels, multiplier, kernel, stride, padding, dilation, length = case
    torch.manual_seed(0)
    x = torch.randn(2, channels, length, dtype=torch.float64)
    w = torch.randn(channels * multiplier, 1, kernel, dtype=torch.float64)
    check(x, w, torch.randn(channels * multiplier, dtype=torch.float64), (stride,),
          padding if isinstance(padding, str) else (padding,), (dilation,), channels)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [(4, 1, (3, 3, 3), 1, 1, 1, (5, 7, 7)),
                                  (3, 2, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, (3, 9, 8)),
                                  (2, 1, (3, 1, 2), 1, "same", (2, 1, 1), (5, 3, 4))], ids=str)
def test_3d_matches_native_float64(case, layout):
    channels, multiplier, kernel, stride, padding, dilation, size = case
    torch.manual_seed(0)
    x = torch.randn(2, channels, *size, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(channels * multiplier, 1, *kernel, dtype=torch.float64)
    check(x, w, torch.randn(channels * multiplier, dtype=torch.float64), stride, padding, dilation,
          channels)


def test_unbatched_input():
    x = torch.randn(4, 7, 7, dtype=torch.float64)
    check(x, torch.randn(8, 1, 3, 3, dtype=torch.float64), None, (1, 1), (1, 1), (1, 1), 4)


def test_float32_with_stated_tolerance():
    x = torch.randn(2, 8, 9, 9)
    check(x, torch.randn(8, 1, 3, 3), torch.randn(8), (1, 1), (1, 1), (1, 1), 8,
          tol=dict(rtol=1e-5, atol=1e-5))


def test_outputs_are_fully_written(monkeypatch):
    """Every output and gradient element is written: buffers start as NaN."""
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like",
                        lambda *a, **k: real_empty_like(*a, **k).fill_(float("nan")))
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    y = dw.conv2d(x, w, None, 2, 1, 1, 4, algorithm="triton")
    y.sum().backward()
    assert not any(t.isnan().any() for t in (y, x.grad, w.grad))


def test_the_kernels_use_no_atomics():
    """The weight gradient is deterministic because it reduces in fixed chunks summed by
    torch.sum; the interpreter runs programs one at a time, so only the source can tell."""
    import inspect

    from diagonalwise.kernels import triton_depthwise

    assert "tl.atomic" not in inspect.getsource(triton_depthwise)


def test_module_autocast_and_compile():
    torch.manual_seed(0)
    layer = dw.DiagonalwiseConv2d(4, 4, 3, padding=1, groups=4, algorithm="triton")
    native = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
    native.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 7, 7)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), native(x), rtol=1e-5, atol=1e-5)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got, want = layer(x), native(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)


def test_tuner_offers_and_gates_triton():
    call = ConvCall((2, 8, 9, 9), (8, 1, 3, 3), False, (1, 1), (1, 1), (1, 1), 8, "float64",
                    "contiguous")
    names = [a.name for a in dw.candidate_algorithms(call, DEVICE)]
    assert "triton" in names
    assert tuning.check_correctness(call, dw.get_algorithm("triton"), DEVICE) is None
    choice = tuning.choose(call, DEVICE, timer=lambda c, a, d: 0.1 if a.name == "triton" else 1.0)
    assert choice.algorithm == "triton"
    grouped = ConvCall((2, 8, 9, 9), (8, 2, 3, 3), False, (1, 1), (1, 1), (1, 1), 4, "float64",
                       "contiguous")
    assert "triton" not in [a.name for a in dw.candidate_algorithms(grouped, DEVICE)]


def test_non_depthwise_is_refused_clearly():
    with pytest.raises(ValueError, match="computes depthwise convolutions"):
        dw.conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3), groups=2, algorithm="triton")


@pytest.mark.parametrize("layout, multiplier", [("contiguous", 1), ("channels_last", 2)])
def test_torch_func_transforms_match_native(layout, multiplier):
    assert_func_transforms_match_native("triton", layout, multiplier)
