"""Benchmark results as data: provenance, JSON and CSV written atomically, text tables, plots."""

from __future__ import annotations

import csv
import datetime
import io
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .. import __version__
from ..timing import machine_line
from ..tuning import write_json_atomic
from .layers import LayerRow
from .training import ModelRow


def git_commit() -> str:
    """The commit of the source tree the package runs from, '+dirty' if it has changes."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance(env: dict, arguments: dict) -> dict:
    return {
        "environment": env,
        "diagonalwise": __version__,
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "arguments": arguments,
    }


def _write_text_atomic(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _csv_text(rows: list, row_type: type) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(row_type)])
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    return buffer.getvalue()


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
        _write_text_atomic(directory / "layers.csv", _csv_text(self.layers, LayerRow))
        _write_text_atomic(directory / "models.csv", _csv_text(self.models, ModelRow))
        return [directory / name for name in ("results.json", "layers.csv", "models.csv")]

    def machine(self) -> str:
        return machine_line(self.provenance["environment"])

    def layer_table(self, mode: str = "step") -> str:
        """Per distinct layer: native time, and the best refactorized and best overall algorithm."""
        lines = [self.machine(),
                 f"{'model':<16} {'layer (count)':<22} {'input':<16} {'groups':>6} "
                 f"{'native ms':>9} {'GB/s':>6} {'%copy':>5}  {'best block-diag':<22} "
                 f"{'best algorithm':<24}"]
        keys = dict.fromkeys((r.model, r.key) for r in self.layers)
        for model, key in keys:
            rows = [r for r in self.layers if r.model == model and r.key == key and r.mode == mode
                    and r.status == "ok"]
            native = next((r for r in rows if r.algorithm == "native"), None)
            if native is None:
                continue
            blocks = [r for r in rows if r.algorithm.startswith("block_diagonal:")]
            block = min(blocks, key=lambda r: r.median_ms) if blocks else None
            best = min(rows, key=lambda r: r.median_ms)
            block_text = f"{block.algorithm[15:]}: {block.speedup:.2f}x" if block else "-"
            lines.append(
                f"{model:<16} {f'{native.layer} ({native.count})':<22} {native.input_shape:<16} "
                f"{native.groups:>6} {native.median_ms:>9.3f} {native.gbs:>6.1f} "
                f"{100 * native.copy_fraction:>5.1f}  {'b=' + block_text:<22} "
                f"{f'{best.algorithm} {best.speedup:.2f}x':<24}")
        failed = sorted({(r.model, r.layer, r.algorithm, r.status) for r in self.layers
                         if r.status != "ok"})
        lines += [f"  {m} {layer} {alg}: {status}" for m, layer, alg, status in failed]
        return "\n".join(lines)

    def model_table(self) -> str:
        lines = [self.machine(),
                 f"{'model':<20} {'variant':<8} {'dtype':<9} {'layout':<13} {'batch':>5} "
                 f"{'size':>5} {'step ms':>9} {'items/s':>9} {'speedup':>7}  algorithms"]
        for r in self.models:
            if r.status != "ok":
                lines.append(f"{r.model:<20} {r.variant:<8} {r.dtype:<9} {r.layout:<13} "
                             f"{r.batch:>5} {r.size:>5}  {r.status}")
                continue
            lines.append(f"{r.model:<20} {r.variant:<8} {r.dtype:<9} {r.layout:<13} {r.batch:>5} "
                         f"{r.size:>5} {_number(r.median_ms, 1):>9} {_number(r.items_per_s, 1):>9} "
                         f"{_number(r.speedup):>6}x  {r.algorithms}")
        return "\n".join(lines)

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
