"""The paper's experiment in MXNet Gluon: a MobileNet V1 training step (forward, softmax
cross-entropy, backward, SGD with momentum; hybridized, NCHW) with native depthwise layers and with
the paper's 32 channels per block (and any other ``--block-size``), from the same weights, the
variants taking turns round by round. Each variant's first loss must equal native's (float32,
1e-4 relative) before it is timed.

``python -m diagonalwise.mxnet.bench [--batch 16] [--size 224] [--repeats 3] [--block-size 8]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from . import DiagonalwiseConv2D

BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
LOSS_TOLERANCE = 1e-4


def mobilenet_v1(block_size: int | None, native: bool, classes: int = 1000) -> nn.HybridBlock:
    """MobileNet V1 whose depthwise layers are ``gluon.nn.Conv2D`` (``native``) or
    ``DiagonalwiseConv2D`` with ``block_size``."""
    net = nn.HybridSequential()

    def conv_bn_relu(layer):
        net.add(layer, nn.BatchNorm(), nn.Activation("relu"))

    conv_bn_relu(nn.Conv2D(32, 3, 2, 1, use_bias=False, in_channels=3))
    channels = 32
    for out, stride in BLOCKS:
        options = dict(channels=channels, kernel_size=3, strides=stride, padding=1,
                       groups=channels, use_bias=False, in_channels=channels)
        conv_bn_relu(nn.Conv2D(**options) if native else
                     DiagonalwiseConv2D(**options, block_size=block_size))
        conv_bn_relu(nn.Conv2D(out, 1, use_bias=False, in_channels=channels))
        channels = out
    net.add(nn.GlobalAvgPool2D(), nn.Flatten(), nn.Dense(classes, in_units=channels))
    return net


def bench_training(batch: int, size: int, repeats: int, block_sizes: tuple[int, ...] = (),
                   warmup: int = 1) -> list[dict]:
    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.standard_normal((batch, 3, size, size)))
    labels = mx.nd.array(rng.integers(0, 1000, batch))
    variants = {"native": (None, True), "paper": (None, False)}
    variants |= {f"block_diagonal:{b}": (b, False) for b in block_sizes}
    loss_function = gluon.loss.SoftmaxCrossEntropyLoss()
    steps, first = {}, {}
    for name, (block_size, native) in variants.items():
        mx.random.seed(0)
        net = mobilenet_v1(block_size, native)
        net.initialize(mx.init.Xavier())
        net.hybridize()
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01,
                                                               "momentum": 0.9})

        def step(net=net, trainer=trainer):
            with autograd.record():
                loss = loss_function(net(x), labels).mean()
            loss.backward()
            trainer.step(1)
            return loss.asscalar()

        steps[name], first[name] = step, step()
    rows, times = [], {}
    for name in steps:
        error = abs(first[name] - first["native"]) / abs(first["native"])
        status = "ok" if error <= LOSS_TOLERANCE else f"failed: first loss off by {error:.1e}"
        rows.append({"variant": name, "status": status, "batch": batch, "size": size})
        if status == "ok":
            times[name] = []
    for round_index in range(warmup + repeats):
        for name in times:
            start = time.perf_counter()
            steps[name]()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    for row in rows:
        if times.get(row["variant"]):
            row["median_ms"] = 1e3 * statistics.median(times[row["variant"]])
            row["speedup"] = statistics.median(times["native"]) / statistics.median(
                times[row["variant"]])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diagonalwise.mxnet.bench",
                                     description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, action="append", default=[])
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rows = bench_training(args.batch, args.size, args.repeats, tuple(args.block_size))
    for row in rows:
        timing = f"{row['median_ms']:9.1f} ms  {row['speedup']:5.2f}x" if "median_ms" in row else ""
        print(f"{row['variant']:<18} {row['status']:<4} {timing}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(
            {"provenance": {"mxnet": mx.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "arguments": vars(args) | {"output": str(args.output)}},
             "training_step": rows}, indent=1) + "\n")
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
