"""The paper's experiment in MXNet Gluon: a MobileNet V1 training step (forward, softmax
cross-entropy, backward, SGD with momentum; hybridized, NCHW) with native depthwise layers and with
the paper's 32 channels per block (and any other ``--block-size``), from the same weights, the
variants taking turns round by round. Each variant's first loss must equal native's (float32,
1e-4 relative) before it is timed. Then each distinct depthwise layer alone, forward+backward,
native against every block size worth measuring (:mod:`diagonalwise.algorithm_choice`: checked
against native first, timed in turns).

``python -m diagonalwise.mxnet.bench [--batch 16] [--size 224] [--repeats 3] [--block-size 8]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from ..algorithm_choice import TOLERANCES, measure_candidates
from ..blocking import candidate_block_sizes
from ..framework_bench import gated_training_rows, report
from . import DiagonalwiseConv2D

#: the largest block measured, in input channels
MAX_BLOCK_CHANNELS = 64
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


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
    return gated_training_rows(first, steps, {"batch": batch, "size": size}, warmup, repeats)


def _depthwise_layers(size: int) -> list[tuple[int, int, int]]:
    """MobileNet V1's distinct depthwise layers as (channels, input side, stride)."""
    layers, channels, side = [], 32, -(-size // 2)
    for out, stride in BLOCKS:
        layers.append((channels, side, stride))
        channels, side = out, -(-side // stride)
    return list(dict.fromkeys(layers))


def bench_layers(batch: int, size: int, repeats: int) -> list[dict]:
    """Per distinct MobileNet V1 depthwise layer: native and each block size worth measuring,
    forward+backward (hybridized, autograd), as rows of each algorithm's status and median
    milliseconds."""
    rng = np.random.default_rng(0)
    rows = []
    for channels, side, stride in _depthwise_layers(size):
        x = mx.nd.array(rng.standard_normal((batch, channels, side, side)))
        weight = mx.nd.array(rng.standard_normal((channels, 1, 3, 3)))
        cotangent = mx.nd.array(rng.standard_normal((batch, channels, -(-side // stride),
                                                     -(-side // stride))))

        def make_step(name, channels=channels, stride=stride, x=x, weight=weight,
                      cotangent=cotangent):
            options = dict(channels=channels, kernel_size=3, strides=stride, padding=1,
                           groups=channels, use_bias=False, in_channels=channels)
            layer = nn.Conv2D(**options) if name == "native" else DiagonalwiseConv2D(
                **options, block_size=int(name.partition(":")[2]))
            layer.initialize()
            layer.weight.set_data(weight)
            layer.hybridize()

            def run():
                inputs = x.copy()
                inputs.attach_grad()
                with autograd.record():
                    out = layer(inputs)
                out.backward(cotangent)
                mx.nd.waitall()
                return out, inputs.grad, layer.weight.grad()

            return run

        names = ["native"] + [f"block_diagonal:{b}" for b in candidate_block_sizes(
            channels, 1, max_block_channels=MAX_BLOCK_CHANNELS)]
        measured = measure_candidates(names, make_step, TOLERANCES["float32"], repeats)
        rows.append({"layer": f"dw {channels} {side}x{side} s{stride}", "batch": batch,
                     "status": {n: "ok" if isinstance(r, float) else r
                                for n, r in measured.items()},
                     "median_ms": {n: 1e3 * r for n, r in measured.items()
                                   if isinstance(r, float)}})
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
    report(rows, args.output, {"mxnet": mx.__version__,
                               "arguments": vars(args) | {"output": str(args.output)}},
           layers=bench_layers(args.batch, args.size, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
