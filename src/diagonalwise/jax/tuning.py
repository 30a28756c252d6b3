"""Choosing the fastest JAX algorithm for each distinct grouped convolution, by measurement.

For a :class:`ConvConfig` (shapes, strides, padding, dilations, dimension numbers, groups, dtype)
every candidate runs forward+backward under ``jit``; one whose output or gradients differ from
native beyond the dtype's tolerance is rejected with its error, the rest are timed in turns, and
the fastest is chosen only if it beats native by ``min_gain`` (5%). Choices persist in a JSON
cache of their own (``$DIAGONALWISE_CACHE_DIR/jax-tuning.json``, else ``~/.cache/diagonalwise``),
one section per JAX version, backend and device, shared with nothing else.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..atomic_files import write_json_atomic
from ..blocking import candidate_block_sizes
from . import grouped_conv_general_dilated

#: largest error over largest value, of the output and both gradients, against native
TOLERANCES = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 3e-2, "float16": 3e-2}
#: the largest block measured, in input channels (a block of b channels does b times the
#: depthwise layer's multiply-adds)
MAX_BLOCK_CHANNELS = 64
CACHE_FORMAT = 1
#: a candidate this many times slower than the fastest after one timed run is not timed again
CLEAR_LOSS = 2.0


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


def _step(conv):
    def loss(lhs, rhs, cotangent):
        out = conv(lhs, rhs)
        return jnp.vdot(out, cotangent), out

    return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))


def _relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def measure(config: ConvConfig, *, repeats: int = 3) -> dict[str, float | str]:
    """Seconds per forward+backward (median of ``repeats``) for each candidate that passes the
    gate, or why it has none. The gate's run warms each candidate up; then one timed run each,
    and more, in turns, only for those within ``CLEAR_LOSS`` of the fastest. Block sizes go from
    the largest down and stop at the first clear loss: with fewer channels per block XLA's grouped
    convolution only gets slower (seen here: 0.19 s at 64 channels, 24 s at 2, on one layer)."""
    rng = np.random.default_rng(0)
    dtype = jnp.dtype(config.dtype)
    lhs = jnp.asarray(rng.standard_normal(config.lhs_shape), dtype)
    rhs = jnp.asarray(rng.standard_normal(config.rhs_shape), dtype)
    out_shape = jax.eval_shape(config.conv("native"), lhs, rhs).shape
    cotangent = jnp.asarray(rng.standard_normal(out_shape), dtype)
    names = config.candidates()
    blocks = [name for name in names if name.startswith("block_diagonal:")]
    results: dict[str, float | str] = {}
    steps, times = {}, {}
    reference, blocks_lost = None, False
    for name in [name for name in names if name not in blocks] + blocks[::-1]:
        if blocks_lost:
            results[name] = "not measured: a larger block was already a clear loss"
            continue
        step = _step(config.conv(name))
        (_, got), got_grads = step(lhs, rhs, cotangent)
        if reference is None:
            reference = (got, *got_grads)
        error = max(_relative_error(a, b) for a, b in zip((got, *got_grads), reference))
        if error > TOLERANCES.get(config.dtype, 1e-4):
            results[name] = f"failed correctness: relative error {error:.1e}"
            continue
        start = time.perf_counter()
        jax.block_until_ready(step(lhs, rhs, cotangent))
        steps[name], times[name] = step, [time.perf_counter() - start]
        blocks_lost = name in blocks and \
            times[name][0] > CLEAR_LOSS * min(seconds[0] for seconds in times.values())
    fastest = min(seconds[0] for seconds in times.values())
    for _ in range(repeats - 1):
        for name, step in steps.items():
            if times[name][0] <= CLEAR_LOSS * fastest:
                start = time.perf_counter()
                jax.block_until_ready(step(lhs, rhs, cotangent))
                times[name].append(time.perf_counter() - start)
    results.update({name: statistics.median(seconds) for name, seconds in times.items()})
    return results


def choose(measured: dict[str, float | str], min_gain: float = 0.05) -> str:
    """The fastest timed algorithm, if it beats native by ``min_gain``; else native."""
    timed = {name: seconds for name, seconds in measured.items() if isinstance(seconds, float)}
    best = min(timed, key=timed.get)
    return best if timed[best] * (1 + min_gain) <= timed["native"] else "native"


def environment() -> str:
    device = jax.devices()[0]
    return f"jax {jax.__version__} {jax.default_backend()} {getattr(device, 'device_kind', device)}"


class TuningCache:
    """Measured choices per :meth:`ConvConfig.key`, in a JSON file, per environment."""

    def __init__(self, path: str | os.PathLike | None = None):
        root = Path(os.environ.get("DIAGONALWISE_CACHE_DIR") or Path.home() / ".cache" / "diagonalwise")
        self.path = Path(path) if path else root / "jax-tuning.json"
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: measured afresh and rewritten
            data = None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            data = {"format": CACHE_FORMAT, "environments": {}}
        self.data = data

    def _section(self) -> dict:
        return self.data["environments"].setdefault(environment(), {})

    def get(self, config: ConvConfig) -> str | None:
        entry = self._section().get(config.key())
        if isinstance(entry, dict) and entry.get("algorithm") in config.candidates():
            return entry["algorithm"]
        return None

    def put(self, config: ConvConfig, algorithm: str, measured: dict) -> None:
        self._section()[config.key()] = {"algorithm": algorithm, "measured": measured}
        write_json_atomic(self.path, self.data)


def tune_config(config: ConvConfig, cache: TuningCache | None = None, *, repeats: int = 3,
                min_gain: float = 0.05) -> tuple[str, dict]:
    """(chosen algorithm, what was measured) for one configuration, from the cache if there."""
    if cache is not None:
        known = cache.get(config)
        if known is not None:
            return known, {}
    measured = measure(config, repeats=repeats)
    chosen = choose(measured, min_gain)
    if cache is not None:
        cache.put(config, chosen, measured)
    return chosen, measured
