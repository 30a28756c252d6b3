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

from ..framework_bench import gated_training_rows, report
from . import convert_model
from .tuning import TuningCache, tune_model


def _compiled(model: keras.Model) -> keras.Model:
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model


def bench_training(batch: int, size: int, repeats: int, warmup: int = 1,
                   cache: TuningCache | bool = True) -> list[dict]:
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
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diagonalwise.keras.bench",
                                     description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    # measured afresh into a cache beside the results, unless none is written
    cache = TuningCache(args.output.with_name(args.output.stem + "-tuning-cache.json")) \
        if args.output else True
    rows = bench_training(args.batch, args.size, args.repeats, cache=cache)
    report(rows, args.output, {"keras": keras.__version__, "backend": keras.backend.backend(),
                               "arguments": vars(args) | {"output": str(args.output)}},
           label=f"{keras.backend.backend():<11} ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
