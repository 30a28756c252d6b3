"""One grouped convolution call as an algorithm receives it: shapes, conv options, dtype, layout.

A :class:`ConvCall` is what algorithms state their applicability on, what the autotuner keys its
cache on and what the benchmarks time algorithms on (:mod:`diagonalwise.tuning.capture` records
the calls of a real forward).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .layout import to_layout
from .shapes import conv_output_size

DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
               torch.bfloat16: "bfloat16"}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def bucket(size: int) -> int:
    """The tuning bucket of a batch or spatial size: the next power of two at or above it.

    Calls whose sizes fall in the same buckets share one tuning decision, so a new batch size or
    resolution re-tunes only when it crosses a power of two.
    """
    return 1 << max(0, size - 1).bit_length()


@dataclass(frozen=True)
class ConvCall:
    """One grouped convolution as an algorithm receives it (after any non-zero padding mode)."""

    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    bias: bool
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    dtype: str
    layout: str

    @property
    def spatial_dims(self) -> int:
        return len(self.weight_shape) - 2

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def key(self) -> str:
        """The tuning key: every conv option, dtype and layout exactly; batch and spatial sizes
        by :func:`bucket`."""
        batch, channels, *spatial = self.input_shape
        padding = self.padding if isinstance(self.padding, str) else "x".join(map(str, self.padding))
        parts = [
            f"{self.spatial_dims}d", self.dtype, self.layout, f"c{channels}",
            f"w{'x'.join(map(str, self.weight_shape))}", f"g{self.groups}",
            f"s{'x'.join(map(str, self.stride))}", f"p{padding}",
            f"d{'x'.join(map(str, self.dilation))}", f"b{int(self.bias)}",
            f"n{bucket(batch)}", "hw" + "x".join(str(bucket(s)) for s in spatial),
        ]
        return "|".join(parts)

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (any channel multiplier)."""
        return self.weight_shape[1] == 1 and self.groups == self.input_shape[1]

    def output_shape(self) -> tuple[int, ...]:
        batch, _, *spatial = self.input_shape
        out_channels, _, *kernel = self.weight_shape
        sizes = conv_output_size(spatial, kernel, self.stride, self.padding, self.dilation)
        return (batch, out_channels, *sizes)

    def flops(self) -> int:
        """Multiply-adds x 2 of the grouped convolution itself (not of a refactorized one)."""
        _, in_per_group, *kernel = self.weight_shape
        return 2 * math.prod(self.output_shape()) * in_per_group * math.prod(kernel)

    def bytes_moved(self, mode: str) -> int:
        """The bytes that must move at least, by mode: forward reads input and weight and writes
        the output; backward reads the output gradient, input and weight and writes the input and
        weight gradients; 'step' is both."""
        element = torch.empty((), dtype=self.torch_dtype).element_size()
        x, w, y = (math.prod(s) for s in (self.input_shape, self.weight_shape, self.output_shape()))
        b = self.weight_shape[0] if self.bias else 0
        forward = x + w + b + y
        backward = y + x + w + x + w + b
        return element * {"forward": forward, "backward": backward, "step": forward + backward}[mode]

    def make_operands(self, device: torch.device | str, seed: int = 0):
        """Random input, weight, bias and output gradient with this call's shapes, dtype and layout,
        drawn on the CPU (the same numbers on every device, whatever the default device). The
        output gradient is in the input's layout, as the layers after it hand it back in a
        network of that layout (in NCHW, a channels_last layer paid for a reorder of it that it
        does not pay in training)."""
        generator = torch.Generator().manual_seed(seed)

        def randn(shape):
            return torch.randn(shape, generator=generator, device="cpu").to(device=device,
                                                                             dtype=self.torch_dtype)

        x = to_layout(randn(self.input_shape), self.layout)
        weight = randn(self.weight_shape)
        bias = randn(self.weight_shape[:1]) if self.bias else None
        grad_output = to_layout(randn(self.output_shape()), self.layout)
        return x, weight, bias, grad_output

    def run(self, algorithm, x, weight, bias) -> torch.Tensor:
        """``algorithm(x, weight, bias, ...)`` with this call's options."""
        return algorithm(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ConvCall:
        fields = dict(data)
        for name in ("input_shape", "weight_shape", "stride", "dilation"):
            fields[name] = tuple(fields[name])
        if not isinstance(fields["padding"], str):
            fields["padding"] = tuple(fields["padding"])
        return cls(**fields)
