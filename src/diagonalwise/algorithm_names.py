"""The names front ends other than PyTorch take for their algorithms (``algorithm="native"``,
``"block_diagonal:<b>"``, ``"shift_add"``), parsed in one place; no framework needed."""

from __future__ import annotations

from .blocking import check_block_size, resolve_block_size

#: the algorithm families, as ``algorithm=`` names them (block_diagonal takes ``:<b>``)
ALGORITHMS = ("native", "block_diagonal", "shift_add")


def parse_algorithm(algorithm: str | None, block_size: int | None, groups: int,
                    channels_per_group: int) -> tuple[str, int]:
    """(family, block size) from ``algorithm`` or the ``block_size`` shorthand (with neither:
    the paper's 32 channels per block); the block size is 1 for the other families."""
    if algorithm is None:
        return "block_diagonal", resolve_block_size(block_size, groups, channels_per_group)
    if block_size is not None:
        raise ValueError(f"give algorithm={algorithm!r} or block_size={block_size}, not both")
    family, _, argument = algorithm.partition(":")
    if family not in ALGORITHMS or bool(argument) != (family == "block_diagonal"):
        raise ValueError(f"unknown algorithm {algorithm!r}; choose native, shift_add or "
                         "block_diagonal:<groups per block>")
    if family != "block_diagonal":
        return family, 1
    try:
        size = int(argument)
    except ValueError:
        raise ValueError(f"{algorithm!r}: the block size must be a whole number") from None
    check_block_size(size, groups)
    return family, size
