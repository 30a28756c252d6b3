"""Layer-level benchmark: every algorithm on every distinct grouped convolution of a model.

Forward, backward and forward+backward ("step") are timed separately for each candidate that
passes the correctness gate, the candidates interleaved round by round (see
:func:`diagonalwise.timing.measure_interleaved`), with speedup over native, FLOP/s and
achieved GB/s against the copy bandwidth measured in the same run. A candidate that fails the gate
gets a row with its reason and no time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..algorithms import Algorithm, candidate_algorithms
from ..call import ConvCall
from ..timing import measure_interleaved
from ..tuning import check_correctness

MODES = ("forward", "backward", "step")


@dataclass
class LayerRow:
    model: str
    layer: str
    count: int
    key: str
    input_shape: str
    weight_shape: str
    stride: str
    groups: int
    dtype: str
    layout: str
    algorithm: str
    mode: str
    status: str
    median_ms: float | None = None
    spread_ms: float | None = None
    speedup: float | None = None
    gflops: float | None = None
    gbs: float | None = None
    copy_fraction: float | None = None


def step_functions(call: ConvCall, algorithm: Algorithm, device: torch.device):
    """Closures running forward, backward (of one retained forward) and forward+backward."""
    x, weight, bias, grad_output = call.make_operands(device)
    inputs = [t.requires_grad_() for t in (x, weight, bias) if t is not None]

    def forward():
        return call.run(algorithm, x, weight, bias)

    output = forward()
    return {
        "forward": forward,
        "backward": lambda: torch.autograd.grad(output, inputs, grad_output, retain_graph=True),
        "step": lambda: torch.autograd.grad(forward(), inputs, grad_output),
    }


def bench_layer_calls(model_name: str, calls: dict[str, ConvCall], device: torch.device, *,
                      copy_gbs: float, warmup: int = 2, repeats: int = 5,
                      min_seconds: float = 0.0, every_divisor: bool = False,
                      max_block_channels: int = 256, progress=None) -> list[LayerRow]:
    """Benchmark each distinct call of ``calls`` (qualified name -> call) with every algorithm."""
    names_by_key: dict[str, list[str]] = {}
    for name, call in calls.items():
        names_by_key.setdefault(call.key(), []).append(name)
    rows: list[LayerRow] = []
    for key, names in names_by_key.items():
        call = calls[names[0]]
        base = dict(model=model_name, layer=names[0], count=len(names), key=key,
                    input_shape="x".join(map(str, call.input_shape)),
                    weight_shape="x".join(map(str, call.weight_shape)),
                    stride="x".join(map(str, call.stride)), groups=call.groups, dtype=call.dtype,
                    layout=call.layout)
        functions: dict[str, dict] = {}
        for algorithm in candidate_algorithms(call, device, every_divisor=every_divisor,
                                              max_block_channels=max_block_channels):
            reason = check_correctness(call, algorithm, device)
            if reason is not None:
                rows += [LayerRow(**base, algorithm=algorithm.name, mode=mode,
                                  status=f"failed correctness: {reason}") for mode in MODES]
            else:
                functions[algorithm.name] = step_functions(call, algorithm, device)
        for mode in MODES:
            timings = measure_interleaved({name: fns[mode] for name, fns in functions.items()},
                                          device, warmup=warmup, repeats=repeats,
                                          min_seconds=min_seconds)
            flops = call.flops() * {"forward": 1, "backward": 2, "step": 3}[mode]
            for name, timing in timings.items():
                gbs = call.bytes_moved(mode) / timing.median / 1e9
                rows.append(LayerRow(
                    **base, algorithm=name, mode=mode, status="ok",
                    median_ms=timing.median * 1e3, spread_ms=timing.spread * 1e3,
                    speedup=timings["native"].median / timing.median,
                    gflops=flops / timing.median / 1e9, gbs=gbs, copy_fraction=gbs / copy_gbs))
        if progress is not None:
            progress.update(1)
    return rows
