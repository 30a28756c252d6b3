"""The algorithms that compute one grouped convolution, and their registry.

Every algorithm computes exactly ``F.convNd(input, weight, bias, stride, padding, dilation, groups)``
(the :mod:`diagonalwise.reference`) from the compact weight, differentiably: autograd through the
algorithm yields the native input, weight and bias gradients. They differ only in speed, so the
choice is a per-call (per-layer) setting, which the autotuner makes by measurement.

Algorithms are named by strings that survive a JSON round trip: ``"native"``,
``"block_diagonal:8"`` (8 groups per dense block), ``"native_channels_last"``. New families register
with :func:`register_algorithm`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .blocking import check_block_size
from .reference import NATIVE_CONV


class Algorithm:
    """One way to compute a grouped convolution. Subclasses set ``name`` and implement ``__call__``."""

    name: str = ""

    #: Groups packed into one dense block; 1 for algorithms that do not refactorize.
    block_size: int = 1

    def is_applicable(self, groups: int) -> bool:
        """Whether this algorithm can compute a convolution with ``groups`` groups."""
        return True

    def __call__(
        self,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, ...],
        padding: tuple[int, ...] | str,
        dilation: tuple[int, ...],
        groups: int,
    ) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<algorithm {self.name}>"


@dataclass(frozen=True, repr=False)
class Native(Algorithm):
    """PyTorch's own grouped convolution (cuDNN, oneDNN or PyTorch's depthwise kernels)."""

    name = "native"

    def __call__(self, input, weight, bias, stride, padding, dilation, groups):
        return NATIVE_CONV[weight.dim() - 2](input, weight, bias, stride, padding, dilation, groups)


#: The channels-last memory format of a batched tensor, by its number of dimensions.
CHANNELS_LAST_FORMAT = {4: torch.channels_last, 5: torch.channels_last_3d}


@dataclass(frozen=True, repr=False)
class NativeChannelsLast(Algorithm):
    """The native convolution computed in channels_last memory layout, the output given back in
    the input's layout. On CPUs oneDNN's depthwise kernels are much faster in channels_last."""

    name = "native_channels_last"

    def __call__(self, input, weight, bias, stride, padding, dilation, groups):
        spatial_dims = weight.dim() - 2
        if input.dim() != spatial_dims + 2 or spatial_dims == 1:
            return Native()(input, weight, bias, stride, padding, dilation, groups)
        layout = CHANNELS_LAST_FORMAT[input.dim()]
        if input.is_contiguous(memory_format=layout):
            return Native()(input, weight, bias, stride, padding, dilation, groups)
        output = Native()(
            input.contiguous(memory_format=layout),
            weight.contiguous(memory_format=layout),
            bias, stride, padding, dilation, groups,
        )
        return output.contiguous()


def block_diagonal_weight(weight: torch.Tensor, groups: int, block_size: int) -> torch.Tensor:
    """The dense weight of the refactorized convolution, built differentiably from the compact one.

    ``weight`` has the shape ``F.convNd`` takes, ``(out_channels, in_channels // groups, *kernel)``.
    The result has shape ``(out_channels, block_size * in_channels // groups, *kernel)`` and is used
    with ``groups // block_size`` groups: each of its dense blocks carries ``block_size`` of the
    original groups on its diagonal and exact zeros elsewhere (see
    :func:`diagonalwise.blocking.block_diagonal_position`). The map is a ``diag_embed``, whose
    backward takes the diagonal: the compact weight's gradient is exactly the native one, and the
    off-diagonal cross-channel terms of the dense gradient never reach it.
    """
    check_block_size(block_size, groups)
    out_channels, in_per_group, *kernel = weight.shape
    out_per_group = out_channels // groups
    blocks = groups // block_size
    # (blocks, b, out/group, in/group, *k) with the slot b moved last, where diag_embed wants it.
    compact = weight.reshape(blocks, block_size, out_per_group, in_per_group, *kernel).movedim(1, -1)
    # -> (blocks, b[out slot], out/group, b[in slot], in/group, *k), nonzero only where slots agree.
    dense = torch.diag_embed(compact, dim1=1, dim2=3)
    return dense.reshape(out_channels, block_size * in_per_group, *kernel)


@dataclass(frozen=True, repr=False)
class BlockDiagonal(Algorithm):
    """The diagonalwise refactorization (Qin et al., 2018): ``block_size`` groups per dense block.

    Runs one grouped convolution with ``groups // block_size`` groups on the block-diagonal weight
    of :func:`block_diagonal_weight`. ``block_size == groups`` is one dense convolution.
    """

    block_size: int = 1

    @property
    def name(self) -> str:
        return f"block_diagonal:{self.block_size}"

    def is_applicable(self, groups: int) -> bool:
        return groups % self.block_size == 0

    def __call__(self, input, weight, bias, stride, padding, dilation, groups):
        if self.block_size == 1:
            return Native()(input, weight, bias, stride, padding, dilation, groups)
        dense = block_diagonal_weight(weight, groups, self.block_size)
        return NATIVE_CONV[weight.dim() - 2](
            input, dense, bias, stride, padding, dilation, groups // self.block_size
        )


_FAMILIES: dict[str, Callable[[str | None], Algorithm]] = {}


def register_algorithm(family: str, factory: Callable[[str | None], Algorithm]) -> None:
    """Make ``get_algorithm("family")`` / ``get_algorithm("family:arg")`` return ``factory(arg)``."""
    if not family or ":" in family:
        raise ValueError(f"an algorithm family name must be non-empty without ':', got {family!r}")
    _FAMILIES[family] = factory


def _no_argument(cls: type[Algorithm]) -> Callable[[str | None], Algorithm]:
    def factory(argument: str | None) -> Algorithm:
        if argument is not None:
            raise ValueError(f"algorithm {cls.name!r} takes no ':' argument, got {argument!r}")
        return cls()

    return factory


def _block_diagonal(argument: str | None) -> Algorithm:
    if argument is None or not argument.isdigit() or int(argument) < 1:
        raise ValueError(
            f"block_diagonal needs a positive block size, as in 'block_diagonal:8'; got {argument!r}"
        )
    return BlockDiagonal(int(argument))


register_algorithm("native", _no_argument(Native))
register_algorithm("native_channels_last", _no_argument(NativeChannelsLast))
register_algorithm("block_diagonal", _block_diagonal)


def get_algorithm(name: str | Algorithm) -> Algorithm:
    """The algorithm named ``name`` (``"native"``, ``"block_diagonal:8"``, ...); instances pass through."""
    if isinstance(name, Algorithm):
        return name
    family, _, argument = name.partition(":")
    if family not in _FAMILIES:
        raise ValueError(
            f"unknown algorithm {name!r}; known families: {sorted(_FAMILIES)} "
            "(block_diagonal takes a block size, as in 'block_diagonal:8')"
        )
    return _FAMILIES[family](argument if argument else None)


def available_algorithms() -> list[str]:
    """The registered algorithm families."""
    return sorted(_FAMILIES)


# Our own kernels register themselves as algorithm families (they import Triton only when run).
from . import kernels  # noqa: E402, F401
