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
from .blocking import divisors
from .modules import DIAGONALWISE_TYPE, _DiagonalwiseConvNd

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


def _largest_block_size_up_to(limit: int, groups: int) -> int:
    return max(d for d in divisors(groups) if d <= limit)


def _skip_reason(module: nn.Module) -> str | None:
    """Why a convolution cannot be converted, or None if it can."""
    if isinstance(module, _DiagonalwiseConvNd):
        return f"already converted ({module.algorithm.name})"
    if type(module) not in DIAGONALWISE_TYPE:
        base = next(b for b in type(module).__mro__ if b in DIAGONALWISE_TYPE or
                    b is nn.modules.conv._ConvNd)
        return (f"{type(module).__qualname__} is a subclass of {base.__qualname__} with its own "
                f"behaviour; only exact nn.Conv1d/2d/3d are converted")
    if module.groups == 1:
        return "groups=1: a dense convolution, nothing to refactorize"
    return None


def _walk_and_replace(
    root: nn.Module, replace: Callable[[nn.Module, str], nn.Module]
) -> nn.Module:
    """Apply ``replace(module, qualified_name)`` to every module once (shared modules are replaced
    in every parent by the same new module) and return the new root."""
    replaced: dict[int, nn.Module] = {}

    def visit(module: nn.Module, name: str) -> nn.Module:
        if id(module) in replaced:
            return replaced[id(module)]
        new = replace(module, name)
        replaced[id(module)] = new
        for child_name, child in list(new._modules.items()):
            if child is not None:
                new._modules[child_name] = visit(child, f"{name}.{child_name}" if name else child_name)
        return new

    return visit(root, "")


def convert(
    model: nn.Module,
    *,
    block_size: int | str | None = None,
    algorithm: str | Algorithm | None = None,
    filter_fn: FilterFn | None = None,
    report: ConversionReport | None = None,
    example_inputs: tuple | None = None,
) -> nn.Module:
    """Replace every exact ``nn.Conv1d/2d/3d`` with ``groups > 1`` by its diagonalwise module.

    Equivalence contract: the converted model computes what ``model`` computed, in value and in
    every gradient, up to floating-point rounding; it holds the same Parameter objects under the
    same names, so state_dicts load either way.

    Args:
        model: the root module; a bare convolution works too (the new module is returned).
        block_size: per layer, groups per dense block. ``None``: the paper's 32 channels per block
            (:func:`diagonalwise.blocking.default_block_size`). An int is an upper bound: each
            layer takes the largest divisor of its ``groups`` not above it. ``"auto"``: after
            converting, :func:`diagonalwise.tune` measures each layer on ``example_inputs`` and
            sets the fastest algorithm (native included), using the per-device cache.
        algorithm: a named algorithm for every converted layer instead (``"native"``, ...).
        filter_fn: ``filter_fn(module, qualified_name) -> bool``; only modules it accepts change.
        report: a :class:`ConversionReport` to fill with what changed and what was skipped, why.
        example_inputs: a representative batch, e.g. ``(images,)``; needed by ``"auto"`` only.

    Returns the root. Idempotent: already converted layers are left as they are.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert takes an nn.Module, got {type(model).__name__}")
    if block_size == "auto":
        if example_inputs is None:
            raise ValueError("block_size='auto' measures every layer on a real batch: pass "
                             "example_inputs=(x,), or call diagonalwise.tune(model, (x,))")
        from .tuning import tune

        root = convert(model, algorithm="native", filter_fn=filter_fn, report=report)
        tune(root, example_inputs, filter_fn=lambda module, name: isinstance(module, _DiagonalwiseConvNd))
        return root
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                   or block_size < 1):
        raise ValueError(f"block_size must be a positive int, None or 'auto', got {block_size!r}")
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
        layer_block_size = (None if block_size is None or algorithm is not None
                            else _largest_block_size_up_to(block_size, module.groups))
        new = DIAGONALWISE_TYPE[type(module)].from_conv(
            module, block_size=layer_block_size, algorithm=algorithm
        )
        report.changed.append((name, f"groups={module.groups} {new.algorithm.name}"))
        return new

    root = _walk_and_replace(model, replace)
    logger.info("diagonalwise.convert: %s", report)
    return root


def revert(model: nn.Module, *, report: ConversionReport | None = None) -> nn.Module:
    """Undo :func:`convert`: every ``DiagonalwiseConvNd`` becomes the plain torch layer with the
    same Parameter objects. Returns the root."""
    report = report if report is not None else ConversionReport(verb="reverted")

    def replace(module: nn.Module, name: str) -> nn.Module:
        if not isinstance(module, _DiagonalwiseConvNd):
            return module
        report.changed.append((name, f"from {module.algorithm.name}"))
        return module.to_native()

    root = _walk_and_replace(model, replace)
    logger.info("diagonalwise.revert: %s", report)
    return root
