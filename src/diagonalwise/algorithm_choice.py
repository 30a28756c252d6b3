"""Choosing an algorithm per layer by measurement, for the front ends other than PyTorch (JAX/Flax,
Keras), with no framework: each candidate's forward+backward is checked against native's before it
is timed, the survivors are timed in turns with clear losses dropped early, and the fastest is
chosen only if it beats native by a margin. Choices persist in a JSON cache per environment, and a
tuned model's choices are a :class:`Plan` (layer name -> algorithm) that is saved and applied."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic_files import PlanFile, write_json_atomic
from .framework_bench import time_in_turns

#: largest error over largest value, of the output and every gradient, against native
TOLERANCES = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 3e-2, "float16": 3e-2}
#: a candidate this many times slower than the fastest after one timed run is not timed again
CLEAR_LOSS = 2.0
CACHE_FORMAT = 1
PLAN_FORMAT = 1


def relative_error(got, want) -> float:
    """Largest absolute difference over the largest absolute value of ``want``."""
    # MXNet's NDArray does not convert through np.asarray
    got, want = (np.asarray(a.asnumpy() if hasattr(a, "asnumpy") else a, np.float64)
                 for a in (got, want))
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def measure_candidates(names: Sequence[str], make_step: Callable[[str], Callable[[], Sequence]],
                       tolerance: float, repeats: int = 3) -> dict[str, float | str]:
    """Seconds per run (median of ``repeats``) of ``make_step(name)()``, which runs one
    forward+backward by ``name`` and returns (output, *gradients) once computed, for each name
    whose results match the first name's (native) within ``tolerance``; for the others, why not.
    The checking run and one more warm each candidate up (PyTorch's second run was still 20%
    slower than its fifth here); then one timed run each, and more, in turns, for the first name
    and for those within ``CLEAR_LOSS`` of the fastest. ``block_diagonal:<b>`` names go from the
    largest block down and stop at the first clear loss: with fewer channels per block a grouped
    convolution only gets slower (seen in XLA: 0.19 s at 64 channels, 24 s at 2, on one layer)."""
    blocks = sorted((name for name in names if name.startswith("block_diagonal:")),
                    key=lambda name: int(name.partition(":")[2]), reverse=True)
    results: dict[str, float | str] = {}
    steps, times = {}, {}
    reference, blocks_lost = None, False
    for name in [name for name in names if name not in blocks] + blocks:
        if blocks_lost:
            results[name] = "not measured: a larger block was already a clear loss"
            continue
        step = make_step(name)
        got = step()
        if reference is None:
            reference = got
        error = max(relative_error(a, b) for a, b in zip(got, reference))
        if error > tolerance:
            results[name] = f"failed correctness: relative error {error:.1e}"
            continue
        step()
        start = time.perf_counter()
        step()
        steps[name], times[name] = step, [time.perf_counter() - start]
        blocks_lost = name in blocks and \
            times[name][0] > CLEAR_LOSS * min(seconds[0] for seconds in times.values())
    fastest = min(seconds[0] for seconds in times.values())
    for _ in range(repeats - 1):
        for name, step in steps.items():
            if name == names[0] or times[name][0] <= CLEAR_LOSS * fastest:
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    results.update({name: statistics.median(seconds) for name, seconds in times.items()})
    return results


def choose(measured: dict[str, float | str], min_gain: float = 0.05) -> str:
    """The fastest timed algorithm, if it beats native by ``min_gain``; else native."""
    timed = {name: seconds for name, seconds in measured.items() if isinstance(seconds, float)}
    best = min(timed, key=timed.get)
    return best if timed[best] * (1 + min_gain) <= timed["native"] else "native"


def code_fingerprint(*files: str | os.PathLike) -> str:
    """A short hash of source files: a cache's choices were measured with this code, and a
    changed algorithm is measured anew."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:12]


def default_cache_path(file_name: str) -> Path:
    """``$DIAGONALWISE_CACHE_DIR/file_name``, else ``~/.cache/diagonalwise/file_name``."""
    root = os.environ.get("DIAGONALWISE_CACHE_DIR") or Path.home() / ".cache" / "diagonalwise"
    return Path(root) / file_name


class ChoiceCache:
    """Measured choices per configuration key, in a JSON file with one section per
    ``environment`` (framework version, backend, device): a choice made elsewhere is not used."""

    def __init__(self, path: str | os.PathLike, environment: str):
        self.path, self.environment = Path(path), environment
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: measured afresh and rewritten
            data = None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            data = {"format": CACHE_FORMAT, "environments": {}}
        self.data = data

    def _section(self) -> dict:
        return self.data["environments"].setdefault(self.environment, {})

    def get(self, key: str, candidates: Sequence[str]) -> str | None:
        """The cached choice for ``key`` if it is still one of ``candidates``."""
        entry = self._section().get(key)
        if isinstance(entry, dict) and entry.get("algorithm") in candidates:
            return entry["algorithm"]
        return None

    def measurements(self, key: str) -> dict:
        """What was measured when ``key``'s choice was made ({} if nothing is cached)."""
        entry = self._section().get(key)
        return entry.get("measured", {}) if isinstance(entry, dict) else {}

    def put(self, key: str, algorithm: str, measured: dict) -> None:
        self._section()[key] = {"algorithm": algorithm, "measured": measured}
        write_json_atomic(self.path, self.data)


@dataclass
class Plan(PlanFile):
    """Per layer (a Flax module path, a Keras layer name), the algorithm chosen for it; the
    whole-model check (seconds tuned and native, and whether the choices were kept); and, for the
    first layer of each distinct configuration, its input shape and what was measured for it
    (seconds per forward+backward, or why not), as a per-layer table shows them."""

    layers: dict[str, str] = field(default_factory=dict)
    whole_model: dict = field(default_factory=dict)
    measured: dict[str, dict] = field(default_factory=dict)

    def layer_rows(self) -> list[dict]:
        """One row per measured layer: its name and input, each algorithm's status and median
        milliseconds, and the choice."""
        rows = []
        for name, entry in self.measured.items():
            results = entry.get("algorithms", {})
            rows.append({"layer": f"{name} {tuple(entry.get('input', ()))}",
                         "chosen": self.layers.get(name),
                         "status": {a: "ok" if isinstance(r, float) else r
                                    for a, r in results.items()},
                         "median_ms": {a: 1e3 * r for a, r in results.items()
                                       if isinstance(r, float)}})
        return rows

    def summary(self) -> str:
        """How many layers chose each algorithm, e.g. ``13x shift_add``."""
        counts: dict[str, int] = {}
        for algorithm in self.layers.values():
            counts[algorithm] = counts.get(algorithm, 0) + 1
        return ", ".join(f"{n}x {a}" for a, n in sorted(counts.items()))

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "layers": self.layers, "whole_model": self.whole_model,
                "measured": self.measured}

    @classmethod
    def from_dict(cls, data: object) -> Plan:
        """The plan in ``data``; a ValueError saying what is wrong if it is not one."""
        layers = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or \
                not isinstance(layers, dict) or \
                not all(isinstance(value, str) for value in layers.values()):
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a diagonalwise plan (format {found!r}, expected {PLAN_FORMAT} "
                             "with a 'layers' mapping of names to algorithms); write one with "
                             "Plan.save")
        return cls(dict(layers), data.get("whole_model", {}), data.get("measured", {}))


def check_whole_model(native_step: Callable[[], object], tuned_step: Callable[[], object],
                      repeats: int = 3) -> dict:
    """The whole model's forward+backward timed with native everywhere and with the per-layer
    choices, in turns after one warm-up round: {"native_seconds", "tuned_seconds", "kept"}, kept
    when tuned is faster. Layers that each win can still lose together (a layout change between
    them, a fusion XLA no longer makes), so a plan is kept only on this evidence."""
    times = time_in_turns({"native": native_step, "tuned": tuned_step}, warmup=1,
                          repeats=repeats)
    native, tuned = statistics.median(times["native"]), statistics.median(times["tuned"])
    return {"native_seconds": native, "tuned_seconds": tuned, "kept": tuned < native}
