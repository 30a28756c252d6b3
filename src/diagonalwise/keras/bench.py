"""The paper's experiment in Keras 3 on the backend in ``KERAS_BACKEND``: ``keras.applications``
MobileNet (V1) training steps (``train_on_batch``: forward, cross-entropy, backward, SGD with
momentum), native and with its depthwise layers converted (the paper's blocks, and each other
algorithm the backend runs), from the same weights, the variants taking turns round by round.
Each variant's first loss must equal native's (float32, 1e-4 relative) before it is timed.

``KERAS_BACKEND=jax python -m diagonalwise.keras.bench [--batch 16] [--size 224] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import keras
import numpy as np

from . import convert_model

LOSS_TOLERANCE = 1e-4


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
    rows, times = [], {}
    for name in models:
        error = abs(first[name] - first["native"]) / abs(first["native"])
        status = "ok" if error <= LOSS_TOLERANCE else f"failed: first loss off by {error:.1e}"
        rows.append({"variant": name, "status": status, "batch": batch, "size": size,
                     "backend": keras.backend.backend()})
        if status == "ok":
            times[name] = []
    for round_index in range(warmup + repeats):
        for name in times:
            start = time.perf_counter()
            models[name].train_on_batch(x, labels)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    for row in rows:
        if times.get(row["variant"]):
            row["median_ms"] = 1e3 * statistics.median(times[row["variant"]])
            row["speedup"] = statistics.median(times["native"]) / statistics.median(
                times[row["variant"]])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diagonalwise.keras.bench",
                                     description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rows = bench_training(args.batch, args.size, args.repeats)
    for row in rows:
        timing = f"{row['median_ms']:9.1f} ms  {row['speedup']:5.2f}x" if "median_ms" in row else ""
        print(f"{row['backend']:<11} {row['variant']:<10} {row['status']:<4} {timing}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(
            {"provenance": {"keras": keras.__version__, "backend": keras.backend.backend(),
                            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "arguments": vars(args) | {"output": str(args.output)}},
             "training_step": rows}, indent=1) + "\n")
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
