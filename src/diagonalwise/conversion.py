"""Swap the grouped convolutions of a model for their diagonalwise modules, and back.

``convert(model)`` replaces every module whose type is exactly ``nn.Conv1d``, ``nn.Conv2d`` or
``nn.Conv3d`` with ``groups > 1`` by the matching ``DiagonalwiseConvNd``, sharing the same
Parameter objects. Subclasses (timm's ``Conv2dSame``, ``StdConv2d``) have their own forward and are
left alone, as are dense (``groups == 1``) convolutions; the report says why for each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .algorithms import Algorithm
from .blocking import MAX_BLOCK_CHANNELS, largest_divisor_up_to
from .modules import DIAGONALWISE_TYPE, is_converted, swap_modules

logger = logging.getLogger("diagonalwise")

FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class ConversionReport:
    """What :func:`convert` or :func:`revert` did: ``(name, detail)`` pairs for the layers it
    changed and for the convolutions it left alone, with the reason. Printing it gives a table."""

    changed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    verb: str = "converted"

    def __str__(self) -> str:
        lines = [f"{self.verb} {len(self.changed)} layer(s), skipped {len(self.skipped)}"]
        width = max((len(name) for name, _ in self.changed + self.skipped), default=0)
        lines += [f"  {self.verb:<9}  {name or '<root>':<{width}}  {detail}"
                  for name, detail in self.changed]
        lines += [f"  {'skipped':<9}  {name or '<root>':<{width}}  {reason}"
                  for name, reason in self.skipped]
        return "\n".join(lines)


def _skip_reason(module: nn.Module) -> str | None:
    """Why a convolution cannot be converted, or None if it can."""
    if is_converted(module):
        return f"already converted ({module.algorithm.name})"
    if type(module) not in DIAGONALWISE_TYPE:
        base = next(b for b in type(module).__mro__ if b in DIAGONALWISE_TYPE or
                    b is nn.modules.conv._ConvNd)
        return (f"{type(module).__qualname__} is a subclass of {base.__qualname__} with its own "
                f"behaviour; only exact nn.Conv1d/2d/3d are converted")
    if module.groups == 1:
        return "groups=1: a dense convolution, nothing to refactorize"
    return None


def convert(
    model: nn.Module,
    *,
    block_size: int | None = None,
    algorithm: str | Algorithm | None = None,
    filter_fn: FilterFn | None = None,
    report: ConversionReport | None = None,
) -> nn.Module:
    """Replace every exact ``nn.Conv1d/2d/3d`` with ``groups > 1`` by its diagonalwise module.

    Equivalence contract: the converted model computes what ``model`` computed, in value and in
    every gradient, up to floating-point rounding; it holds the same Parameter objects under the
    same names, so state_dicts load either way.

    Args:
        model: the root module; a bare convolution works too (the new module is returned).
        block_size: per layer, groups per dense block. ``None``: the paper's 32 channels per block
            (:func:`diagonalwise.blocking.default_block_size`). An int is an upper bound: each
            layer takes the largest divisor of its ``groups`` not above it (nor above
            :data:`~diagonalwise.blocking.MAX_BLOCK_CHANNELS` input channels). To measure each layer
            and pick the fastest algorithm instead, use :func:`diagonalwise.tune`.
        algorithm: a named algorithm for every converted layer instead (``"native"``, ...).
        filter_fn: ``filter_fn(module, qualified_name) -> bool``; only modules it accepts change.
        report: a :class:`ConversionReport` to fill with what changed and what was skipped, why.

    Returns the root. Idempotent: already converted layers are left as they are.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert takes an nn.Module, got {type(model).__name__}")
    if block_size == "auto":
        raise ValueError("convert does not measure: to pick each layer's fastest algorithm on a "
                         "real batch, call diagonalwise.tune(model, (x,)) (it converts too)")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                   or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    report = report if report is not None else ConversionReport()

    def replace(module: nn.Module, name: str) -> nn.Module:
        if not isinstance(module, nn.modules.conv._ConvNd):
            return module
        reason = _skip_reason(module)
        if reason is None and filter_fn is not None and not filter_fn(module, name):
            reason = "excluded by filter_fn"
        if reason is not None:
            report.skipped.append((name, reason))
            return module
        layer_block_size = None
        if block_size is not None and algorithm is None:
            widest = MAX_BLOCK_CHANNELS // (module.in_channels // module.groups)
            layer_block_size = largest_divisor_up_to(module.groups, min(block_size, widest))
        new = DIAGONALWISE_TYPE[type(module)].from_conv(
            module, block_size=layer_block_size, algorithm=algorithm
        )
        report.changed.append((name, f"groups={module.groups} {new.algorithm.name}"))
        return new

    root = swap_modules(model, replace)
    logger.info("diagonalwise.convert: %s", report)
    return root


def revert(model: nn.Module, *, report: ConversionReport | None = None) -> nn.Module:
    """Undo :func:`convert`: every ``DiagonalwiseConvNd`` becomes the plain torch layer with the
    same Parameter objects. Returns the root."""
    report = report if report is not None else ConversionReport(verb="reverted")

    def replace(module: nn.Module, name: str) -> nn.Module:
        if not is_converted(module):
            return module
        report.changed.append((name, f"from {module.algorithm.name}"))
        return module.to_native()

    root = swap_modules(model, replace)
    logger.info("diagonalwise.revert: %s", report)
    return root
