"""What one grouped convolution call of a model looks like, captured from a real forward.

A :class:`ConvCall` holds everything an algorithm sees (shapes, conv options, dtype, memory
layout): the autotuner keys its cache on it, and the benchmarks time algorithms on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .algorithms import CHANNELS_LAST_FORMAT, Algorithm
from .modules import DIAGONALWISE_TYPE, _DiagonalwiseConvNd

_DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
                torch.bfloat16: "bfloat16"}
DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


def memory_layout(tensor: torch.Tensor) -> str:
    """'channels_last' for a batched NHWC/NDHWC tensor (with more than one channel), else 'contiguous'."""
    fmt = CHANNELS_LAST_FORMAT.get(tensor.dim())
    if fmt is not None and tensor.shape[1] > 1 and tensor.is_contiguous(memory_format=fmt) \
            and not tensor.is_contiguous():
        return "channels_last"
    return "contiguous"


def bucket(size: int) -> int:
    """The tuning bucket of a batch or spatial size: the next power of two at or above it.

    Calls whose sizes fall in the same buckets share one tuning decision, so a new batch size or
    resolution re-tunes only when it crosses a power of two.
    """
    return 1 << max(0, size - 1).bit_length()


def is_tunable(module: nn.Module) -> bool:
    """An exact nn.Conv1d/2d/3d with groups > 1, or an already converted layer."""
    if isinstance(module, _DiagonalwiseConvNd):
        return True
    return type(module) in DIAGONALWISE_TYPE and module.groups > 1


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

    def output_shape(self) -> tuple[int, ...]:
        batch, _, *spatial = self.input_shape
        out_channels, _, *kernel = self.weight_shape
        if self.padding == "same":
            return (batch, out_channels, *spatial)
        padding = (0,) * len(kernel) if self.padding == "valid" else self.padding
        sizes = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st
                 in zip(spatial, padding, self.dilation, kernel, self.stride)]
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
        """Random input, weight, bias and output gradient with this call's shapes, dtype and layout."""
        generator = torch.Generator().manual_seed(seed)

        def randn(shape):
            return torch.randn(shape, generator=generator).to(device=device, dtype=self.torch_dtype)

        x = randn(self.input_shape)
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=CHANNELS_LAST_FORMAT[x.dim()])
        weight = randn(self.weight_shape)
        bias = randn(self.weight_shape[:1]) if self.bias else None
        grad_output = randn(self.output_shape())
        return x, weight, bias, grad_output

    def run(self, algorithm: Algorithm, x, weight, bias) -> torch.Tensor:
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


def _call_of(module: nn.Module, x: torch.Tensor) -> ConvCall:
    dims = len(module.kernel_size)
    shape = tuple(x.shape) if x.dim() == dims + 2 else (1, *x.shape)
    padding = module.padding
    if module.padding_mode != "zeros":
        # the layer pads the input itself, then convolves with padding 0
        shape = shape[:2] + tuple(s + 2 * p for s, p in zip(shape[2:], module.padding))
        padding = (0,) * dims
    dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type) and dtype in (torch.float32, torch.float64):
        dtype = torch.get_autocast_dtype(x.device.type)
    return ConvCall(
        input_shape=shape, weight_shape=tuple(module.weight.shape), bias=module.bias is not None,
        stride=tuple(module.stride), padding=padding if isinstance(padding, str) else tuple(padding),
        dilation=tuple(module.dilation), groups=module.groups, dtype=_DTYPE_NAMES[dtype],
        layout=memory_layout(x),
    )


def collect_conv_calls(model: nn.Module, example_inputs: tuple,
                       filter_fn=None) -> dict[str, ConvCall]:
    """Run ``model(*example_inputs)`` once (no gradient) and return, per qualified layer name,
    the call each tunable grouped convolution received (those ``filter_fn(module, name)``
    accepts, if given). Run it under autocast to capture the autocast dtype."""
    calls: dict[str, ConvCall] = {}
    handles = []
    for name, module in model.named_modules():
        if is_tunable(module) and (filter_fn is None or filter_fn(module, name)):
            def hook(module, args, name=name):
                calls.setdefault(name, _call_of(module, args[0]))
            handles.append(module.register_forward_pre_hook(hook))
    # a forward in training mode updates batch-norm statistics: put them back afterwards
    saved_buffers = [buffer.clone() for buffer in model.buffers()]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), saved_buffers):
                buffer.copy_(saved)
    return calls
