"""What the training-step benchmarks of the other frameworks (JAX/Flax, Keras, MXNet) share, with
no framework: each variant's first loss checked against native's before anything is timed, the
variants timed in turns round by round (a slow spell of the machine falls on all of them), and
the rows printed and written as JSON."""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from .source_commit import git_commit

#: float32 training losses of a whole network, first step: largest relative gap to native
LOSS_TOLERANCE = 1e-4


def time_in_turns(steps: dict[str, Callable[[], object]], warmup: int = 1,
                  repeats: int = 3) -> dict[str, list[float]]:
    """Seconds of each ``steps[name]()`` (which must return when its work is done), the names
    taking turns; ``warmup`` rounds are not kept."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def gated_training_rows(first_losses: dict[str, float], steps: dict[str, Callable[[], object]],
                        common: dict, warmup: int = 1, repeats: int = 3) -> list[dict]:
    """One row per variant: its status against native's first loss and, if it passed, its median
    step time and speedup over native."""
    reference = first_losses["native"]
    rows, passed = [], {}
    for name, loss in first_losses.items():
        error = abs(loss - reference) / abs(reference)
        status = "ok" if error <= LOSS_TOLERANCE else f"failed: first loss off by {error:.1e}"
        rows.append({"variant": name, "status": status, **common})
        if status == "ok":
            passed[name] = steps[name]
    times = time_in_turns(passed, warmup, repeats)
    for row in rows:
        if row["variant"] in times:
            row["median_ms"] = 1e3 * statistics.median(times[row["variant"]])
            row["min_ms"], row["max_ms"] = (1e3 * min(times[row["variant"]]),
                                            1e3 * max(times[row["variant"]]))
            row["speedup"] = statistics.median(times["native"]) / statistics.median(
                times[row["variant"]])
    return rows


def report(rows: list[dict], output: Path | None, provenance: dict, label: str = "",
           layers: list[dict] | None = None) -> None:
    """Print one line per row; with ``output``, write the rows, their provenance and ``layers``
    (per depthwise layer: each algorithm's status and median milliseconds forward+backward, as
    ``Plan.layer_rows`` gives them) as JSON, and the rows as CSV beside it."""
    for row in rows:
        timing = f"{row['median_ms']:9.1f} ms  {row['speedup']:5.2f}x" if "median_ms" in row else ""
        print(f"{label}{row['variant']:<18} {row['status']:<4} {timing}")
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"provenance": {**provenance, "git_commit": git_commit(),
                                                     "date": time.strftime("%Y-%m-%d %H:%M:%S")},
                                      "training_step": rows, "layers": layers or []},
                                     indent=1) + "\n")
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(output.with_suffix(".csv"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)
        print(f"written to {output} and {output.with_suffix('.csv')}")
