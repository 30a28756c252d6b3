"""Framework-free convolution geometry: output sizes and the padding before the first element.

One formula for every caller (the call descriptions the tuner keys on, our kernels, the front
ends), with PyTorch's conventions: ``padding`` is a per-dimension int sequence, ``'same'`` or
``'valid'``; ``'same'`` pads the smaller half of ``dilation * (kernel - 1)`` before the first element.
"""

from __future__ import annotations

from collections.abc import Sequence


def leading_padding(padding: Sequence[int] | str, kernel: Sequence[int],
                    dilation: Sequence[int]) -> list[int]:
    """Per dimension, the zeros padded before the first element."""
    if padding == "valid":
        return [0] * len(kernel)
    if padding == "same":
        return [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
    return list(padding)


def conv_output_size(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                     padding: Sequence[int] | str, dilation: Sequence[int]) -> list[int]:
    """The spatial output size of a convolution, as ``F.convNd`` computes it (``'same'`` keeps
    ``size``; it needs stride 1)."""
    if padding == "same":
        return list(size)
    padding = leading_padding(padding, kernel, dilation)
    return [(s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)]
