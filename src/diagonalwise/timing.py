"""Timing and the machine line: medians after warm-up, CUDA events on GPUs, copy bandwidth."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic_files import write_json_atomic


@dataclass
class Timing:
    """Seconds per run of repeated measurements after warm-up."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range (max - min below four samples), in seconds."""
        if len(self.samples) < 4:
            return max(self.samples) - min(self.samples)
        quartiles = statistics.quantiles(self.samples, n=4)
        return quartiles[2] - quartiles[0]


#: How this process's CPU allocator was set up, for the provenance of timings.
cpu_allocator = "default"


def keep_freed_memory_in_process() -> str | None:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (mmap and trim
    thresholds of 1 GiB), as PyTorch's CUDA caching allocator does on GPUs. Without it, CPU timings
    depend on allocation history: one MobileNet V1 layer measured 38 ms or 13 ms forward+backward
    depending on what ran before it, from page faults on freshly mapped memory. Returns a
    description for the provenance, or None where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD in malloc.h
    if libc.mallopt(mmap_threshold, 1 << 30) != 1 or libc.mallopt(trim_threshold, 1 << 30) != 1:
        return None
    global cpu_allocator
    cpu_allocator = "glibc mallopt: mmap and trim thresholds 1 GiB"
    return cpu_allocator


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device | str, *, warmup: int = 2,
            repeats: int = 5) -> Timing:
    """Time ``fn()``: ``warmup`` untimed runs, then ``repeats`` timed ones. On CUDA each run is
    bracketed by events after a synchronisation; on the CPU by ``time.perf_counter``."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            start_time = time.perf_counter()
            fn()
            synchronize(device)
            samples.append(time.perf_counter() - start_time)
    return Timing(samples)


#: The rounds' orders in :func:`measure_interleaved`, drawn from one sequence per process.
_SHUFFLER = random.Random(0)


#: The most rounds :func:`measure_interleaved` adds to reach ``min_seconds``, per requested round.
MAX_ROUNDS_PER_REPEAT = 8


def measure_interleaved(fns: dict[str, Callable[[], object]], device: torch.device | str, *,
                        warmup: int = 2, repeats: int = 5,
                        min_seconds: float = 0.0) -> dict[str, Timing]:
    """Time several functions fairly: after ``warmup`` runs of each, ``repeats`` rounds that run
    each once, so drift in the machine's speed (other tenants, clocks, allocator state) falls on
    all of them alike instead of on whichever ran last. Each pair of rounds runs a shuffled order
    and then the same reversed, so that every function runs after different ones: the caches a
    function finds hold what ran before it, and a rotated order keeps each function's
    predecessor. On the CPU a light function that always ran after the heaviest lost:
    cpu_direct's step on a float32 channels_last 8x192x20x20 stride-2 layer measured 0.88x-0.97x
    native rotated among its 9 candidates, native always right after cpu_direct's small
    footprint, and 0.97x-1.20x shuffled (cpu_direct_notes.md). The shuffles come from one
    generator seeded once per process (the same orders for the same sequence of calls), not
    reseeded per call: reseeded, each place in the list met the same predecessors in every call,
    every layer and mode of a bench, and in an A/B of two kernels that alone moved a small
    layer's time by up to a fifth (v24 in cpu_direct_notes.md).

    After ``repeats`` rounds, more follow (up to :data:`MAX_ROUNDS_PER_REPEAT` x ``repeats``)
    until the timed runs add up to ``min_seconds``: five rounds of a small layer take a few
    milliseconds, and their median moved by a sixth from run to run (cpu_direct_notes.md,
    bench rounds)."""
    device = torch.device(device)
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    timings = {name: Timing() for name in names}
    order = names
    round_index, elapsed = 0, 0.0
    while round_index < repeats or (elapsed < min_seconds
                                    and round_index < MAX_ROUNDS_PER_REPEAT * repeats):
        order = _SHUFFLER.sample(names, len(names)) if round_index % 2 == 0 else order[::-1]
        for name in order:
            samples = measure(fns[name], device, warmup=0, repeats=1).samples
            timings[name].samples += samples
            elapsed += samples[0]
        round_index += 1
    return timings


#: The least confidence of :func:`speedup_interval`'s intervals.
SPEEDUP_CONFIDENCE = 0.9


def _round_ratios(reference: Timing, other: Timing) -> list[float]:
    """Each round's reference time over its other time, sorted: one round's two runs share the
    machine's state of the moment, which a ratio of the medians would not pair."""
    return sorted(r / o for r, o in zip(reference.samples, other.samples, strict=True))


def paired_speedup(reference: Timing, other: Timing) -> float:
    """The speedup of ``other`` over ``reference`` measured by :func:`measure_interleaved`: the
    median of the rounds' ratios."""
    return statistics.median(_round_ratios(reference, other))


def speedup_interval(reference: Timing, other: Timing) -> tuple[float, float] | None:
    """A distribution-free interval of at least :data:`SPEEDUP_CONFIDENCE` for
    :func:`paired_speedup`: of the rounds' sorted ratios, the order statistics k and n + 1 - k
    with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is still enough (11
    rounds: the 3rd and the 9th ratio, 93%). None below 5 rounds, where even the smallest and
    largest ratio cover less."""
    ratios = _round_ratios(reference, other)
    n = len(ratios)
    below, k = 0.0, 0  # below: P(Binomial(n, 1/2) < k + 1)
    while k < n // 2:
        below += math.comb(n, k) / 2**n
        if 1 - 2 * below < SPEEDUP_CONFIDENCE:
            break
        k += 1
    return (ratios[k - 1], ratios[n - k]) if k else None


def copy_bandwidth(device: torch.device | str, megabytes: int | None = None,
                   repeats: int = 10) -> float:
    """Achieved device-memory copy bandwidth in GB/s (bytes read + bytes written per second)."""
    device = torch.device(device)
    megabytes = megabytes or (1024 if device.type == "cuda" else 256)
    source = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    target = torch.empty_like(source)
    timing = measure(lambda: target.copy_(source), device, warmup=3, repeats=repeats)
    return 2 * source.numel() * 4 / timing.median / 1e9


#: How many earlier copy-bandwidth measurements per device make "the machine's usual".
BANDWIDTH_HISTORY = 20


def usual_copy_bandwidth(device: torch.device | str, measured: float) -> float:
    """The median copy bandwidth of this device's last :data:`BANDWIDTH_HISTORY` runs, this one
    included (kept in ``$DIAGONALWISE_CACHE_DIR`` or ``~/.cache/diagonalwise``), against which a
    busy run shows. The median, not the best: an idle VM here measured anywhere from 33 to 70
    GB/s from run to run, so half the best flagged quiet runs."""
    root = os.environ.get("DIAGONALWISE_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diagonalwise"
    path = Path(root) / "copy-bandwidth.json"
    name = device_name(device)
    try:
        known = json.loads(path.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    history = known.get(name)
    history = [v for v in history if isinstance(v, (int, float))] \
        if isinstance(history, list) else []
    history = (history + [measured])[-BANDWIDTH_HISTORY:]
    with contextlib.suppress(OSError):
        write_json_atomic(path, {**known, name: history})
    return statistics.median(history)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str) -> dict[str, str | int | None]:
    """Device, library versions and thread count: what a timing depends on."""
    device = torch.device(device)
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": cudnn,
        "threads": torch.get_num_threads(),
        "cpu_allocator": cpu_allocator,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def machine_line(env: dict) -> str:
    """One line naming the machine a table was measured on."""
    parts = [f"{env['device']}", f"torch {env['torch']}"]
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}, cuDNN {env['cudnn']}")
    else:
        parts.append(f"{env['threads']} threads")
    if env.get("copy_bandwidth_gbs"):
        parts.append(f"copy bandwidth {env['copy_bandwidth_gbs']:.1f} GB/s")
    return "machine: " + "; ".join(parts)
