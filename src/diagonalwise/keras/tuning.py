"""Tuning a Keras 3 model per layer, on whichever backend runs it.

For each distinct depthwise layer (its configuration and input shape) every algorithm runs
forward+backward as the backend trains (``jax.jit`` of ``stateless_call``, a ``tf.function`` with a
gradient tape, torch autograd); one whose output or gradients differ from native beyond the
dtype's tolerance is rejected, the rest are timed in turns, and the fastest is chosen if it beats
native by ``min_gain`` (:mod:`diagonalwise.algorithm_choice`). Then the whole model's
forward+backward is timed with the choices against native everywhere, and the choices are kept
only if faster. Choices persist in ``keras-tuning.json`` in the cache directory, one section per
Keras version and backend, shared with nothing else.

``converted, plan = tune_model(model, example_input)``; ``convert_model(model, plan=plan)`` makes
the same model again from a saved plan.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

import keras
import numpy as np
from keras import ops

from ..algorithm_choice import (
    TOLERANCES,
    ChoiceCache,
    Plan,
    check_whole_model,
    choose,
    code_fingerprint,
    default_cache_path,
    measure_candidates,
)
from ..blocking import candidate_block_sizes
from . import _REPLACEMENTS, convert_model

#: the largest block measured, in input channels
MAX_BLOCK_CHANNELS = 64


def environment() -> str:
    """Keras's version, its backend and the backend's version, and our algorithms' code: what a
    timing depends on."""
    backend = keras.backend.backend()
    version = importlib.import_module(backend).__version__ \
        if backend in ("jax", "tensorflow", "torch") else ""
    here = Path(__file__).parent
    code = code_fingerprint(here / "__init__.py", here / "shift_add.py",
                            here.parent / "jax" / "shift_add.py")
    return f"keras {keras.__version__} {backend} {version} code {code}"


class TuningCache(ChoiceCache):
    """Measured choices per layer configuration, in ``path`` (default: ``keras-tuning.json`` in
    the cache directory), per Keras version and backend."""

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__(path or default_cache_path("keras-tuning.json"), environment())


def forward_backward(target, inputs, cotangent):
    """A function that runs ``target`` (a layer or a model) on ``inputs`` in training mode and
    back from ``cotangent`` (the gradient of ``sum(output * cotangent)``), as the backend trains,
    and returns (output, input gradient, *trainable weights' gradients) once computed."""
    backend = keras.backend.backend()
    weights = list(target.trainable_variables)
    if backend == "jax":
        import jax

        trainable = [v.value for v in weights]
        frozen = [v.value for v in target.non_trainable_variables]

        # stateless_call passes keywords through, and a single layer's call takes no training
        mode = {"training": True} if "training" in inspect.signature(target.call).parameters \
            else {}

        def loss(trainable, x):
            out, _ = target.stateless_call(trainable, frozen, x, **mode)
            return ops.sum(out * cotangent), out

        step = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))

        def run():
            (_, out), (weight_grads, input_grad) = step(trainable, inputs)
            return jax.block_until_ready((out, input_grad, *weight_grads))

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function  # as Keras compiles a train step on the CPU: a graph, without XLA
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = target(x, training=True)
                loss = tf.reduce_sum(out * cotangent)
            return (out, *tape.gradient(loss, [x, *weights]))

        return lambda: step(inputs)
    if backend == "torch":
        import torch

        def run():
            x = inputs.detach().requires_grad_()
            out = target(x, training=True)
            grads = torch.autograd.grad((out * cotangent).sum(), [x, *(v.value for v in weights)])
            return (out.detach(), *grads)

        return run
    raise ValueError(f"tuning runs on the jax, tensorflow and torch backends, not {backend}")


def _depthwise_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """The model's depthwise layers (native or ours) by name."""
    kinds = (*_REPLACEMENTS, *_REPLACEMENTS.values())
    return {layer.name: layer for layer in model.layers if type(layer) in kinds}


def _layer_config(layer, batch: int) -> tuple[str, dict, tuple[int, ...]]:
    """(cache key, the layer's config without its name and algorithm, input shape)."""
    config = {key: value for key, value in layer.get_config().items()
              if key not in ("name", "algorithm", "block_size", "trainable")}
    shape = (batch, *layer.input.shape[1:])
    return repr((type(layer).__name__, sorted(config.items(), key=lambda kv: kv[0]), shape)), \
        config, shape


def candidates(layer, shape: tuple[int, ...]) -> list[str]:
    """native, shift_add and the block sizes worth measuring for a depthwise layer."""
    channels = shape[-1] if layer.data_format == "channels_last" else shape[1]
    return ["native", "shift_add"] + [f"block_diagonal:{b}" for b in candidate_block_sizes(
        channels, 1, max_block_channels=MAX_BLOCK_CHANNELS)]


def measure_layer(layer, shape: tuple[int, ...], config: dict, *,
                  repeats: int = 3) -> dict[str, float | str]:
    """Seconds per forward+backward of each algorithm for ``layer``'s configuration on inputs of
    ``shape``, from the same random weights and inputs, or why it has none."""
    ours = _REPLACEMENTS.get(type(layer), type(layer))
    reference = ours.from_config({**config, "algorithm": "native", "block_size": None})
    reference.build(shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(reference.compute_dtype)
    cotangent = rng.standard_normal(reference.compute_output_shape(shape)).astype(x.dtype)
    x, cotangent = ops.convert_to_tensor(x), ops.convert_to_tensor(cotangent)

    def make_step(name):
        candidate = ours.from_config({**config, "algorithm": name, "block_size": None})
        candidate.build(shape)
        candidate.set_weights(reference.get_weights())
        return forward_backward(candidate, x, cotangent)

    return measure_candidates(candidates(layer, shape), make_step,
                              TOLERANCES.get(reference.compute_dtype, 1e-4), repeats)


def tune_model(model: keras.Model, example_input, *, cache: TuningCache | bool = True,
               repeats: int = 3, min_gain: float = 0.05, log=print) -> tuple[keras.Model, Plan]:
    """(A copy of ``model`` whose depthwise layers each run the algorithm measured fastest for
    their input at ``example_input``'s batch size, the plan: {layer name: algorithm} and the
    whole-model check). The choices are kept only if the copy's forward+backward on
    ``example_input`` is faster than native everywhere; otherwise every layer is native."""
    if len(model.outputs) != 1:
        raise ValueError(f"tune_model times models with one output; this one has "
                         f"{len(model.outputs)}: tune a model that ends at the output you train")
    cache = TuningCache() if cache is True else (cache or None)
    batch = int(np.shape(example_input)[0])
    chosen: dict[str, str] = {}
    by_key: dict[str, str] = {}
    measured: dict[str, dict] = {}
    for name, layer in _depthwise_layers(model).items():
        key, config, shape = _layer_config(layer, batch)
        if key not in by_key:
            names = candidates(layer, shape)
            known = cache.get(key, names) if cache is not None else None
            if known is None:
                results = measure_layer(layer, shape, config, repeats=repeats)
                known = choose(results, min_gain)
                if cache is not None:
                    cache.put(key, known, results)
            else:
                results = cache.measurements(key)
            by_key[key] = known
            measured[name] = {"input": list(shape), "algorithms": results}
            log(f"layer configuration {len(by_key)} ({name}, input {shape}): {known}")
        chosen[name] = by_key[key]
    native = convert_model(model, plan=Plan(dict.fromkeys(chosen, "native")))
    tuned = convert_model(model, plan=Plan(chosen))
    x = ops.convert_to_tensor(example_input)
    output_shape = ops.shape(native(x, training=False))
    cotangent = ops.convert_to_tensor(
        np.random.default_rng(0).standard_normal(output_shape).astype(native.compute_dtype))
    check = check_whole_model(forward_backward(native, x, cotangent),
                              forward_backward(tuned, x, cotangent), repeats)
    log(f"whole model: tuned {1e3 * check['tuned_seconds']:.1f} ms, native "
        f"{1e3 * check['native_seconds']:.1f} ms: "
        + ("choices kept" if check["kept"] else "native everywhere"))
    if check["kept"]:
        return tuned, Plan(chosen, check, measured)
    return native, Plan(dict.fromkeys(chosen, "native"), check, measured)
