"""Our direct CPU depthwise kernels (``cpu_depthwise.cpp``) as ``torch.library`` custom ops,
and for plain eager calls whole in C++ (``cpu_depthwise_eager.cpp``).

Equivalence contract: ``cpu_depthwise_conv(x, w, b, stride, padding, dilation)`` equals
``F.conv1d/2d/3d`` for depthwise convolutions (``groups == in_channels``, weight
``(C * M, 1, *kernel)``), in value and in the input, weight and bias gradients, accumulating in
float32 (float64 for float64), and in every derivative :mod:`.depthwise_function` gives. The
custom ops keep ``torch.compile`` free of graph breaks and have fake kernels for tracing; plain
eager calls (no transform, dispatch mode or subclass) skip them and most of Python, with the
same kernels and derivatives: the same bits. The output has the input's layout (NCDHW or
channels_last), and no input is copied in either layout.

The C++ source is compiled on first use with the installed torch's headers, for this machine's
CPU (``-O3 -march=native``, OpenMP for ``at::parallel_for``), into a persistent directory:
``$DIAGONALWISE_BUILD_DIR`` or ``$XDG_CACHE_HOME/diagonalwise/build`` (``~/.cache/...``), one
build per source, torch version and CPU. ``make test`` and ``make demo`` build it up front.
Where it cannot be built (no compiler), :func:`cpu_kernels_unavailable` says why and the
algorithm reports itself unavailable; nothing else breaks.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

from . import CPU_SOURCES
from .depthwise_function import _plain_eager, differentiable
from .lifting import autocast_operands, depthwise_via_3d

SOURCES = [Path(__file__).with_name(name) for name in CPU_SOURCES]
CFLAGS = ["-O3", "-march=native", "-fopenmp"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.startswith("model name")), platform.machine())
    except OSError:
        return platform.machine()


def build_directory() -> Path:
    """Where the extension is built: one directory per source, flags, torch version and CPU."""
    root = os.environ.get("DIAGONALWISE_BUILD_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diagonalwise" / "build"
    key = hashlib.sha256(b"\0".join([*(source.read_bytes() for source in SOURCES),
                                     " ".join(CFLAGS).encode(), torch.__version__.encode(),
                                     _cpu_model().encode()]))
    return Path(root) / f"cpu_depthwise-{key.hexdigest()[:16]}"


@functools.cache
def _load():
    """The compiled extension, or the reason it cannot be had (an exception's text)."""
    # torch's extension builder logs a CUDA warning on import that says nothing about a CPU build
    builder_log = logging.getLogger("torch.utils.cpp_extension")
    level = builder_log.level
    builder_log.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        builder_log.setLevel(level)

    directory = build_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return load(name="diagonalwise_cpu_depthwise",
                    sources=[str(source) for source in SOURCES if source.suffix == ".cpp"],
                    extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                    build_directory=str(directory), verbose=False)
    except Exception as error:  # a missing compiler or ninja, a failed build: all unavailable
        lines = str(error).strip().splitlines() or [""]
        first_error = next((line for line in lines if "error" in line.lower()), lines[-1])
        return f"{type(error).__name__}: {first_error.strip()}"


def cpu_kernels_unavailable() -> str | None:
    """None when the kernels are built (building them now if needed), else why they are not."""
    extension = _load()
    return extension if isinstance(extension, str) else None


def _extension():
    extension = _load()
    if isinstance(extension, str):
        raise RuntimeError(f"the 'cpu_direct' kernels could not be built here ({extension}); "
                           "use 'native' or a block size")
    return extension


@torch.library.custom_op("diagonalwise::cpu_depthwise3d", mutates_args=())
def _depthwise3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: list[int], padding: list[int], dilation: list[int],
                 output_size: list[int]) -> torch.Tensor:
    return _extension().forward(x, weight, bias, stride, padding, dilation, output_size)


@torch.library.custom_op("diagonalwise::cpu_depthwise3d_backward", mutates_args=())
def _depthwise3d_backward(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          stride: list[int], padding: list[int], dilation: list[int],
                          input_grad: bool, weight_grad: bool, bias_grad: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = _extension().backward(grad_output, x, weight, stride, padding, dilation,
                                       input_grad, weight_grad, bias_grad)
    # the op returns three tensors always; the ones not asked for are empty (and distinct: the
    # outputs of a custom op may not alias each other)
    return (dx if input_grad else x.new_empty(0), dw if weight_grad else x.new_empty(0),
            db if bias_grad else x.new_empty(0))


_depthwise = differentiable(_depthwise3d, _depthwise3d_backward)


def cpu_depthwise_conv(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       stride: tuple[int, ...], padding: tuple[int, ...] | str,
                       dilation: tuple[int, ...]) -> torch.Tensor:
    """A depthwise 1D/2D/3D convolution (batched or not) on CPU tensors: plain eager calls in
    C++ (through Python and the ops' dispatch a call cost several hundred microseconds more than
    a small layer's kernel once other layers had cleared the caches), everything else through the
    custom ops; follows autocast. The caller checks that the convolution is depthwise."""
    if not torch.compiler.is_compiling() and _plain_eager(input, weight, bias):
        input, weight, bias = autocast_operands(input, weight, bias)
        mode = padding if isinstance(padding, str) else ""
        return _extension().depthwise(input, weight, bias, stride, () if mode else padding, mode,
                                      dilation)
    return depthwise_via_3d(_depthwise, input, weight, bias, stride, padding, dilation)
