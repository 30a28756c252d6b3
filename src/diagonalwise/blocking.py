"""Framework-free arithmetic of the refactorization: block sizes and the block-diagonal index map.

A grouped convolution with ``groups`` groups packs ``block_size`` consecutive groups into one dense
block. The refactorized convolution then has ``groups // block_size`` groups, and its weight is
block-diagonal inside each block. Nothing here imports a deep-learning framework, so the PyTorch,
Keras, JAX and MXNet front ends share one definition.
"""

from __future__ import annotations

#: The block width of the authors' released code: 32 input channels per dense block.
PAPER_CHANNELS_PER_BLOCK = 32

#: The widest dense block allowed, in input channels. The dense weight is ``block_size`` times
#: the compact one and so are the multiply-adds: 2048 depthwise channels in one block built a
#: 144 MB weight and peaked at 177x native's memory for one layer.
MAX_BLOCK_CHANNELS = 512


def divisors(n: int) -> list[int]:
    """All positive divisors of ``n`` in increasing order."""
    if n < 1:
        raise ValueError(f"divisors() needs a positive integer, got {n}")
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def largest_divisor_up_to(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (1 if ``limit`` < 1)."""
    return max(d for d in divisors(n) if d <= max(1, limit))


def valid_block_sizes(groups: int) -> list[int]:
    """The block sizes a convolution with ``groups`` groups accepts: the divisors of ``groups``."""
    return divisors(groups)


def default_block_size(groups: int, in_channels_per_group: int = 1) -> int:
    """The paper's 32 input channels per dense block, rounded down to a divisor of ``groups``.

    With ``in_channels_per_group`` input channels in each group, a block of ``b`` groups holds
    ``b * in_channels_per_group`` input channels. The result is the largest divisor ``b`` of ``groups``
    with ``b * in_channels_per_group <= 32`` (at least 1, which is the native grouped convolution).
    """
    return largest_divisor_up_to(groups, PAPER_CHANNELS_PER_BLOCK // max(1, in_channels_per_group))


def candidate_block_sizes(groups: int, in_channels_per_group: int = 1, *,
                          max_block_channels: int = 256, every_divisor: bool = False) -> list[int]:
    """Block sizes worth measuring: divisors of ``groups`` above 1 with at most
    ``max_block_channels`` input channels per block, spaced at least 2x apart (all of them with
    ``every_divisor``), plus the paper's default."""
    sizes: list[int] = []
    for size in divisors(groups)[1:]:
        if size * in_channels_per_group > max_block_channels:
            break
        if every_divisor or not sizes or size >= 2 * sizes[-1]:
            sizes.append(size)
    default = default_block_size(groups, in_channels_per_group)
    return sorted(set(sizes) | ({default} if default > 1 else set()))


def check_block_size(block_size: int, groups: int) -> int:
    """Return ``block_size`` if it divides ``groups``; else raise a ValueError naming the valid values."""
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(
            f"block_size must be an int or None, got {type(block_size).__name__} {block_size!r}"
        )
    if block_size < 1 or groups % block_size != 0:
        raise ValueError(
            f"block_size={block_size} does not divide groups={groups}; "
            f"valid block sizes are {valid_block_sizes(groups)} (or None for the default)"
        )
    return block_size


def check_block_channels(block_size: int, in_channels_per_group: int) -> int:
    """Return ``block_size`` if its dense block holds at most :data:`MAX_BLOCK_CHANNELS` input
    channels; else raise a ValueError with the fix."""
    channels = block_size * in_channels_per_group
    if channels > MAX_BLOCK_CHANNELS:
        raise ValueError(
            f"block_size={block_size} packs {channels} input channels into one dense block, more "
            f"than the {MAX_BLOCK_CHANNELS} allowed: its weight and multiply-adds are "
            f"{block_size}x the grouped convolution's. Use a smaller block_size (None: the "
            f"paper's {PAPER_CHANNELS_PER_BLOCK} channels per block), or diagonalwise.tune")
    return block_size


def resolve_block_size(block_size: int | None, groups: int, in_channels_per_group: int = 1) -> int:
    """``None`` becomes :func:`default_block_size`; an int is checked by :func:`check_block_size`
    and :func:`check_block_channels`."""
    if block_size is None:
        return default_block_size(groups, in_channels_per_group)
    return check_block_channels(check_block_size(block_size, groups), in_channels_per_group)


def block_diagonal_position(
    out_channel: int, out_channels_per_group: int, block_size: int
) -> int:
    """Which slot of its dense block output channel ``out_channel`` reads from.

    Output channel ``o`` belongs to group ``g = o // out_channels_per_group``; inside its block of
    ``block_size`` groups it sits at ``g % block_size``. In the dense weight of shape
    ``(out_channels, block_size * in_channels_per_group, *kernel)``, row ``o`` holds the compact weight
    row in the columns ``[j * in_channels_per_group, (j + 1) * in_channels_per_group)`` with ``j`` this
    position, and zeros elsewhere (the paper's ``W[o, (o // M) % b] = w[o, 0]`` for depthwise).
    """
    return (out_channel // out_channels_per_group) % block_size
