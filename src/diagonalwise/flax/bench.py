"""The paper's experiment in Flax NNX: a MobileNet V1 training step (forward, cross-entropy,
backward, SGD with momentum, under ``nnx.jit``) with its depthwise layers computed natively, by the
paper's refactorization, by shift-and-add and as tuned (:func:`diagonalwise.flax.tuning.tune_model`),
from the same initial weights, the variants taking
turns round by round. Each variant's first loss must equal native's (float32, 1e-4 relative)
before it is timed.

``python -m diagonalwise.flax.bench [--batch 16] [--size 224] [--width 1.0] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..algorithm_choice import Plan
from ..framework_bench import gated_training_rows, report
from ..jax.tuning import TuningCache
from . import DiagonalwiseConv
from .tuning import tune_model

#: (output channels, stride) of MobileNet V1's 13 depthwise-separable blocks
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nnx.Module):
    """MobileNet V1 (NHWC) whose depthwise layers run ``depthwise_algorithm`` (None: the paper's
    block size; see :func:`diagonalwise.jax.available_algorithms`)."""

    def __init__(self, depthwise_algorithm: str | None, *, width: float = 1.0,
                 classes: int = 1000, rngs: nnx.Rngs):
        def scaled(channels: int) -> int:
            return max(8, int(channels * width))

        def conv_bn(conv):
            return [conv, nnx.BatchNorm(conv.out_features, rngs=rngs)]

        channels = scaled(32)
        layers = conv_bn(nnx.Conv(3, channels, (3, 3), strides=2, padding=((1, 1), (1, 1)),
                                  use_bias=False, rngs=rngs))
        for out, stride in BLOCKS:
            layers += conv_bn(DiagonalwiseConv(
                channels, channels, (3, 3), strides=stride, padding=((1, 1), (1, 1)),
                feature_group_count=channels, use_bias=False, rngs=rngs,
                algorithm=depthwise_algorithm))
            layers += conv_bn(nnx.Conv(channels, scaled(out), (1, 1), use_bias=False, rngs=rngs))
            channels = scaled(out)
        self.layers = nnx.List(layers)
        self.head = nnx.Linear(channels, classes, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for conv, norm in zip(self.layers[::2], self.layers[1::2]):
            x = nnx.relu(norm(conv(x)))
        return self.head(x.mean(axis=(1, 2)))


@nnx.jit
def train_step(model: MobileNetV1, optimizer: nnx.Optimizer, x: jnp.ndarray,
               labels: jnp.ndarray) -> jnp.ndarray:
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def bench_training(batch: int, size: int, width: float, repeats: int, warmup: int = 1,
                   classes: int = 1000,
                   cache: TuningCache | bool = True) -> tuple[list[dict], Plan]:
    """The rows of each variant, and the plan the tuned variant runs."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, classes, batch))
    variants = {"native": "native", "paper": None, "shift_add": "shift_add", "tuned": "native"}
    first, steps, depthwise = {}, {}, {}
    for name, algorithm in variants.items():
        model = MobileNetV1(algorithm, width=width, classes=classes, rngs=nnx.Rngs(0))
        depthwise[name] = algorithm or "block_diagonal (the paper's 32 channels)"
        if name == "tuned":
            plan = tune_model(model, x, cache=cache, log=lambda message: None)
            depthwise[name] = plan.summary()
        optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
        first[name] = float(train_step(model, optimizer, x, labels))  # compiles
        steps[name] = functools.partial(
            lambda m, o: jax.block_until_ready(train_step(m, o, x, labels)), model, optimizer)
    rows = gated_training_rows(first, steps, {"batch": batch, "size": size, "width": width},
                               warmup, repeats)
    for row in rows:
        row["depthwise"] = depthwise[row["variant"]]
    return rows, plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diagonalwise.flax.bench", description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    # measured afresh into a cache beside the results, unless none is written
    cache = TuningCache(args.output.with_name(args.output.stem + "-tuning-cache.json")) \
        if args.output else True
    rows, plan = bench_training(args.batch, args.size, args.width, args.repeats, cache=cache)
    report(rows, args.output, {"jax": jax.__version__, "backend": jax.default_backend(),
                               "arguments": vars(args) | {"output": str(args.output)}},
           layers=plan.layer_rows())
    if args.output:  # the tuned variant's choices, to apply again (Plan.load)
        plan.save(args.output.with_name(args.output.stem + "-plan.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
