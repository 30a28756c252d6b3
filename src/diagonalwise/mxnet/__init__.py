"""The diagonalwise refactorization for MXNet Gluon (MXNet 1.9).

Equivalence contract: ``DiagonalwiseConv2D(channels, kernel_size, groups=C, block_size=b, ...)``
equals ``gluon.nn.Conv2D`` with the same arguments (NCHW) in value and in every gradient, to
rounding, hybridized or not. It is a subclass with the same parameters (``weight`` of shape
(channels, in_channels // groups, kh, kw), ``bias``), so saved parameters load either way.
"""

from __future__ import annotations

from mxnet.gluon import nn

from ..blocking import resolve_block_size


class DiagonalwiseConv2D(nn.Conv2D):
    """``gluon.nn.Conv2D`` plus ``block_size``: groups per dense block (None: the paper's 32
    channels, rounded down to a divisor of ``groups``; 1: the grouped conv itself).

    ``in_channels`` must be given (the block layout depends on it)."""

    def __init__(self, channels: int, kernel_size, strides=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups: int = 1, layout: str = "NCHW", activation=None,
                 use_bias: bool = True, weight_initializer=None, bias_initializer="zeros",
                 in_channels: int = 0, *, block_size: int | None = None, **kwargs) -> None:
        if not in_channels:
            raise ValueError("DiagonalwiseConv2D needs in_channels (the block layout depends on "
                             "it); pass in_channels=C")
        if layout != "NCHW":
            raise ValueError(f"DiagonalwiseConv2D supports layout='NCHW', got {layout!r}")
        super().__init__(channels, kernel_size, strides, padding, dilation, groups, layout,
                         activation, use_bias, weight_initializer, bias_initializer, in_channels,
                         **kwargs)
        self.block_size = resolve_block_size(block_size, groups, in_channels // groups)

    def hybrid_forward(self, F, x, weight, bias=None):
        groups, block = self._kwargs["num_group"], self.block_size
        if block == 1:
            return super().hybrid_forward(F, x, weight, bias)
        out_channels = self._channels
        in_per_group = self._in_channels // groups
        kernel = self._kwargs["kernel"]
        # (blocks, b, out/group, 1, in/group * taps) x eye (1, b, 1, b, 1) -> block-diagonal;
        # five dimensions at most, as MKLDNN's arrays take (seven failed in float32)
        taps = 1
        for size in kernel:
            taps *= size
        compact = F.reshape(weight, (groups // block, block, out_channels // groups, 1,
                                     in_per_group * taps))
        eye = F.reshape(F.eye(block, dtype=self.weight.dtype), (1, block, 1, block, 1))
        dense = F.reshape(F.broadcast_mul(compact, eye),
                          (out_channels, block * in_per_group, *kernel))
        kwargs = dict(self._kwargs, num_group=groups // block)
        if bias is None:
            out = F.Convolution(x, dense, name="fwd", **kwargs)
        else:
            out = F.Convolution(x, dense, bias, name="fwd", **kwargs)
        return self.act(out) if self.act is not None else out
