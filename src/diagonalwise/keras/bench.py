"""The paper's experiment in Keras 3 on the backend in ``KERAS_BACKEND``: ``keras.applications``
MobileNet (V1) training steps (``train_on_batch``: forward, cross-entropy, backward, SGD with
momentum), native and with its depthwise layers converted (the paper's blocks, shift_add, and as
tuned per layer by :func:`diagonalwise.keras.tuning.tune_model`), from the same weights, the
variants taking turns round by round.
Each variant's first loss must equal native's (float32, 1e-4 relative) before it is timed.

``KERAS_BACKEND=jax python -m diagonalwise.keras.bench [--batch 16] [--size 224] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import keras
import numpy as np

from ..algorithm_choice import Plan
from ..framework_bench import gated_training_rows, report
from . import convert_model
from .tuning import TuningCache, environment, tune_model


def _compiled(model: keras.Model) -> keras.Model:
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model


def bench_training(batch: int, size: int, repeats: int, warmup: int = 1,
                   cache: TuningCache | bool = True) -> tuple[list[dict], Plan]:
    """The rows of each variant, and the plan the tuned variant runs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, 1000, batch)
    keras.utils.set_random_seed(0)
    # no dropout: each converted copy would draw its own masks
    native = keras.applications.MobileNet(input_shape=(size, size, 3), weights=None, dropout=0.0)
    tuned, plan = tune_model(native, x, cache=cache, log=lambda message: None)
    models = {name: _compiled(model) for name, model in (
        ("native", native), ("paper", convert_model(native)),
        ("shift_add", convert_model(native, algorithm="shift_add")), ("tuned", tuned))}
    depthwise = {"native": "native", "paper": "block_diagonal (the paper's 32 channels)",
                 "shift_add": "shift_add", "tuned": plan.summary()}
    first = {name: float(np.asarray(model.train_on_batch(x, labels)).reshape(-1)[0])
             for name, model in models.items()}  # compiles
    steps = {name: functools.partial(model.train_on_batch, x, labels)
             for name, model in models.items()}
    rows = gated_training_rows(first, steps, {"batch": batch, "size": size,
                                              "backend": keras.backend.backend()},
                               warmup, repeats)
    for row in rows:
        row["depthwise"] = depthwise[row["variant"]]
    return rows, plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diagonalwise.keras.bench",
                                     description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if keras.backend.backend() == "tensorflow":
        # Grappler's dependency optimizer lets a compiled step read a weight after the step's own
        # update (tests/frontends/test_keras.py says how it was found), failing the loss check
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"dependency_optimization": False})
    # measured afresh into a cache beside the results, unless none is written
    cache = TuningCache(args.output.with_name(args.output.stem + "-tuning-cache.json")) \
        if args.output else True
    rows, plan = bench_training(args.batch, args.size, args.repeats, cache=cache)
    report(rows, args.output, {"keras": keras.__version__, "backend": keras.backend.backend(),
                               "backend_version": environment(),
                               "arguments": vars(args) | {"output": str(args.output)}},
           label=f"{keras.backend.backend():<11} ", layers=plan.layer_rows())
    if args.output:  # the tuned variant's choices, to apply again (Plan.load)
        plan.save(args.output.with_name(args.output.stem + "-plan.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
