"""Tuning a Flax NNX model: every :class:`~diagonalwise.flax.DiagonalwiseConv` gets the algorithm
measured fastest for its configuration (:mod:`diagonalwise.jax.tuning`), then the whole model's
forward+backward is timed tuned against all-native and the choices are kept only if faster."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from ..jax import grouped_conv_general_dilated
from ..jax.tuning import ConvConfig, TuningCache, tune_config
from . import DiagonalwiseConv


def _convolutions(model: nnx.Module) -> dict[str, DiagonalwiseConv]:
    return {"/".join(map(str, path)): module for path, module in nnx.iter_modules(model)
            if isinstance(module, DiagonalwiseConv)}


def capture_configs(model: nnx.Module, *example_args) -> dict[str, ConvConfig]:
    """How each DiagonalwiseConv of ``model`` is called on ``example_args``, found by tracing
    (``jax.eval_shape``: nothing is computed and the model's state does not change)."""
    found: dict[str, ConvConfig] = {}
    modules = _convolutions(model)
    for path, module in modules.items():
        def record(*args, _path=path, **kwargs):
            found[_path] = ConvConfig.of_call(*args, **kwargs)
            return grouped_conv_general_dilated(*args, algorithm="native", **kwargs)

        module.conv_general_dilated = record
    try:
        graphdef, state = nnx.split(model)
        jax.eval_shape(lambda s, *a: nnx.merge(graphdef, s)(*a), state, *example_args)
    finally:
        for module in modules.values():
            module.use_algorithm(module.algorithm)
    return found


def _time_forward_backward(model: nnx.Module, example_args, repeats: int) -> float:
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, *args):
        def loss(state):
            out = nnx.merge(graphdef, state)(*args)
            return jnp.mean(jnp.square(out.astype(jnp.float32)))
        return jax.grad(loss)(state)

    jax.block_until_ready(step(state, *example_args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(state, *example_args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tune_model(model: nnx.Module, *example_args, cache: TuningCache | bool = True,
               repeats: int = 3, min_gain: float = 0.05, log=print) -> dict[str, str]:
    """Give each DiagonalwiseConv of ``model`` its fastest algorithm for ``example_args`` (in
    place), keep the choices only if the whole model's forward+backward is faster than with
    native everywhere, and return {module path: algorithm}."""
    cache = TuningCache() if cache is True else (cache or None)
    configs = capture_configs(model, *example_args)
    modules = _convolutions(model)
    chosen: dict[str, str] = {}
    for number, key in enumerate(dict.fromkeys(c.key() for c in configs.values()), start=1):
        config = next(c for c in configs.values() if c.key() == key)
        algorithm, _ = tune_config(config, cache, repeats=repeats, min_gain=min_gain)
        log(f"layer configuration {number}: {algorithm}")
        for path, found in configs.items():
            if found.key() == key:
                chosen[path] = algorithm
    for path in chosen:
        modules[path].use_algorithm("native")
    native_seconds = _time_forward_backward(model, example_args, repeats)
    for path, algorithm in chosen.items():
        modules[path].use_algorithm(algorithm)
    tuned_seconds = _time_forward_backward(model, example_args, repeats)
    if tuned_seconds >= native_seconds:
        log(f"whole model: tuned {1e3 * tuned_seconds:.1f} ms, native {1e3 * native_seconds:.1f} "
            "ms: native everywhere")
        for path in chosen:
            modules[path].use_algorithm("native")
            chosen[path] = "native"
    else:
        log(f"whole model: tuned {1e3 * tuned_seconds:.1f} ms, native "
            f"{1e3 * native_seconds:.1f} ms: choices kept")
    return chosen
