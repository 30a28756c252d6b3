"""The algorithms that compute one grouped convolution, and their registry.

Every algorithm computes exactly ``F.convNd(input, weight, bias, stride, padding, dilation, groups)``
(the :mod:`diagonalwise.reference`) from the compact weight, differentiably: autograd through the
algorithm yields the native input, weight and bias gradients. They differ only in speed, so the
choice is a per-call (per-layer) setting, which the autotuner makes by measurement.

Algorithms are named by strings that survive a JSON round trip: ``"native"``,
``"block_diagonal:8"`` (8 groups per dense block; ``"block_diagonal:1"`` is ``"native"``),
``"native_channels_last"``, ``"triton"``, ``"cpu_direct"``. New families register with
:func:`register_algorithm`; the autotuner's candidates for a call are the registered families'
candidates that state, through :meth:`Algorithm.is_applicable`, that they run it on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .blocking import MAX_BLOCK_CHANNELS, candidate_block_sizes, check_block_size
from .call import ConvCall
from .kernels.cpu_ops import cpu_depthwise_conv, cpu_kernels_unavailable
from .kernels.triton_ops import triton_depthwise_conv, triton_usable
from .layout import CHANNELS_LAST_FORMAT, like_weight, suggests_channels_last
from .reference import NATIVE_CONV


class Algorithm:
    """One way to compute a grouped convolution. Subclasses set ``name`` and implement ``__call__``."""

    name: str = ""

    #: Groups packed into one dense block; 1 for algorithms that do not refactorize.
    block_size: int = 1

    def accepts_groups(self, groups: int) -> bool:
        """Whether a layer with ``groups`` groups may be set to this algorithm (checked once, when
        a module or call is configured)."""
        return True

    def is_applicable(self, call: ConvCall, device: torch.device) -> bool:
        """Whether this algorithm computes ``call`` on ``device`` (the tuner's filter)."""
        return self.accepts_groups(call.groups)

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


@dataclass(frozen=True, repr=False)
class NativeChannelsLast(Algorithm):
    """The native convolution computed in channels_last memory layout, the output given back in
    the input's layout. On CPUs oneDNN's depthwise kernels are much faster in channels_last."""

    name = "native_channels_last"

    def is_applicable(self, call: ConvCall, device: torch.device) -> bool:
        return call.spatial_dims in (2, 3) and call.layout != "channels_last"

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
        # back in the layout native gives: the input's, or channels_last for such a weight
        return output if suggests_channels_last(weight) else output.contiguous()


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
    of :func:`block_diagonal_weight`. ``block_size == groups`` is one dense convolution; a block
    size of 1 is the native convolution, which :func:`block_diagonal` returns for it.
    """

    block_size: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) \
                or self.block_size < 2:
            raise ValueError(f"BlockDiagonal packs at least 2 groups per block, got "
                             f"{self.block_size!r}; a block size of 1 is Native()")

    @property
    def name(self) -> str:
        return f"block_diagonal:{self.block_size}"

    def accepts_groups(self, groups: int) -> bool:
        return groups % self.block_size == 0

    def is_applicable(self, call: ConvCall, device: torch.device) -> bool:
        return self.accepts_groups(call.groups) and \
            self.block_size * call.weight_shape[1] <= MAX_BLOCK_CHANNELS

    def __call__(self, input, weight, bias, stride, padding, dilation, groups):
        # in the weight's memory format, which decides the output's as it does for native
        dense = like_weight(block_diagonal_weight(weight, groups, self.block_size), weight)
        return NATIVE_CONV[weight.dim() - 2](
            input, dense, bias, stride, padding, dilation, groups // self.block_size
        )


def block_diagonal(block_size: int) -> Algorithm:
    """The refactorization with ``block_size`` groups per block; :class:`Native` for 1."""
    return Native() if block_size == 1 else BlockDiagonal(block_size)


@dataclass(frozen=True, repr=False)
class TritonDepthwise(Algorithm):
    """Our Triton kernels for depthwise 1D/2D/3D convolutions (see
    :mod:`diagonalwise.kernels.triton_ops`): an NVIDIA GPU with Triton, or Triton's interpreter
    on CPU tensors with ``TRITON_INTERPRET=1``."""

    name = "triton"

    def is_applicable(self, call: ConvCall, device: torch.device) -> bool:
        return call.is_depthwise and triton_usable(device)

    def __call__(self, input, weight, bias, stride, padding, dilation, groups):
        _check_depthwise(self.name, input, weight, groups)
        if not triton_usable(input.device):
            raise RuntimeError(
                "the 'triton' algorithm needs an NVIDIA GPU with Triton (pip install triton), or "
                "TRITON_INTERPRET=1 for Triton's CPU interpreter; use 'native' or a block size")
        output = triton_depthwise_conv(input, weight, bias, stride, padding, dilation)
        return _in_natives_layout(output, weight)


def _in_natives_layout(output: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Our kernels give the input's layout; native gives channels_last also for a weight whose
    strides suggest it (unbatched outputs have no such form)."""
    return like_weight(output, weight) if output.dim() == weight.dim() else output


def _check_depthwise(name: str, input: torch.Tensor, weight: torch.Tensor, groups: int) -> None:
    channels = input.shape[1 if input.dim() == weight.dim() else 0]
    if weight.shape[1] != 1 or groups != channels:
        raise ValueError(f"the {name!r} algorithm computes depthwise convolutions (groups == "
                         "in_channels, weight (C * M, 1, *kernel)); use 'native' or a block size "
                         "for this one")


@dataclass(frozen=True, repr=False)
class CpuDirect(Algorithm):
    """Our direct depthwise kernels for the CPU (see :mod:`diagonalwise.kernels.cpu_ops`):
    1D/2D/3D, any kernel, stride, padding, dilation and multiplier, NCHW and channels_last
    without copies, multi-threaded with PyTorch's thread pool."""

    name = "cpu_direct"

    def is_applicable(self, call: ConvCall, device: torch.device) -> bool:
        return call.is_depthwise and device.type == "cpu" and cpu_kernels_unavailable() is None

    def __call__(self, input, weight, bias, stride, padding, dilation, groups):
        _check_depthwise(self.name, input, weight, groups)
        if input.device.type != "cpu":
            raise RuntimeError(f"the 'cpu_direct' algorithm runs on the CPU, not on "
                               f"{input.device.type}; use 'native', 'triton' or a block size")
        output = cpu_depthwise_conv(input, weight, bias, stride, padding, dilation)
        if output.dim() == 5 and output.dtype == torch.float64:
            # PyTorch's float64 3D convolution on the CPU (slow_conv3d) returns contiguous always
            return output.contiguous()
        return _in_natives_layout(output, weight)


Factory = Callable[[str | None], Algorithm]
#: ``candidates(call, options) -> [Algorithm]``: a family's instances worth measuring on a call.
Candidates = Callable[[ConvCall, dict], list[Algorithm]]


@dataclass(frozen=True)
class _Family:
    factory: Factory
    candidates: Candidates | None


_FAMILIES: dict[str, _Family] = {}


def register_algorithm(family: str, factory: Factory, candidates: Candidates | None = None) -> None:
    """Make ``get_algorithm("family")`` / ``get_algorithm("family:arg")`` return ``factory(arg)``.

    ``candidates(call, options)`` lists the family's instances the autotuner should measure on a
    call; without it, ``factory(None)`` (if the family's name alone is an algorithm). Either way
    only those whose :meth:`Algorithm.is_applicable` holds are measured.
    """
    if not family or ":" in family:
        raise ValueError(f"an algorithm family name must be non-empty without ':', got {family!r}")
    _FAMILIES[family] = _Family(factory, candidates)


def unregister_algorithm(family: str) -> None:
    """Remove a family registered with :func:`register_algorithm`."""
    if family not in _FAMILIES:
        raise ValueError(f"no algorithm family {family!r} is registered")
    del _FAMILIES[family]


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
    return block_diagonal(int(argument))


def _block_diagonal_candidates(call: ConvCall, options: dict) -> list[Algorithm]:
    sizes = candidate_block_sizes(call.groups, call.weight_shape[1], **options)
    return [BlockDiagonal(size) for size in sizes]


register_algorithm("native", _no_argument(Native))
register_algorithm("native_channels_last", _no_argument(NativeChannelsLast))
register_algorithm("block_diagonal", _block_diagonal, _block_diagonal_candidates)
register_algorithm("triton", _no_argument(TritonDepthwise))
register_algorithm("cpu_direct", _no_argument(CpuDirect))


def get_algorithm(name: str | Algorithm) -> Algorithm:
    """The algorithm named ``name`` (``"native"``, ``"block_diagonal:8"``, ...); instances pass through."""
    if isinstance(name, Algorithm):
        return name
    if not isinstance(name, str):
        raise TypeError(f"algorithm must be a name such as 'native' or 'block_diagonal:8', or an "
                        f"Algorithm; got {type(name).__name__} {name!r}")
    family, _, argument = name.partition(":")
    if family not in _FAMILIES:
        raise ValueError(
            f"unknown algorithm {name!r}; known families: {sorted(_FAMILIES)} "
            "(block_diagonal takes a block size, as in 'block_diagonal:8')"
        )
    return _FAMILIES[family].factory(argument if argument else None)


def available_algorithms() -> list[str]:
    """The registered algorithm families."""
    return sorted(_FAMILIES)


def candidate_algorithms(call: ConvCall, device: torch.device | str = "cpu",
                         **options) -> list[Algorithm]:
    """Every registered family's candidates for ``call`` that run it on ``device``, in
    registration order (native first). ``options`` go to the families' candidate lists: for
    ``block_diagonal``, ``every_divisor`` and ``max_block_channels`` (see
    :func:`diagonalwise.blocking.candidate_block_sizes`)."""
    device = torch.device(device)
    found: list[Algorithm] = []
    for family in _FAMILIES.values():
        if family.candidates is not None:
            instances = family.candidates(call, options)
        else:
            try:
                instances = [family.factory(None)]
            except ValueError:  # the family needs an argument and did not say which to try
                instances = []
        found += [a for a in instances if a.is_applicable(call, device)]
    return found
