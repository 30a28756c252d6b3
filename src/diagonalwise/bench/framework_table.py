"""The paper's table, one row per framework, from committed results: PyTorch's MobileNet V1 and
the Darknet/Caffe model files (``results.json``), and the training-step files the other
frameworks' benches write (``jax/training_step.json``, ``keras/<backend>.json``,
``mxnet/training_step.json``). For each row the newest run that has it. Also the other frameworks'
detailed tables, and a plot beside each of their result files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .results import BenchResult, number, render_markdown

#: the paper's training speedups (Qin et al. 2018, Table 3; GPU, against 2017 code), as history
PAPER = {"PyTorch": "5.4x", "Darknet": "15.4x", "Caffe": "8.4x", "MXNet": "3.5x",
         "TensorFlow": "1.4x"}

#: (file under a run directory, framework label, the paper's column)
OTHER_FRAMEWORKS = [
    ("jax/training_step.json", "JAX + Flax NNX (XLA), NHWC", "-"),
    ("keras/jax.json", "Keras 3 on JAX", "-"),
    ("keras/torch.json", "Keras 3 on PyTorch", "-"),
    ("keras/tensorflow.json", "Keras 3 on TensorFlow", PAPER["TensorFlow"]),
    ("mxnet/training_step.json", "MXNet Gluon, NCHW", PAPER["MXNet"]),
]

#: PyTorch-side models: name (or name prefix) -> (label, the paper's column)
TORCH_MODELS = {"mobilenet_v1": ("PyTorch", PAPER["PyTorch"]),
                "darknet:": ("Darknet cfg in PyTorch", PAPER["Darknet"]),
                "caffe:": ("Caffe prototxt in PyTorch", PAPER["Caffe"])}

#: the library behind PyTorch's native convolutions per device type: a row of each is kept
BACKENDS = {"cpu": "oneDNN", "cuda": "cuDNN"}


def _speedup(row: dict) -> str:
    return f"{number(row['speedup'])}x" if row.get("status") == "ok" else row.get("status", "-")


def _runs_native(row: dict) -> bool:
    """Whether a variant's depthwise layers are all native ("native", "13x native")."""
    return re.fullmatch(r"(\d+x )?native", row.get("depthwise", row["variant"])) is not None


def _value(row: dict | None) -> float | None:
    """A variant's speedup, None when it failed its check or is absent."""
    return row["speedup"] if row and row.get("status") == "ok" else None


#: a row of the table: its cells, then the paper's and the best speedup as numbers (for the plot)
Row = tuple[list[str], float | None, float | None]


def _torch_rows(run: Path) -> dict[str, Row]:
    rows = {}
    for path in sorted(run.rglob("results.json")):
        result = BenchResult.from_dict(json.loads(path.read_text()))
        device_type = result.provenance["environment"].get("device_type", "cpu")
        backend = BACKENDS.get(device_type, device_type)
        for model, layout in dict.fromkeys((r.model, r.layout) for r in result.models
                                           if r.dtype == "float32"):
            key = next((k for k in TORCH_MODELS if model == k or
                        (k.endswith(":") and model.startswith(k))), None)
            if key is None:
                continue
            variants = {r.variant: r.__dict__ for r in result.models
                        if (r.model, r.layout, r.dtype) == (model, layout, "float32")}
            if "native" not in variants:
                continue
            label, paper = TORCH_MODELS[key]
            label = f"{label} ({backend})"
            tuned = variants.get("tuned", {})
            rows[f"{label}, {layout}"] = ([
                f"{label}, {layout}", f"{number(variants['native']['median_ms'], 0)} ms",
                _speedup(variants["paper"]) if "paper" in variants else "-",
                _speedup(tuned) if tuned else "-", tuned.get("algorithms") or "-", paper],
                _value(variants.get("paper")), _value(tuned))
    return rows


def _other_row(path: Path, label: str, paper: str) -> Row:
    steps = {row["variant"]: row for row in json.loads(path.read_text())["training_step"]}
    native = steps["native"]
    # a tuned model that runs native in every layer is native: its ratio is run-to-run noise
    faster = [row for name, row in steps.items() if name not in ("native", "paper")
              and row.get("status") == "ok" and not _runs_native(row)]
    best = max(faster, key=lambda row: row["speedup"], default=None)
    if best is None or best["speedup"] < 1:
        best_cell, wins = "1.00x (native)", "native"
    else:
        best_cell = f"{number(best['speedup'])}x ({best['variant']})"
        wins = best.get("depthwise", best["variant"])
    tuned = steps.get("tuned")
    if tuned is not None and tuned is not best:
        best_cell += f"; tuned {_speedup(tuned)} ({tuned.get('depthwise', 'tuned')})"
    return ([label, f"{number(native['median_ms'], 0)} ms",
             _speedup(steps["paper"]) if "paper" in steps else "-", best_cell, wins, paper],
            _value(steps.get("paper")), max(1.0, best["speedup"]) if best else 1.0)


def framework_rows(results_root: Path) -> dict[str, Row]:
    """Every row, from the newest run that has it."""
    rows: dict[str, Row] = {}
    for run in sorted(p for p in results_root.iterdir() if p.is_dir()):
        rows.update(_torch_rows(run))
        for relative, label, paper in OTHER_FRAMEWORKS:
            if (run / relative).exists():
                rows[label] = _other_row(run / relative, label, paper)
    return rows


def framework_table(rows: dict[str, Row]) -> str:
    """The table in the paper's shape, or an empty string without rows."""
    if not rows:
        return ""
    return render_markdown(["framework", "native step", "paper's 32 channels per block",
                            "best (tuned or fastest)", "what wins", "paper (2018, GPU)"],
                           [cells for cells, _, _ in rows.values()])


def plot_frameworks(rows: dict[str, Row], path: Path) -> Path:
    """Bars per framework: the paper's refactorization and the best we have, as speedups over
    that framework's native training step (log scale; 1 is native)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    figure, axis = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5), layout="constrained")
    positions = range(len(labels))
    for offset, index, name in ((-0.2, 1, "the paper's 32 channels per block"),
                                (0.2, 2, "best (tuned or fastest)")):
        axis.barh([p + offset for p in positions],
                  [rows[label][index] or 0 for label in labels], 0.4, label=name)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_yticks(list(positions), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("MobileNet V1 training step, speedup over the framework's native")
    axis.legend(fontsize=8, loc="lower right")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_training_step(path: Path, title: str) -> Path:
    """Beside a framework's ``training_step`` JSON, a bar per variant that passed its check: its
    speedup over native (log scale), labelled with its step time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    rows = [row for row in json.loads(path.read_text())["training_step"]
            if row.get("status") == "ok"]
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.3), layout="constrained")
    bars = axis.barh([row["variant"] for row in rows], [row["speedup"] for row in rows],
                     color=["grey" if row["variant"] == "native" else "tab:blue" for row in rows])
    axis.bar_label(bars, [f"{row['median_ms']:.0f} ms" for row in rows], fontsize=8, padding=3)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    axis.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    axis.margins(x=0.2)
    axis.invert_yaxis()
    axis.set_xlabel("MobileNet V1 training step, speedup over native (log scale)")
    axis.set_title(title, fontsize=9)
    picture = path.with_suffix(".png")
    figure.savefig(picture, dpi=110)
    plt.close(figure)
    return picture


def _layers_table(layers: list[dict]) -> str:
    """Per depthwise layer, each algorithm's forward+backward and its speedup over native (or
    why it has none), and the tuner's choice where there is one."""
    names = sorted(dict.fromkeys(name for layer in layers for name in layer["status"]),
                   key=lambda name: (name.startswith("block_diagonal:"), name != "native",
                                     int(name.partition(":")[2] or 0), name))
    chosen = any("chosen" in layer for layer in layers)

    def cell(layer: dict, name: str) -> str:
        native, ms = layer["median_ms"].get("native"), layer["median_ms"].get(name)
        if ms is not None and native:
            return f"{number(ms, 1)} ms ({number(native / ms)}x)"
        status = layer["status"].get(name, "-")
        return "skipped" if status.startswith("not measured") else status

    rows = [[layer["layer"], *(cell(layer, name) for name in names),
             *([layer.get("chosen") or "-"] if chosen else [])] for layer in layers]
    return (render_markdown(["layer", *names, *(["chosen"] if chosen else [])], rows)
            + "\n\nskipped: not timed, a larger block was already a clear loss.")


def framework_details(results_root: Path) -> str:
    """Per other-framework result file: its provenance, its training-step table and plot (written
    here), and the JAX per-layer table."""
    sections = []
    for run in sorted(p for p in results_root.iterdir() if p.is_dir()):
        for relative, label, _ in OTHER_FRAMEWORKS:
            path = run / relative
            if not path.exists():
                continue
            data = json.loads(path.read_text())
            info = ", ".join(f"{key} {value}" for key, value in data["provenance"].items()
                             if key != "arguments")
            rows = [[row["variant"], row["status"], number(row.get("median_ms"), 0),
                     f"{number(row['min_ms'], 0)}-{number(row['max_ms'], 0)}"
                     if "min_ms" in row else "-", _speedup(row), row.get("depthwise", "-")]
                    for row in data["training_step"]]
            picture = plot_training_step(path, f"{label} ({path.relative_to(results_root)})")
            sections.append(
                f"## `{path.relative_to(results_root)}`: {label}\n\n{info}\n\n"
                "Training step (forward, loss, backward, SGD step):\n\n"
                + render_markdown(["variant", "status", "median ms", "min-max ms", "speedup",
                                   "depthwise layers run"], rows)
                + f"\n\n![{label}]({picture.relative_to(results_root)})")
            if data.get("layers"):
                sections.append("Per distinct depthwise layer, forward+backward, as the tuner "
                                "measured it:\n\n" + _layers_table(data["layers"]))
            layers = path.with_name("layers.json")
            if relative.startswith("jax/") and layers.exists():
                sections.append("Per depthwise layer, forward+backward under jit:\n\n"
                                + _layers_table(json.loads(layers.read_text())["layers"]))
    return "\n\n".join(sections)
