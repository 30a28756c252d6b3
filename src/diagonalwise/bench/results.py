"""Benchmark results as data: provenance, JSON and CSV written atomically, text tables, plots."""

from __future__ import annotations

import csv
import datetime
import io
import shlex
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .. import __version__
from ..atomic_files import write_json_atomic, write_text_atomic
from ..source_commit import git_commit
from ..timing import machine_line
from .per_layer import LayerRow
from .training_step import ModelRow


#: The source tree the package runs from; a checkout when installed in editable mode.
def provenance(env: dict, command: list[str], arguments: dict) -> dict:
    """What a result depends on: environment, version, commit, date, and the command as a user
    types it (``command``: the ``diagonalwise`` subcommand and its arguments)."""
    return {
        "environment": env,
        "diagonalwise": __version__,
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["diagonalwise", *command]),
        "arguments": arguments,
    }


def _csv_text(rows: list, row_type: type) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(row_type)])
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    return buffer.getvalue()


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def speedup_text(row: ModelRow) -> str:
    """A training step's speedup, with its interval where there is one ("1.59x (1.52-1.66)");
    the row's status where it was not timed."""
    if row.status != "ok":
        return row.status
    interval = (f" ({number(row.speedup_low)}-{number(row.speedup_high)})"
                if row.speedup_low is not None and row.speedup_high is not None else "")
    return f"{number(row.speedup)}x{interval}"


def render_text(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *rows])


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


#: A timing whose spread (interquartile range) exceeds this fraction of its median is too noisy
#: to compare; a run where many are, or whose copy bandwidth fell, ran on a busy machine.
NOISY_SPREAD = 0.2


def is_noisy(row) -> bool:
    return row.median_ms is not None and row.spread_ms is not None and \
        row.spread_ms > NOISY_SPREAD * row.median_ms


def assess_quality(rows: list, copy_start: float, copy_end: float, usual: float) -> dict:
    """Whether a run's timings can be trusted: the share of noisy timings, and the copy bandwidth
    at its start and end against this machine's usual (``usual``, see
    :func:`diagonalwise.timing.usual_copy_bandwidth`). ``busy`` holds the reason when they
    cannot, else None."""
    timed = [r for r in rows if r.median_ms is not None]
    noisy = sum(is_noisy(r) for r in timed)
    reasons = []
    if timed and noisy > 0.25 * len(timed):
        reasons.append(f"{noisy} of {len(timed)} timings spread more than "
                       f"{NOISY_SPREAD:.0%} of their median")
    lowest = min(copy_start, copy_end)
    if lowest < 0.5 * usual:
        reasons.append(f"copy bandwidth {lowest:.1f} GB/s, under half this machine's usual "
                       f"{usual:.1f} GB/s")
    return {"copy_bandwidth_start_gbs": copy_start, "copy_bandwidth_end_gbs": copy_end,
            "usual_copy_bandwidth_gbs": usual, "noisy_timings": noisy, "timings": len(timed),
            "busy": "; ".join(reasons) or None}


@dataclass
class BenchResult:
    provenance: dict
    layers: list[LayerRow] = field(default_factory=list)
    models: list[ModelRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"provenance": self.provenance, "layers": [asdict(r) for r in self.layers],
                "models": [asdict(r) for r in self.models]}

    @classmethod
    def from_dict(cls, data: dict) -> BenchResult:
        return cls(data["provenance"], [LayerRow(**r) for r in data.get("layers", [])],
                   [ModelRow(**r) for r in data.get("models", [])])

    def save(self, directory: Path) -> list[Path]:
        """Write results.json, layers.csv and models.csv (each atomically); return the paths.
        Called after every finished piece of work, so a crash loses nothing already measured."""
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / "results.json", self.to_dict())
        write_text_atomic(directory / "layers.csv", _csv_text(self.layers, LayerRow))
        write_text_atomic(directory / "models.csv", _csv_text(self.models, ModelRow))
        return [directory / name for name in ("results.json", "layers.csv", "models.csv")]

    def machine(self) -> str:
        return machine_line(self.provenance["environment"])

    def set_copy_bandwidth(self, gbs: float) -> None:
        """Take ``gbs`` as the run's copy bandwidth: the machine line's, and every layer's
        fraction of it. The bench measures the copy at its start and end and takes the higher: a
        start measured while the VM woke (19.9 GB/s, 40.7 at the end, in a ConvNeXt-T run of
        2026-12-07, cpu_direct_notes.md) had doubled every fraction."""
        self.provenance["environment"]["copy_bandwidth_gbs"] = gbs
        for row in self.layers:
            if row.gbs is not None:
                row.copy_fraction = row.gbs / gbs

    def warning(self) -> str | None:
        """A line saying the machine was too busy to measure, if it was."""
        busy = self.provenance.get("quality", {}).get("busy")
        return f"WARNING: machine too busy to measure, speedups unreliable: {busy}" if busy else None

    def layer_summary(self, mode: str = "step") -> tuple[list[str], list[list[str]]]:
        """Per distinct layer: native time and fraction of the copy bandwidth, the best block
        size, our CPU kernels and the best algorithm, each as speedup over native and fraction
        of the copy bandwidth; timings whose spread exceeds :data:`NOISY_SPREAD` of their median
        are marked with ``~`` and listed."""
        header = ["model", "layer (count)", "input", "groups", "dtype", "layout", "native ms",
                  "native % of copy", "best block-diagonal", "cpu_direct", "best algorithm",
                  "noisy (spread > 20%)"]
        rows = []
        for model, key in dict.fromkeys((r.model, r.key) for r in self.layers):
            measured = [r for r in self.layers if r.model == model and r.key == key
                        and r.mode == mode and r.status == "ok"]
            native = next((r for r in measured if r.algorithm == "native"), None)
            if native is None:
                continue
            blocks = [r for r in measured if r.algorithm.startswith("block_diagonal:")]
            block = min(blocks, key=lambda r: r.median_ms) if blocks else None
            ours = next((r for r in measured if r.algorithm == "cpu_direct"), None)
            best = min(measured, key=lambda r: r.median_ms)

            def cell(row, label):
                return "-" if row is None else (f"{label}{row.speedup:.2f}x{'~' * is_noisy(row)}, "
                                                f"{100 * row.copy_fraction:.0f}%")

            rows.append([
                model, f"{native.layer} ({native.count})", native.input_shape, str(native.groups),
                native.dtype, native.layout, f"{native.median_ms:.3f}{'~' * is_noisy(native)}",
                f"{100 * native.copy_fraction:.1f}",
                cell(block, f"b={block.algorithm.split(':')[1]}: " if block else ""),
                cell(ours, ""), cell(best, f"{best.algorithm} "),
                ", ".join(r.algorithm for r in measured if is_noisy(r)) or "-"])
        return header, rows

    def model_summary(self) -> tuple[list[str], list[list[str]]]:
        header = ["model", "variant", "dtype", "layout", "batch", "size", "step ms (IQR)",
                  "items/s", "speedup (90% interval)", "algorithms"]
        rows = [[r.model, r.variant, r.dtype, r.layout, str(r.batch), str(r.size),
                 f"{number(r.median_ms, 1)} ({number(r.spread_ms, 1)}){'~' * is_noisy(r)}",
                 number(r.items_per_s, 1), speedup_text(r), r.algorithms]
                for r in self.models]
        return header, rows

    def failures(self) -> list[str]:
        return sorted({f"{r.model} {r.layer} {r.algorithm}: {r.status}" for r in self.layers
                       if r.status != "ok"})

    def text_tables(self) -> str:
        parts = [self.warning()] if self.warning() else []
        if self.layers:
            parts += ["per layer, forward+backward (best block size, best algorithm vs native):",
                      self.machine(), render_text(*self.layer_summary()), *self.failures(), ""]
        if self.models:
            parts += ["training step (forward, loss, backward, SGD):", self.machine(),
                      render_text(*self.model_summary())]
        return "\n".join(parts)

    def plot(self, directory: Path) -> list[Path]:
        """One PNG per model: per layer (forward+backward), each algorithm's speedup over native
        and its fraction of the copy bandwidth (how far it is from the memory limit), the layers
        labelled with dtype and layout; then the training-step speedup of each variant."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        paths = []
        for model in dict.fromkeys(r.model for r in self.layers + self.models):
            rows = [r for r in self.layers if r.model == model and r.mode == "step"
                    and r.status == "ok"]
            model_rows = [r for r in self.models if r.model == model and r.status == "ok"]
            figure, (speed, limit, step) = plt.subplots(
                3, 1, figsize=(14, 11), gridspec_kw={"height_ratios": [3, 3, 1]},
                layout="constrained")
            keys = list(dict.fromkeys(r.key for r in rows))
            algorithms = sorted({r.algorithm for r in rows},
                                key=lambda a: (not a.startswith("native"),
                                               int(a.split(":")[1]) if ":" in a else 0, a))
            width = 0.8 / max(1, len(algorithms))
            for index, algorithm in enumerate(algorithms):
                found = [(position, r) for position, key in enumerate(keys) for r in rows
                         if r.key == key and r.algorithm == algorithm]
                positions = [position + index * width for position, _ in found]
                speed.bar(positions, [r.speedup for _, r in found], width, label=algorithm)
                limit.bar(positions, [100 * r.copy_fraction for _, r in found], width,
                          label=algorithm)
            speed.axhline(1.0, color="black", linewidth=0.8)
            speed.set_yscale("log")
            speed.set_ylabel("speedup over native (fwd+bwd)")
            limit.axhline(100, color="black", linewidth=0.8)
            limit.set_ylabel("% of copy bandwidth (fwd+bwd)")
            labels = [next(f"{r.layer} {r.dtype} {r.layout}\n{r.input_shape}" for r in rows
                           if r.key == key) for key in keys]
            ticks = [p + 0.4 - width / 2 for p in range(len(keys))]
            speed.set_xticks(ticks, [])
            limit.set_xticks(ticks, labels, rotation=60, fontsize=6, ha="right")
            if algorithms:  # beside the plots, where it hides no bar
                speed.legend(fontsize=7, ncol=1 + len(algorithms) // 16, loc="upper left",
                             bbox_to_anchor=(1.01, 1.0))
            title = f"{model}: per layer, against native and against the memory limit\n{self.machine()}"
            speed.set_title(title + (f"\n{self.warning()}" if self.warning() else ""), fontsize=9)
            if model_rows:
                # the 90% intervals as error bars (none for native and for older results, whose
                # ratio of the medians could lie outside the paired interval)
                errors = [[max(0.0, r.speedup - r.speedup_low) if r.speedup_low is not None
                           else 0.0 for r in model_rows],
                          [max(0.0, r.speedup_high - r.speedup) if r.speedup_high is not None
                           else 0.0 for r in model_rows]]
                step.barh([f"{r.variant} ({r.dtype}, {r.layout})" for r in model_rows],
                          [r.speedup for r in model_rows], xerr=errors, capsize=3,
                          color="tab:gray")
                step.axvline(1.0, color="black", linewidth=0.8)
                step.set_xlabel("training-step speedup over native (90% interval)")
            else:
                step.set_axis_off()
            # a model file's name ("darknet:dir/net.cfg") as a file name: "darknet-net.cfg"
            stem = model.split(":")[0] + "-" + Path(model).name if ":" in model else model
            path = directory / f"speedup-{stem}.png"
            figure.savefig(path, dpi=110)
            plt.close(figure)
            paths.append(path)
        return paths
