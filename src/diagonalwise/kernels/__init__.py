"""Our own kernels: leaves that know PyTorch and their compiler, never the algorithm registry.

- :mod:`.triton_depthwise`: Triton kernels for depthwise 1D/2D/3D convolution (forward, input and
  weight gradients); imported only when they run.
- :mod:`.triton_ops`: those kernels as ``torch.library`` custom ops.
- :mod:`.cpu_ops`: the C++ CPU kernels (``cpu_depthwise.cpp``, built on first use) as custom ops,
  and plain eager calls whole in C++ (``cpu_depthwise_eager.cpp``).
- :mod:`.depthwise_function`: either family's ops made differentiable (autograd, forward mode,
  ``torch.func``); :mod:`.lifting`: 1D/2D calls run through the 3D ops.

:mod:`diagonalwise.algorithms` wraps them as the ``"triton"`` and ``"cpu_direct"`` algorithms.
"""

import hashlib
from pathlib import Path

#: the C++ extension's sources (cpu_ops builds them and keys its build directory on them)
CPU_SOURCES = ("cpu_depthwise.cpp", "cpu_depthwise_eager.cpp", "cpu_depthwise.h")
#: the sources whose code decides how fast our algorithms run
SOURCES = (*CPU_SOURCES, "triton_depthwise.py")


def source_fingerprint() -> str:
    """A short hash of our kernels' sources: a timing taken with other kernels is not this one's
    (the tuning cache keeps its choices per fingerprint, so changed kernels are measured anew)."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:12]
