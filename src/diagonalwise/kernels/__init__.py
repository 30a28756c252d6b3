"""Our own kernels: leaves that know PyTorch and their compiler, never the algorithm registry.

- :mod:`.triton_depthwise`: Triton kernels for depthwise 1D/2D/3D convolution (forward, input and
  weight gradients); imported only when they run.
- :mod:`.triton_ops`: those kernels as ``torch.library`` custom ops with autograd.

:mod:`diagonalwise.algorithms` wraps them as the ``"triton"`` algorithm.
"""
