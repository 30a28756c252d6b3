"""``diagonalwise bench --framework NAME``: the paper's MobileNet V1 experiment in another
framework, run in that framework's environment (``make bench-frameworks`` knows which). It imports
no PyTorch (but for ``keras-torch``), so the command works where only JAX, TensorFlow or MXNet is
installed. The files land in ``--output``, where ``diagonalwise report`` finds them:

- ``jax``: ``layers.json`` (every algorithm per depthwise layer) and ``training_step.json``
  (Flax NNX: native, the paper's blocks, shift_add, tuned);
- ``keras-jax``, ``keras-tf``, ``keras-torch``: ``<backend>.json`` (keras.applications MobileNet);
- ``mxnet``: ``training_step.json`` (Gluon: native, the paper's blocks, 8 and 16 per block).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

FRAMEWORKS = ("torch", "jax", "keras-jax", "keras-tf", "keras-torch", "mxnet")
KERAS_BACKENDS = {"keras-jax": "jax", "keras-tf": "tensorflow", "keras-torch": "torch"}


def wants_framework(argv: list[str]) -> bool:
    """Whether ``argv`` is ``bench ... --framework NAME`` for a framework other than PyTorch."""
    if not argv or argv[0] != "bench":
        return False
    for index, word in enumerate(argv):
        if word.startswith("--framework="):
            return word.split("=", 1)[1] != "torch"
        if word == "--framework" and index + 1 < len(argv):
            return argv[index + 1] != "torch"
    return False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diagonalwise bench", description=__doc__)
    # torch is the ordinary `diagonalwise bench` (diagonalwise.cli), with its own options
    parser.add_argument("--framework", choices=FRAMEWORKS[1:], required=True)
    parser.add_argument("--output", type=Path, required=True, help="directory for the JSON files")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv[1:])
    common = ["--batch", str(args.batch_size), "--size", str(args.size), "--repeats",
              str(args.repeats)]
    try:
        if args.framework == "jax":
            from .flax import bench as flax_bench
            from .jax import bench as jax_bench

            jax_bench.main([*common, "--output", str(args.output / "layers.json")])
            return flax_bench.main([*common, "--output", str(args.output / "training_step.json")])
        if args.framework in KERAS_BACKENDS:
            backend = KERAS_BACKENDS[args.framework]
            if "keras" in sys.modules and os.environ.get("KERAS_BACKEND", backend) != backend:
                raise SystemExit(f"diagonalwise bench: error: Keras is already loaded with "
                                 f"another backend; run --framework {args.framework} alone")
            os.environ["KERAS_BACKEND"] = backend  # read when Keras is first imported
            from .keras import bench as keras_bench

            return keras_bench.main([*common, "--output", str(args.output / f"{backend}.json")])
        from .mxnet import bench as mxnet_bench

        return mxnet_bench.main([*common, "--block-size", "8", "--block-size", "16", "--output",
                                 str(args.output / "training_step.json")])
    except ModuleNotFoundError as error:
        print(f"diagonalwise bench: error: --framework {args.framework} needs {error.name}, "
              "which this environment lacks; run it in that framework's environment (make "
              "bench-frameworks knows which)", file=sys.stderr)
        return 2
