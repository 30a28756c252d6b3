"""Choosing the fastest JAX algorithm for each distinct grouped convolution, by measurement.

For a :class:`ConvConfig` (shapes, strides, padding, dilations, dimension numbers, groups, dtype)
every candidate runs forward+backward under ``jit``; one whose output or gradients differ from
native beyond the dtype's tolerance is rejected with its error, the rest are timed in turns, and
the fastest is chosen only if it beats native by ``min_gain`` (5%)
(:mod:`diagonalwise.algorithm_choice`). Choices persist in a JSON cache of their own
(``$DIAGONALWISE_CACHE_DIR/jax-tuning.json``, else ``~/.cache/diagonalwise``), one section per JAX
version, backend and device, shared with nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..algorithm_choice import (
    TOLERANCES,
    ChoiceCache,
    choose,
    code_fingerprint,
    default_cache_path,
    measure_candidates,
)
from ..blocking import candidate_block_sizes
from . import grouped_conv_general_dilated

#: the largest block measured, in input channels (a block of b channels does b times the
#: depthwise layer's multiply-adds)
MAX_BLOCK_CHANNELS = 64


@dataclass(frozen=True)
class ConvConfig:
    """One grouped convolution as ``lax.conv_general_dilated`` is called for it."""

    lhs_shape: tuple[int, ...]
    rhs_shape: tuple[int, ...]
    window_strides: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...] | None
    rhs_dilation: tuple[int, ...] | None
    dimension_numbers: lax.ConvDimensionNumbers
    groups: int
    dtype: str

    @classmethod
    def of_call(cls, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, **_) -> ConvConfig:
        numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        return cls(tuple(lhs.shape), tuple(rhs.shape), tuple(window_strides),
                   padding if isinstance(padding, str) else tuple(map(tuple, padding)),
                   tuple(lhs_dilation) if lhs_dilation else None,
                   tuple(rhs_dilation) if rhs_dilation else None, numbers, feature_group_count,
                   jnp.dtype(lhs.dtype).name)

    def key(self) -> str:
        return repr((self.lhs_shape, self.rhs_shape, self.window_strides, self.padding,
                     self.lhs_dilation, self.rhs_dilation, tuple(self.dimension_numbers),
                     self.groups, self.dtype))

    def candidates(self) -> list[str]:
        in_per_group = self.rhs_shape[self.dimension_numbers.rhs_spec[1]]
        names = ["native"]
        if not self.lhs_dilation or all(d == 1 for d in self.lhs_dilation):
            names.append("shift_add")
        if self.groups > 1:
            names += [f"block_diagonal:{b}" for b in candidate_block_sizes(
                self.groups, in_per_group, max_block_channels=MAX_BLOCK_CHANNELS)]
        return names

    def conv(self, algorithm: str):
        """(lhs, rhs) -> output, computed by ``algorithm``."""
        def run(lhs, rhs):
            return grouped_conv_general_dilated(
                lhs, rhs, self.window_strides, self.padding, self.lhs_dilation,
                self.rhs_dilation, self.dimension_numbers, feature_group_count=self.groups,
                algorithm=algorithm)

        return run


def measure(config: ConvConfig, *, repeats: int = 3) -> dict[str, float | str]:
    """Seconds per forward+backward under ``jit`` (median of ``repeats``) for each candidate that
    passes the correctness gate, or why it has none (:func:`measure_candidates`)."""
    rng = np.random.default_rng(0)
    dtype = jnp.dtype(config.dtype)
    lhs = jnp.asarray(rng.standard_normal(config.lhs_shape), dtype)
    rhs = jnp.asarray(rng.standard_normal(config.rhs_shape), dtype)
    out_shape = jax.eval_shape(config.conv("native"), lhs, rhs).shape
    cotangent = jnp.asarray(rng.standard_normal(out_shape), dtype)

    def make_step(name):
        def loss(lhs, rhs):
            out = config.conv(name)(lhs, rhs)
            return jnp.vdot(out, cotangent), out

        step = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))

        def run():
            (_, out), grads = step(lhs, rhs)
            return jax.block_until_ready((out, *grads))

        return run

    return measure_candidates(config.candidates(), make_step,
                              TOLERANCES.get(config.dtype, 1e-4), repeats)


def environment() -> str:
    """JAX's version, backend and device, and our algorithms' code: what a timing depends on."""
    device = jax.devices()[0]
    code = code_fingerprint(*(Path(__file__).with_name(name)
                              for name in ("__init__.py", "shift_add.py")))
    return (f"jax {jax.__version__} {jax.default_backend()} "
            f"{getattr(device, 'device_kind', device)} code {code}")


class TuningCache(ChoiceCache):
    """Measured choices per :meth:`ConvConfig.key`, in ``path`` (default: ``jax-tuning.json`` in
    the cache directory), per JAX environment."""

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__(path or default_cache_path("jax-tuning.json"), environment())

    def get(self, config: ConvConfig) -> str | None:
        return super().get(config.key(), config.candidates())

    def put(self, config: ConvConfig, algorithm: str, measured: dict) -> None:
        super().put(config.key(), algorithm, measured)


def tune_config(config: ConvConfig, cache: TuningCache | None = None, *, repeats: int = 3,
                min_gain: float = 0.05) -> tuple[str, dict]:
    """(chosen algorithm, what was measured) for one configuration, from the cache if there."""
    if cache is not None:
        known = cache.get(config)
        if known is not None:
            return known, cache.measurements(config.key())
    measured = measure(config, repeats=repeats)
    chosen = choose(measured, min_gain)
    if cache is not None:
        cache.put(config, chosen, measured)
    return chosen, measured
