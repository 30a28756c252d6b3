"""Tuning a Flax NNX model: every :class:`~diagonalwise.flax.DiagonalwiseConv` gets the algorithm
measured fastest for its configuration (:mod:`diagonalwise.jax.tuning`), then the whole model's
forward+backward is timed tuned against all-native and the choices are kept only if faster. The
result is a :class:`~diagonalwise.algorithm_choice.Plan` (module path -> algorithm), which
:func:`apply_plan` gives to another instance of the same model (a saved plan, a fresh process)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ..algorithm_choice import Plan, check_whole_model
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


def apply_plan(model: nnx.Module, plan: Plan) -> nnx.Module:
    """Give each DiagonalwiseConv the plan names its algorithm (in place; returns ``model``). All
    or nothing: every name is checked first, and on an error nothing changes."""
    modules = _convolutions(model)
    missing = sorted(set(plan.layers) - set(modules))
    if missing:
        raise ValueError(f"the plan names modules this model has no DiagonalwiseConv at: "
                         f"{missing[:5]}; its DiagonalwiseConv paths are {sorted(modules)[:5]}...")
    previous = {path: modules[path].algorithm for path in plan.layers}
    try:
        for path, algorithm in plan.layers.items():
            modules[path].use_algorithm(algorithm)
    except ValueError as error:
        for path, algorithm in previous.items():
            modules[path].use_algorithm(algorithm)
        raise ValueError(f"the plan does not fit this model: {error}") from None
    return model


def _forward_backward(model: nnx.Module, example_args):
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, *args):
        def loss(state):
            out = nnx.merge(graphdef, state)(*args)
            return jnp.mean(jnp.square(out.astype(jnp.float32)))
        return jax.grad(loss)(state)

    return lambda: jax.block_until_ready(step(state, *example_args))


def tune_model(model: nnx.Module, *example_args, cache: TuningCache | bool = True,
               repeats: int = 3, min_gain: float = 0.05, log=print) -> Plan:
    """Give each DiagonalwiseConv of ``model`` its fastest algorithm for ``example_args`` (in
    place), keep the choices only if the whole model's forward+backward is faster than with
    native everywhere, and return the plan ({module path: algorithm} and the whole-model check)."""
    cache = TuningCache() if cache is True else (cache or None)
    configs = capture_configs(model, *example_args)
    chosen: dict[str, str] = {}
    measured: dict[str, dict] = {}
    for number, key in enumerate(dict.fromkeys(c.key() for c in configs.values()), start=1):
        path, config = next((p, c) for p, c in configs.items() if c.key() == key)
        algorithm, results = tune_config(config, cache, repeats=repeats, min_gain=min_gain)
        log(f"layer configuration {number} ({path}, input {config.lhs_shape}): {algorithm}")
        measured[path] = {"input": list(config.lhs_shape), "algorithms": results}
        chosen |= {path: algorithm for path, found in configs.items() if found.key() == key}
    native_step = _forward_backward(apply_plan(model, Plan(dict.fromkeys(chosen, "native"))),
                                    example_args)
    tuned_step = _forward_backward(apply_plan(model, Plan(chosen)), example_args)
    check = check_whole_model(native_step, tuned_step, repeats)
    log(f"whole model: tuned {1e3 * check['tuned_seconds']:.1f} ms, native "
        f"{1e3 * check['native_seconds']:.1f} ms: "
        + ("choices kept" if check["kept"] else "native everywhere"))
    plan = Plan(chosen if check["kept"] else dict.fromkeys(chosen, "native"), check, measured)
    apply_plan(model, plan)
    return plan
