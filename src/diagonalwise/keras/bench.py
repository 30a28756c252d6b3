"""The paper's experiment in Keras 3 on the backend in ``KERAS_BACKEND``: ``keras.applications``
MobileNet (V1) training steps (``train_on_batch``: forward, cross-entropy, backward, SGD with
momentum), native and with its depthwise layers converted (the paper's blocks, and each other
algorithm the backend runs), from the same weights, the variants taking turns round by round.
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


def _compiled(model: keras.Model) -> keras.Model:
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model


def bench_training(batch: int, size: int, repeats: int, warmup: int = 1) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, 1000, batch)
    keras.utils.set_random_seed(0)
    # no dropout: each converted copy would draw its own masks
    native = keras.applications.MobileNet(input_shape=(size, size, 3), weights=None, dropout=0.0)
    variants = {"native": None, "paper": {}}
    variants |= {name: {"algorithm": name} for name in ("shift_add",)
                 if keras.backend.backend() == "jax"}
    models = {name: _compiled(native if options is None else convert_model(native, **options))
              for name, options in variants.items()}
    first = {name: float(np.asarray(model.train_on_batch(x, labels)).reshape(-1)[0])
             for name, model in models.items()}  # compiles
    steps = {name: functools.partial(model.train_on_batch, x, labels)
             for name, model in models.items()}
    return gated_training_rows(first, steps, {"batch": batch, "size": size,
                                              "backend": keras.backend.backend()},
                               warmup, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diagonalwise.keras.bench",
                                     description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rows = bench_training(args.batch, args.size, args.repeats)
    report(rows, args.output, {"keras": keras.__version__, "backend": keras.backend.backend(),
                               "arguments": vars(args) | {"output": str(args.output)}},
           label=f"{keras.backend.backend():<11} ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
