"""Model-level benchmark: one full training iteration (forward, loss, backward, SGD step), as in
the paper, for the native model, the paper's fixed block size, and the autotuned model."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..conversion import convert
from ..layout import to_layout
from ..modules import is_converted
from ..timing import measure_interleaved, paired_speedup, speedup_interval
from ..tuning import TuningCache, check_correctness, collect_conv_calls, tune
from .registry import ModelSpec

VARIANTS = ("native", "paper", "tuned")

#: The model-level gate runs one step in float64: the converted model must match native to this
#: relative error (largest gradient error over the largest gradient, per parameter; see
#: :func:`model_gate` for gradients that are zero up to rounding).
MODEL_GATE_TOLERANCE = 1e-8


@dataclass
class ModelRow:
    model: str
    variant: str
    dtype: str
    layout: str
    batch: int
    size: int
    status: str
    median_ms: float | None = None
    spread_ms: float | None = None
    items_per_s: float | None = None
    #: the median of the rounds' native / variant ratios (timing.paired_speedup; in results
    #: measured before run amd-epyc-20261207j, the ratio of the median times)
    speedup: float | None = None
    #: an interval of at least 90% confidence for it (timing.speedup_interval)
    speedup_low: float | None = None
    speedup_high: float | None = None
    algorithms: str = ""


def autocast_context(device: torch.device, dtype: str):
    """Autocast to float16/bfloat16 as in mixed-precision training; nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def algorithm_summary(model: nn.Module) -> str:
    counts: dict[str, int] = {}
    for module in model.modules():
        if is_converted(module):
            counts[module.algorithm.name] = counts.get(module.algorithm.name, 0) + 1
    return ", ".join(f"{count}x {name}" for name, count in sorted(counts.items()))


def _gradients_in_float64(model: nn.Module, spec: ModelSpec, size: int, device: torch.device):
    model = copy.deepcopy(model).double().train()
    x, y = spec.make_batch(2, size, device, seed=1)
    torch.manual_seed(0)  # the same dropout and stochastic-depth masks for every variant
    spec.loss(model(x.double()), y).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def model_gate(variant: nn.Module, native: nn.Module, spec: ModelSpec, size: int,
               device: torch.device, example: torch.Tensor, dtype: str) -> str | None:
    """None if ``variant`` trains like ``native``: one float64 step gives the same gradients, and
    each converted layer's algorithm passes the per-layer gate at ``dtype``."""
    expected = _gradients_in_float64(native, spec, size, device)
    actual = _gradients_in_float64(variant, spec, size, device)
    largest = max(want.abs().max().item() for want in expected.values())
    for name, want in expected.items():
        # A parameter whose gradient is mathematically zero (a bias followed by batch norm) holds
        # only rounding noise; it is measured against a thousandth of the largest gradient.
        scale = max(want.abs().max().item(), 1e-3 * largest) or 1.0
        error = (actual[name] - want).abs().max().item() / scale
        if not error <= MODEL_GATE_TOLERANCE:
            return f"float64 gradient of {name} off by {error:.1e} (relative)"
    modules = dict(variant.named_modules())
    with autocast_context(device, dtype):
        calls = collect_conv_calls(variant, (example,))
    checked: set[tuple[str, str]] = set()
    for name, call in calls.items():
        algorithm = modules[name].algorithm
        if (call.key(), algorithm.name) in checked:
            continue
        checked.add((call.key(), algorithm.name))
        reason = check_correctness(call, algorithm, device)
        if reason is not None:
            return f"layer {name} ({algorithm.name}): {reason}"
    return None


def bench_training(spec: ModelSpec, device: torch.device, *, dtype: str = "float32",
                   layout: str = "contiguous", batch: int, size: int, warmup: int = 2,
                   repeats: int = 5, cache: TuningCache | bool = True,
                   variants: tuple[str, ...] = VARIANTS, log=print) -> list[ModelRow]:
    """Time a training iteration of each variant built from the same initial weights."""
    torch.manual_seed(0)
    native = spec.build().to(device)
    x, y = spec.make_batch(batch, size, device)
    x = to_layout(x, layout)
    rows: list[ModelRow] = []
    steps = {}
    for variant_name in variants:
        model = copy.deepcopy(native)
        if variant_name == "paper":
            model = convert(model)  # the paper's 32 channels per block, per layer
        elif variant_name == "tuned":
            # tuned in the layout it is measured in: the layout is part of every choice
            model = to_layout(convert(model, algorithm="native"), layout)
            with autocast_context(device, dtype):
                tune(model, (x,), cache=cache, progress=True)
        model = to_layout(model, layout).train()
        base = dict(model=spec.name, variant=variant_name, dtype=dtype, layout=layout, batch=batch,
                    size=size, algorithms=algorithm_summary(model))
        if variant_name != "native":
            reason = model_gate(model, native, spec, min(size, 64), device, x, dtype)
            if reason is not None:
                rows.append(ModelRow(**base, status=f"failed correctness: {reason}"))
                log(f"  {variant_name}: FAILED correctness, not timed: {reason}")
                continue
        rows.append(ModelRow(**base, status="ok"))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, dtype):
                loss = spec.loss(model(x), y)
            loss.backward()
            optimizer.step()

        steps[variant_name] = step
    # the variants take turns, so a slower or faster spell of the machine falls on all of them
    timings = measure_interleaved(steps, device, warmup=warmup, repeats=repeats)
    reference = timings.get("native") or next(iter(timings.values()), None)
    for row in rows:
        if row.variant in timings:
            timing = timings[row.variant]
            row.median_ms, row.spread_ms = timing.median * 1e3, timing.spread * 1e3
            row.items_per_s = batch / timing.median
            if timing is reference:
                row.speedup = 1.0
            else:  # paired by round, as its interval
                row.speedup = paired_speedup(reference, timing)
                interval = speedup_interval(reference, timing)
                row.speedup_low, row.speedup_high = interval if interval else (None, None)
    return rows
