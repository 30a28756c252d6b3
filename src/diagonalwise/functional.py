"""Drop-in replacements for ``F.conv1d``, ``F.conv2d`` and ``F.conv3d`` with a choice of algorithm.

Equivalence contract: ``diagonalwise.conv2d(x, w, b, stride, padding, dilation, groups, block_size=k)``
equals ``F.conv2d(x, w, b, stride, padding, dilation, groups)`` in value and in the gradients with
respect to ``x``, ``w`` and ``b``, up to floating-point rounding (the dense convolution adds exact
zeros and may sum in another order), for finite inputs: a NaN or Inf spreads over its dense block.
The output has the memory layout native gives. The same holds for 1D and 3D.
"""

from __future__ import annotations

import operator

import torch

from .algorithms import Algorithm, block_diagonal, get_algorithm
from .blocking import check_block_channels, resolve_block_size

_Size = int | tuple[int, ...]
_NAMES = {1: "conv1d", 2: "conv2d", 3: "conv3d"}
_WEIGHT_SHAPES = {1: "(out_channels, in_channels // groups, kL)",
                  2: "(out_channels, in_channels // groups, kH, kW)",
                  3: "(out_channels, in_channels // groups, kD, kH, kW)"}


def _check_operands(
    spatial_dims: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
) -> None:
    """Raise a ValueError naming the problem and the fix for operands F.convNd would reject."""
    name = _NAMES[spatial_dims]
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} takes tensors for input and weight, got "
                        f"{type(input).__name__} and {type(weight).__name__}")
    if input.dim() not in (spatial_dims + 1, spatial_dims + 2):
        raise ValueError(
            f"{name} expects a {spatial_dims + 2}-D input (batch, channels, *spatial) or a "
            f"{spatial_dims + 1}-D unbatched one, got shape {tuple(input.shape)}"
        )
    if weight.dim() != spatial_dims + 2:
        raise ValueError(
            f"{name} expects a {spatial_dims + 2}-D weight of shape {_WEIGHT_SHAPES[spatial_dims]}, "
            f"got shape {tuple(weight.shape)}"
        )
    if _integer(groups) is None or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    out_channels, in_per_group = weight.shape[:2]
    if out_channels % groups != 0:
        raise ValueError(
            f"weight has {out_channels} output channels, which groups={groups} does not divide; "
            f"out_channels must be a multiple of groups"
        )
    in_channels = input.shape[-spatial_dims - 1]
    if in_channels != in_per_group * groups:
        raise ValueError(
            f"input has {in_channels} channels but weight of shape {tuple(weight.shape)} with "
            f"groups={groups} expects {in_per_group * groups} (= weight.shape[1] * groups); "
            f"for a depthwise convolution use groups=in_channels and a weight of shape "
            f"(in_channels * multiplier, 1, *kernel)"
        )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(
            f"bias must have shape ({out_channels},) to match the weight's output channels, "
            f"got {tuple(bias.shape)}"
        )


def _integer(value: object) -> int | None:
    """``value`` as an int if it is one (numpy and torch integers included), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _tuple(value: _Size, spatial_dims: int, what: str) -> tuple[int, ...]:
    """An int or a sequence of ints (any integer type F.convNd accepts) as a tuple of Python
    ints, one per spatial dimension."""
    problem = ValueError(f"{what} must be an int or a tuple of {spatial_dims} ints, got {value!r}")
    single = _integer(value)
    if single is not None:
        return (single,) * spatial_dims
    try:
        values = tuple(_integer(v) for v in value)
    except TypeError:
        raise problem from None
    if len(values) == 1:
        values = values * spatial_dims
    if len(values) != spatial_dims or None in values:
        raise problem
    return values


def resolve_algorithm(
    groups: int,
    in_channels_per_group: int,
    block_size: int | None = None,
    algorithm: str | Algorithm | None = None,
) -> Algorithm:
    """The algorithm a call with these settings runs: ``algorithm`` if given, else the
    block-diagonal refactorization with ``block_size`` (``None``: the paper's default, see
    :func:`diagonalwise.blocking.default_block_size`; 1: native)."""
    if algorithm is not None:
        if block_size is not None:
            raise ValueError("give block_size or algorithm, not both")
        chosen = get_algorithm(algorithm)
        if not chosen.accepts_groups(groups):
            raise ValueError(f"algorithm {chosen.name!r} cannot run a convolution with groups={groups}")
        check_block_channels(chosen.block_size, in_channels_per_group)
        return chosen
    return block_diagonal(resolve_block_size(block_size, groups, in_channels_per_group))


def conv_nd(
    spatial_dims: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Size = 1,
    padding: _Size | str = 0,
    dilation: _Size = 1,
    groups: int = 1,
    *,
    block_size: int | None = None,
    algorithm: str | Algorithm | None = None,
) -> torch.Tensor:
    """The N-d convolution behind :func:`conv1d`, :func:`conv2d` and :func:`conv3d`."""
    _check_operands(spatial_dims, input, weight, bias, groups)
    groups = operator.index(groups)
    chosen = resolve_algorithm(groups, weight.shape[1], block_size, algorithm)
    stride = _tuple(stride, spatial_dims, "stride")
    dilation = _tuple(dilation, spatial_dims, "dilation")
    if not isinstance(padding, str):
        padding = _tuple(padding, spatial_dims, "padding")
    return chosen(input, weight, bias, stride, padding, dilation, groups)


def conv1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Size = 1,
    padding: _Size | str = 0,
    dilation: _Size = 1,
    groups: int = 1,
    *,
    block_size: int | None = None,
    algorithm: str | Algorithm | None = None,
) -> torch.Tensor:
    """Equivalent to ``F.conv1d(input, weight, bias, stride, padding, dilation, groups)``.

    input (N, C, L) or (C, L); weight (O, C // groups, kL), e.g. (C*M, 1, kL) for depthwise.
    ``block_size`` groups are packed into one dense block (it must divide ``groups``; 1 is the native
    grouped conv, ``groups`` one dense conv, ``None`` the paper's 32 channels per block rounded to a
    divisor). ``algorithm`` (a name such as ``"native"`` or an :class:`Algorithm`) overrides it.
    """
    return conv_nd(1, input, weight, bias, stride, padding, dilation, groups,
                   block_size=block_size, algorithm=algorithm)


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Size = 1,
    padding: _Size | str = 0,
    dilation: _Size = 1,
    groups: int = 1,
    *,
    block_size: int | None = None,
    algorithm: str | Algorithm | None = None,
) -> torch.Tensor:
    """Equivalent to ``F.conv2d(input, weight, bias, stride, padding, dilation, groups)``.

    input (N, C, H, W) or (C, H, W); weight (O, C // groups, kH, kW), e.g. (C*M, 1, kH, kW) for
    depthwise. ``block_size`` and ``algorithm`` as in :func:`conv1d`.
    """
    return conv_nd(2, input, weight, bias, stride, padding, dilation, groups,
                   block_size=block_size, algorithm=algorithm)


def conv3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Size = 1,
    padding: _Size | str = 0,
    dilation: _Size = 1,
    groups: int = 1,
    *,
    block_size: int | None = None,
    algorithm: str | Algorithm | None = None,
) -> torch.Tensor:
    """Equivalent to ``F.conv3d(input, weight, bias, stride, padding, dilation, groups)``.

    input (N, C, D, H, W) or (C, D, H, W); weight (O, C // groups, kD, kH, kW).
    ``block_size`` and ``algorithm`` as in :func:`conv1d`.
    """
    return conv_nd(3, input, weight, bias, stride, padding, dilation, groups,
                   block_size=block_size, algorithm=algorithm)
