"""diagonalwise: fast training of depthwise and grouped convolutions by the diagonalwise
refactorization (Qin et al., 2018), with the same numbers as the framework's own convolution.

The PyTorch API below loads on first use, so ``diagonalwise.jax``, ``diagonalwise.keras`` and
``diagonalwise.mxnet`` import without PyTorch installed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> submodule that defines it (PyTorch front end)
_TORCH_API = {
    "Algorithm": "algorithms", "BlockDiagonal": "algorithms", "Native": "algorithms",
    "NativeChannelsLast": "algorithms", "available_algorithms": "algorithms",
    "block_diagonal_weight": "algorithms", "get_algorithm": "algorithms",
    "TritonDepthwise": "algorithms", "CpuDirect": "algorithms", "candidate_algorithms": "algorithms",
    "register_algorithm": "algorithms", "unregister_algorithm": "algorithms",
    "default_block_size": "blocking", "valid_block_sizes": "blocking",
    "ConversionReport": "conversion", "convert": "conversion", "revert": "conversion",
    "conv1d": "functional", "conv2d": "functional", "conv3d": "functional",
    "DiagonalwiseConv1d": "modules", "DiagonalwiseConv2d": "modules",
    "DiagonalwiseConv3d": "modules",
    "reference_conv": "reference",
    "Plan": "tuning", "TuningCache": "tuning", "tune": "tuning",
    "is_converted": "modules", "swap_modules": "modules",
}

__all__ = sorted(_TORCH_API)

#: submodules reachable as attributes (``dw.functional.conv_nd``) without importing them first
_SUBMODULES = ("algorithms", "bench", "blocking", "caffe", "call", "cli", "conversion", "darknet",
               "errors", "functional", "kernels", "layout", "modules", "reference", "shapes", "timing",
               "tuning")


def __getattr__(name: str):
    if name in _TORCH_API:
        value = getattr(importlib.import_module(f".{_TORCH_API[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'diagonalwise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

