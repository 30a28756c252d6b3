"""Benchmark results as data: provenance, JSON and CSV written atomically, text tables, plots."""

from __future__ import annotations

import csv
import datetime
import io
import shlex
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .. import __version__
from ..atomic_files import write_json_atomic, write_text_atomic
from ..timing import machine_line
from .per_layer import LayerRow
from .training_step import ModelRow

#: The source tree the package runs from; a checkout when installed in editable mode.
SOURCE_ROOT = Path(__file__).resolve().parents[3]


def git_commit() -> str:
    """The commit of the checkout the package runs from, '+dirty' if it has changes; when the
    package is installed elsewhere, of the checkout the command runs in; 'unknown' outside any."""
    for root in (SOURCE_ROOT, Path.cwd()):
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=root, capture_output=True, text=True,
                                   timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        return commit + ("+dirty" if dirty else "")
    return "unknown"


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


def render_text(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *rows])


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


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

    def layer_summary(self, mode: str = "step") -> tuple[list[str], list[list[str]]]:
        """Per distinct layer: native time and bandwidth, the best block size and the best
        algorithm with their speedups over native."""
        header = ["model", "layer (count)", "input", "groups", "dtype", "layout", "native ms",
                  "native GB/s", "% of copy", "best block-diagonal", "best algorithm"]
        rows = []
        for model, key in dict.fromkeys((r.model, r.key) for r in self.layers):
            measured = [r for r in self.layers if r.model == model and r.key == key
                        and r.mode == mode and r.status == "ok"]
            native = next((r for r in measured if r.algorithm == "native"), None)
            if native is None:
                continue
            blocks = [r for r in measured if r.algorithm.startswith("block_diagonal:")]
            block = min(blocks, key=lambda r: r.median_ms) if blocks else None
            best = min(measured, key=lambda r: r.median_ms)
            rows.append([
                model, f"{native.layer} ({native.count})", native.input_shape, str(native.groups),
                native.dtype, native.layout, f"{native.median_ms:.3f}", f"{native.gbs:.1f}",
                f"{100 * native.copy_fraction:.1f}",
                f"b={block.algorithm.split(':')[1]}: {block.speedup:.2f}x" if block else "-",
                f"{best.algorithm} {best.speedup:.2f}x"])
        return header, rows

    def model_summary(self) -> tuple[list[str], list[list[str]]]:
        header = ["model", "variant", "dtype", "layout", "batch", "size", "step ms (IQR)",
                  "items/s", "speedup", "algorithms"]
        rows = [[r.model, r.variant, r.dtype, r.layout, str(r.batch), str(r.size),
                 f"{number(r.median_ms, 1)} ({number(r.spread_ms, 1)})",
                 number(r.items_per_s, 1),
                 f"{number(r.speedup)}x" if r.status == "ok" else r.status, r.algorithms]
                for r in self.models]
        return header, rows

    def failures(self) -> list[str]:
        return sorted({f"{r.model} {r.layer} {r.algorithm}: {r.status}" for r in self.layers
                       if r.status != "ok"})

    def text_tables(self) -> str:
        parts = []
        if self.layers:
            parts += ["per layer, forward+backward (best block size, best algorithm vs native):",
                      self.machine(), render_text(*self.layer_summary()), *self.failures(), ""]
        if self.models:
            parts += ["training step (forward, loss, backward, SGD):", self.machine(),
                      render_text(*self.model_summary())]
        return "\n".join(parts)

    def plot(self, directory: Path) -> list[Path]:
        """One PNG per model: per-layer speedup over native (forward+backward) for each algorithm,
        and the training-step speedup of each variant."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        paths = []
        for model in dict.fromkeys(r.model for r in self.layers + self.models):
            rows = [r for r in self.layers if r.model == model and r.mode == "step"
                    and r.status == "ok"]
            model_rows = [r for r in self.models if r.model == model and r.status == "ok"]
            figure, (top, bottom) = plt.subplots(
                2, 1, figsize=(12, 8), gridspec_kw={"height_ratios": [3, 1]})
            keys = list(dict.fromkeys(r.key for r in rows))
            algorithms = sorted({r.algorithm for r in rows},
                                key=lambda a: (not a.startswith("native"),
                                               int(a.split(":")[1]) if ":" in a else 0, a))
            width = 0.8 / max(1, len(algorithms))
            for index, algorithm in enumerate(algorithms):
                positions, speedups = [], []
                for position, key in enumerate(keys):
                    match = [r for r in rows if r.key == key and r.algorithm == algorithm]
                    if match:
                        positions.append(position + index * width)
                        speedups.append(match[0].speedup)
                top.bar(positions, speedups, width, label=algorithm)
            top.axhline(1.0, color="black", linewidth=0.8)
            top.set_yscale("log")
            top.set_ylabel("speedup over native (fwd+bwd)")
            labels = [next(f"{r.layer}\n{r.input_shape}" for r in rows if r.key == key)
                      for key in keys]
            top.set_xticks([p + 0.4 - width / 2 for p in range(len(keys))], labels, rotation=60,
                           fontsize=6, ha="right")
            top.legend(fontsize=7, ncol=4)
            top.set_title(f"{model}: per-layer speedup over native\n{self.machine()}", fontsize=9)
            if model_rows:
                bottom.barh([f"{r.variant} ({r.dtype}, {r.layout})" for r in model_rows],
                            [r.speedup for r in model_rows], color="tab:gray")
                bottom.axvline(1.0, color="black", linewidth=0.8)
                bottom.set_xlabel("training-step speedup over native")
            else:
                bottom.set_axis_off()
            figure.tight_layout()
            path = directory / f"speedup-{model}.png"
            figure.savefig(path, dpi=110)
            plt.close(figure)
            paths.append(path)
        return paths
