"""Per-layer benchmark of the JAX algorithms on the paper's MobileNet V1 depthwise layers:
forward+backward under ``jit`` (NHWC, float32), each algorithm checked against native first and
timed only if it passes, the algorithms taking turns round by round.

``python -m diagonalwise.jax.bench [--batch 16] [--size 224] [--repeats 3] [--output FILE.json]``
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..algorithm_choice import TOLERANCES, relative_error
from ..blocking import resolve_block_size
from ..framework_bench import time_in_turns
from . import grouped_conv_general_dilated

#: MobileNet V1's depthwise layers as (channels, input side at 224, stride), distinct ones only
MOBILENET_V1_DEPTHWISE = [(32, 112, 1), (64, 112, 2), (128, 56, 1), (128, 56, 2), (256, 28, 1),
                          (256, 28, 2), (512, 14, 1), (512, 14, 2), (1024, 7, 1)]
SPEC = ("NHWC", "HWIO", "NHWC")
#: float32 forward and gradients against native: largest error over largest value
TOLERANCE = TOLERANCES["float32"]


def _step(algorithm: str | None, stride: int):
    """jit of (output, input gradient, kernel gradient) for a fixed output cotangent."""
    def loss(x, kernel, cotangent):
        if algorithm is None:
            out = lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                           dimension_numbers=SPEC,
                                           feature_group_count=x.shape[-1])
        else:
            out = grouped_conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                               dimension_numbers=SPEC,
                                               feature_group_count=x.shape[-1],
                                               algorithm=algorithm)
        return jnp.vdot(out, cotangent), out

    return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))


def bench_layer(channels: int, side: int, stride: int, batch: int, repeats: int,
                warmup: int = 1) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, channels)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, channels)), jnp.float32)
    out_side = -(-side // stride)
    cotangent = jnp.asarray(rng.standard_normal((batch, out_side, out_side, channels)),
                            jnp.float32)
    block = resolve_block_size(None, channels, 1)
    names = {"native": None, f"block_diagonal:{block}": f"block_diagonal:{block}",
             "shift_add": "shift_add"}
    steps = {name: _step(algorithm, stride) for name, algorithm in names.items()}
    (_, want), want_grads = steps["native"](x, kernel, cotangent)
    row = {"layer": f"dw {channels} {side}x{side} s{stride}", "batch": batch, "status": {},
           "median_ms": {}, "spread_ms": {}}
    passed = {}
    for name, step in steps.items():
        (_, got), got_grads = step(x, kernel, cotangent)
        error = max(relative_error(a, b) for a, b in zip((got, *got_grads), (want, *want_grads)))
        row["status"][name] = "ok" if error <= TOLERANCE else f"failed: relative error {error:.1e}"
        if error <= TOLERANCE:
            passed[name] = functools.partial(
                lambda step: jax.block_until_ready(step(x, kernel, cotangent)), step)
    for name, times in time_in_turns(passed, warmup, repeats).items():
        row["median_ms"][name] = 1e3 * statistics.median(times)
        quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        row["spread_ms"][name] = 1e3 * (quartiles[2] - quartiles[0])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diagonalwise.jax.bench", description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="MobileNet V1 input side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for channels, side, stride in MOBILENET_V1_DEPTHWISE:
        side = max(1, side * args.size // 224)
        rows.append(bench_layer(channels, side, stride, args.batch, args.repeats))
        row = rows[-1]
        native = row["median_ms"].get("native")
        cells = [f"{name} {ms:8.1f} ms ({native / ms:5.1f}x)" for name, ms in row["median_ms"].items()]
        print(f"{row['layer']:<22} " + "  ".join(cells), flush=True)
    result = {"provenance": {"jax": jax.__version__, "backend": jax.default_backend(),
                             "devices": [str(d) for d in jax.devices()],
                             "machine": platform.processor() or platform.machine(),
                             "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "arguments": vars(args) | {"output": str(args.output)}},
              "layers": rows}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
