"""The diagonalwise command at tiny sizes: the files it writes and its one-line errors."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
import torch

import diagonalwise as dw
from diagonalwise.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("model, size", [("mobilenet_v1", 32), ("causal_conv1d", 16),
                                         ("x3d_style", 32)])
def test_bench_writes_results_with_provenance(tmp_path, model, size, capsys):
    out = tmp_path / "out"
    code = main(["bench", "--model", model, "--batch-size", "2", "--size", str(size),
                 "--repeats", "1", "--warmup", "1", "--device", "cpu", "--output", str(out),
                 "--no-cache"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ")
    assert "per layer" in printed and "training step" in printed and str(out) in printed

    data = json.loads((out / "results.json").read_text())
    provenance = data["provenance"]
    assert provenance["environment"]["device_type"] == "cpu"
    assert provenance["environment"]["copy_bandwidth_gbs"] > 0
    assert provenance["environment"]["torch"] == torch.__version__
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", provenance["git_commit"])
    assert provenance["date"].startswith("20")
    assert provenance["command"].startswith(f"diagonalwise bench --model {model} --batch-size 2")
    assert provenance["arguments"]["models"] == [model]

    layers = data["layers"]
    keys = {row["key"] for row in layers}
    assert keys
    for key in keys:
        rows = {(r["algorithm"], r["mode"]): r for r in layers if r["key"] == key}
        for mode in ("forward", "backward", "step"):
            native = rows[("native", mode)]
            assert native["status"] == "ok" and native["speedup"] == pytest.approx(1.0)
            assert native["median_ms"] > 0 and native["gbs"] > 0 and 0 < native["copy_fraction"]
        assert any(a.startswith("block_diagonal:") for a, _ in rows)
    assert len(read_csv(out / "layers.csv")) == len(layers)

    models = data["models"]
    assert [m["variant"] for m in models] == ["native", "paper", "tuned"]
    assert all(m["status"] == "ok" and m["items_per_s"] > 0 for m in models)
    assert models[0]["speedup"] == pytest.approx(1.0)
    assert "block_diagonal" in models[1]["algorithms"]
    assert read_csv(out / "models.csv")[2]["variant"] == "tuned"
    assert (out / f"speedup-{model}.png").read_bytes().startswith(PNG_MAGIC)


def test_bench_layers_only_in_channels_last_bf16(tmp_path):
    out = tmp_path / "out"
    # at 64x64 no layer's input is 1x1, where channels_last and contiguous coincide
    assert main(["bench", "--level", "layers", "--batch-size", "2", "--size", "64",
                 "--repeats", "1", "--warmup", "1", "--device", "cpu", "--dtype", "bfloat16",
                 "--layout", "channels_last", "--output", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["models"] == []
    assert {r["dtype"] for r in data["layers"]} == {"bfloat16"}
    assert {r["layout"] for r in data["layers"]} == {"channels_last"}
    assert "native_channels_last" not in {r["algorithm"] for r in data["layers"]}


def test_tune_writes_a_plan(tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    assert main(["tune", "--batch-size", "2", "--size", "32", "--device", "cpu",
                 "--cache", str(tmp_path / "cache.json"), "--output", str(plan_path)]) == 0
    plan = dw.Plan.load(plan_path)
    assert len(plan.layers) == 13
    assert "13 layers" in capsys.readouterr().out
    from diagonalwise.bench.models import MobileNetV1

    model = plan.apply(MobileNetV1())
    assert sum(isinstance(m, dw.DiagonalwiseConv2d) for m in model.modules()) == 13


def test_env_prints_the_machine_line(capsys):
    assert main(["env", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "copy_bandwidth_gbs" in printed and printed.strip().splitlines()[-1].startswith(
        "machine: ")


def test_train_on_digits_curves_match(tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["train", "--epochs", "1", "--limit", "96", "--batch-size", "32", "--size", "16",
                 "--width", "0.25", "--dtype", "float64", "--device", "cpu",
                 "--output", str(out)]) == 0
    data = json.loads((out / "train.json").read_text())
    assert data["match"] is True
    native, ours = data["runs"]["native"]["losses"], data["runs"]["diagonalwise"]["losses"]
    assert len(native) == len(ours) == 3
    assert max(abs(a - b) for a, b in zip(native, ours)) < 1e-8
    assert (out / "losses.png").read_bytes().startswith(PNG_MAGIC)
    assert "curves match" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["bench", "--model", "lenet"], "argument --model: invalid choice: 'lenet'"),
    (["bench", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["bench", "--repeats", "many"], "expected a positive integer, got 'many'"),
    (["bench", "--min-seconds", "-1"], "--min-seconds: must be a finite number 0 or above, got -1"),
    (["bench", "--device", "cuda:3"], "device 'cuda:3' is not available"),
    (["bench", "--device", "tpu"], "unknown device 'tpu'"),
    (["bench", "--device", "cpu", "--dtype", "float16"], "float16 autocast is not a CPU"),
    (["bench", "--model", "x3d_style", "--size", "8", "--device", "cpu"],
     "x3d_style does not run at batch 4, size 8: input image"),
    (["train", "--data", "/no/such/dir", "--device", "cpu"], "neither 'digits' nor a directory"),
    (["train", "--block-size", "zero", "--device", "cpu"], "--block-size: expected a positive"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number above 0, got nan"),
    (["train", "--width", "0"], "argument --width: must be a finite number above 0, got 0"),
    (["bench", "--output", "/proc/no-such-dir/out", "--device", "cpu"],
     "cannot write to /proc/no-such-dir/out"),
    (["tune", "--output", "/proc/plan.json", "--device", "cpu"], "cannot write to /proc/plan.json"),
    (["report", "--results", "/no/such/results"], "no results directory /no/such/results"),
])
def test_bad_arguments_get_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1, error
    assert message in error


def test_report_writes_the_tables_beside_the_results_and_a_summary_into_the_readme(tmp_path):
    root = tmp_path / "benchmarks" / "results"
    assert main(["bench", "--batch-size", "2", "--size", "32", "--repeats", "1", "--warmup", "1",
                 "--device", "cpu", "--output", str(root / "cpu-run"), "--no-cache"]) == 0
    readme = tmp_path / "README.md"
    from diagonalwise.bench.report import README_BEGIN, README_END

    readme.write_text(f"# title\n{README_BEGIN}\nstale table\n{README_END}\ntail\n")
    assert main(["report", "--results", str(root), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale table" not in text and text.startswith("# title\n") and text.endswith("tail\n")
    assert "(benchmarks/results/README.md)" in text
    assert "| cpu-run | mobilenet_v1 | float32 | contiguous | 2 x 32 |" in text
    assert "Per layer" not in text  # the long tables stay out of the README
    tables = (root / "README.md").read_text()
    assert "## `cpu-run`" in tables and "machine: " in tables
    assert "`diagonalwise bench --batch-size 2" in tables
    assert "| mobilenet_v1 | tuned | float32 |" in tables and "Per layer" in tables
    assert "![speedup-mobilenet_v1](cpu-run/speedup-mobilenet_v1.png)" in tables


def test_training_step_speedups_carry_their_interval_into_the_tables(monkeypatch):
    from diagonalwise.bench import training_step
    from diagonalwise.bench.registry import get_model_spec
    from diagonalwise.bench.results import BenchResult
    from diagonalwise.timing import Timing

    times = {"native": [10.0, 20.0, 30.0, 40.0, 50.0], "paper": [5.0, 10.0, 20.0, 16.0, 25.0]}
    monkeypatch.setattr(training_step, "measure_interleaved",
                        lambda steps, *args, **kwargs: {n: Timing(times[n]) for n in steps})
    rows = training_step.bench_training(get_model_spec("mobilenet_v1"), torch.device("cpu"),
                                        batch=2, size=32, variants=("native", "paper"))
    # per round 2, 2, 1.5, 2.5, 2: the median 2 (the medians' ratio, 30 / 16, would lie apart)
    assert [(r.speedup, r.speedup_low, r.speedup_high) for r in rows] == \
        [(1.0, None, None), (2.0, 1.5, 2.5)]
    result = BenchResult({}, [], rows)
    assert [line[8] for line in result.model_summary()[1]] == ["1.00x", "2.00x (1.50-2.50)"]
    # results saved before the intervals existed load and print without them
    old = {k: v for k, v in vars(rows[1]).items() if not k.startswith("speedup_")}
    loaded = BenchResult.from_dict({"provenance": {}, "models": [old]})
    assert loaded.model_summary()[1][0][8] == "2.00x"


def test_the_step_plot_takes_a_speedup_outside_its_interval(tmp_path):
    """Runs before the paired medians took the ratio of the medians, which can lie outside the
    paired interval (a causal conv1d run: 1.50x against 1.45-1.49): plotted, not a crash."""
    from diagonalwise.bench.results import BenchResult
    from diagonalwise.bench.training_step import ModelRow
    from diagonalwise.timing import environment

    rows = [ModelRow("causal_conv1d", variant, "float32", "contiguous", 8, 512, "ok", 100.0, 1.0,
                     80.0, speedup, low, high)
            for variant, speedup, low, high in (("native", 1.0, None, None),
                                                ("tuned", 1.50, 1.45, 1.49))]
    result = BenchResult({"environment": environment("cpu")}, [], rows)
    assert result.plot(tmp_path) == [tmp_path / "speedup-causal_conv1d.png"]
    assert (tmp_path / "speedup-causal_conv1d.png").read_bytes().startswith(PNG_MAGIC)


def _steps(*rows):
    return {"provenance": {}, "training_step": [
        dict(zip(("variant", "status", "median_ms", "speedup"), row)) for row in rows]}


def test_report_writes_the_per_framework_table_from_every_frameworks_files(tmp_path):
    from diagonalwise.bench.report import (
        FRAMEWORKS_BEGIN,
        FRAMEWORKS_END,
        README_BEGIN,
        README_END,
    )

    root = tmp_path / "results"
    assert main(["bench", "--level", "models", "--batch-size", "2", "--size", "32", "--repeats",
                 "1", "--warmup", "1", "--device", "cpu", "--output", str(root / "run-a"),
                 "--no-cache"]) == 0
    files = {
        "run-a/jax/training_step.json": _steps(("native", "ok", 3000.0, 1.0),
                                               ("paper", "ok", 12000.0, 0.25),
                                               ("shift_add", "ok", 1000.0, 3.0),
                                               ("tuned", "ok", 1200.0, 2.5)),
        "run-a/mxnet/training_step.json": _steps(("native", "ok", 700.0, 1.0),
                                                 ("paper", "ok", 800.0, 0.875),
                                                 ("block_diagonal:8", "ok", 900.0, 0.78)),
        # a later run replaces the earlier one's row; a variant that failed its check says so
        "run-b/keras/torch.json": _steps(("native", "ok", 900.0, 1.0),
                                         ("paper", "failed: first loss off by 1e-2")),
    }
    # the same run as if measured on a GPU: its rows stand beside the CPU's, not over them
    gpu_run = json.loads((root / "run-a" / "results.json").read_text())
    gpu_run["provenance"]["environment"]["device_type"] = "cuda"
    (root / "run-c").mkdir()
    (root / "run-c" / "results.json").write_text(json.dumps(gpu_run))
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_BEGIN}\n{README_END}\n{FRAMEWORKS_BEGIN}\nold\n{FRAMEWORKS_END}\n")
    assert main(["report", "--results", str(root), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "\nold\n" not in text
    assert "| PyTorch (oneDNN), contiguous |" in text
    assert "| PyTorch (cuDNN), contiguous |" in text
    assert "| JAX + Flax NNX (XLA), NHWC | 3000 ms | 0.25x | 3.00x (shift_add); tuned 2.50x " \
        "(tuned) | shift_add | - |" in text
    assert "| MXNet Gluon, NCHW | 700 ms | 0.88x | 1.00x (native) | native | 3.5x |" in text
    assert "| Keras 3 on PyTorch | 900 ms | failed: first loss off by 1e-2 | 1.00x (native) |" \
        in text
    details = (root / "README.md").read_text()
    assert "MobileNet V1 training step per framework" in details
    assert (root / "frameworks.png").read_bytes().startswith(PNG_MAGIC)
    # each framework's file gets its table and a plot beside it
    assert "## `run-a/mxnet/training_step.json`: MXNet Gluon, NCHW" in details
    assert "| block_diagonal:8 | ok | 900 | - | 0.78x | - |" in details
    for relative in files:
        picture = (root / relative).with_suffix(".png")
        assert picture.read_bytes().startswith(PNG_MAGIC)
        assert f"]({picture.relative_to(root)})" in details
    assert "![per framework](results/frameworks.png)" in text


@pytest.mark.parametrize("results", ["missing", "empty"])
def test_report_refuses_without_results_and_changes_nothing(tmp_path, results, capsys):
    readme = tmp_path / "README.md"
    from diagonalwise.bench.report import README_BEGIN, README_END

    original = f"# title\n{README_BEGIN}\nkept table\n{README_END}\n"
    readme.write_text(original)
    if results == "empty":
        (tmp_path / results).mkdir()
    assert main(["report", "--results", str(tmp_path / results), "--readme", str(readme)]) == 2
    assert readme.read_text() == original
    assert "nothing to report" in capsys.readouterr().err or results == "missing"


def test_report_refuses_a_readme_without_markers(tmp_path):
    root = tmp_path / "results"
    assert main(["bench", "--level", "models", "--batch-size", "2", "--size", "32", "--repeats",
                 "1", "--warmup", "1", "--device", "cpu", "--output", str(root / "run"),
                 "--no-cache"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("no markers")
    assert main(["report", "--results", str(root), "--readme", str(readme)]) == 2
    assert readme.read_text() == "no markers"


def test_provenance_records_the_cpu_allocator_setup(tmp_path):
    # a fresh process: in this one an earlier test may have set the allocator already
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "diagonalwise", "bench", "--level", "layers",
                    "--batch-size", "2", "--size", "32", "--repeats", "1", "--warmup", "1",
                    "--device", "cpu", "--output", str(out)], check=True, capture_output=True)
    environment = json.loads((out / "results.json").read_text())["provenance"]["environment"]
    assert environment["cpu_allocator"] == "glibc mallopt: mmap and trim thresholds 1 GiB"


def test_provenance_finds_the_checkout_when_installed_elsewhere(tmp_path, monkeypatch):
    from diagonalwise import source_commit

    checkout = source_commit.SOURCE_ROOT
    monkeypatch.setattr(source_commit, "SOURCE_ROOT", tmp_path)  # as if installed into site-packages
    monkeypatch.chdir(checkout)
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", source_commit.git_commit())
    monkeypatch.chdir(tmp_path)
    assert source_commit.git_commit() == "unknown"
    # a copy run elsewhere names its commit, over whatever .git travelled with it
    monkeypatch.setenv("DIAGONALWISE_COMMIT", "0" * 40)
    monkeypatch.chdir(checkout)
    assert source_commit.git_commit() == "0" * 40


@pytest.mark.parametrize("native, ours, equal", [
    ([2.0, 1.0, 0.5], [2.0, 1.0, 0.5], True),
    ([2.0, 1.0, 0.5], [2.0, float("nan"), float("nan")], False),  # max() would skip the NaN
    ([2.0, float("nan")], [2.0, float("nan")], True),  # the same divergence at the same step
    ([2.0, 1.0], [2.0, float("inf")], False),
    ([2.0, float("inf")], [2.0, float("-inf")], False),
    ([2.0, 1.0], [2.0], False),
])
def test_loss_curves_with_non_finite_values(native, ours, equal):
    from diagonalwise.bench.train_compare import curves_match, relative_loss_gap

    gap = relative_loss_gap(native, ours)
    assert (gap == 0.0) is equal
    assert curves_match(gap, 0.0, 1e-8) is equal
    assert not curves_match(relative_loss_gap([1.0, 1.0], [1.0, 2.0]), float("inf"), 1e-2)


def test_train_reports_a_diverged_converted_run_as_a_mismatch(tmp_path, monkeypatch, capsys):
    from diagonalwise.bench import train_compare

    real_run = train_compare.train_run

    def diverging(model, *args, label, **kwargs):
        run = real_run(model, *args, label=label, **kwargs)
        if label == "diagonalwise":
            run["losses"][1:] = [float("nan")] * (len(run["losses"]) - 1)
        return run

    monkeypatch.setattr(train_compare, "train_run", diverging)
    assert main(["train", "--epochs", "1", "--limit", "96", "--batch-size", "32", "--size", "16",
                 "--width", "0.25", "--device", "cpu", "--output", str(tmp_path)]) == 1
    assert json.loads((tmp_path / "train.json").read_text())["match"] is False
    assert "MISMATCH" in capsys.readouterr().out



def test_an_internal_error_keeps_its_traceback(monkeypatch):
    import diagonalwise.timing

    def broken(device):
        raise ValueError("a bug, not a usage error")

    monkeypatch.setattr(diagonalwise.timing, "copy_bandwidth", broken)
    with pytest.raises(ValueError, match="a bug, not a usage error"):
        main(["env", "--device", "cpu"])


def test_ctrl_c_is_one_line_and_keeps_finished_results(tmp_path, monkeypatch, capsys):
    from diagonalwise.bench import suite

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(suite, "bench_training", interrupted)
    out = tmp_path / "out"
    assert main(["bench", "--batch-size", "2", "--size", "32", "--repeats", "1", "--warmup", "1",
                 "--device", "cpu", "--output", str(out), "--no-cache"]) == 130
    error = capsys.readouterr().err.strip().splitlines()  # the progress bars go to stderr too
    assert error[-1] == f"diagonalwise bench: interrupted; what was finished is in {out}"
    assert not any("Traceback" in line for line in error)
    layers = json.loads((out / "results.json").read_text())["layers"]
    assert layers and not json.loads((out / "results.json").read_text())["models"]


def test_a_missing_bench_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def without_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name="matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_matplotlib)
    assert main(["bench", "--level", "layers", "--batch-size", "2", "--size", "32", "--repeats",
                 "1", "--warmup", "1", "--device", "cpu", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "diagonalwise bench: error: it needs matplotlib, which is not installed: "
        "pip install 'diagonalwise[bench]'")


def test_a_corrupt_image_is_one_line_naming_the_file(tmp_path, capsys):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (12, 12), (index * 40, 0, 0)).save(tmp_path / "data" / label / f"{index}.png")
    corrupt = tmp_path / "data" / "b" / "broken.png"
    corrupt.write_bytes(b"not a png at all")
    assert main(["train", "--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4",
                 "--size", "16", "--width", "0.25", "--device", "cpu", "--output",
                 str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("diagonalwise train: error: ") and str(corrupt) in error


def test_bench_framework_routes_without_pytorch_and_says_what_is_missing(tmp_path, capsys):
    from diagonalwise.entry import main as entry_main
    from diagonalwise.framework_cli import wants_framework

    assert wants_framework(["bench", "--framework", "jax"])
    assert wants_framework(["bench", "--framework=mxnet", "--output", "x"])
    assert not wants_framework(["bench", "--framework", "torch"])
    assert not wants_framework(["train", "--framework", "jax"])
    assert not wants_framework(["bench", "--model", "mobilenet_v1"])
    # this environment has PyTorch but no MXNet: one line, exit status 2, from either entry
    for run in (entry_main, main):
        assert run(["bench", "--framework", "mxnet", "--output", str(tmp_path)]) == 2
        error = capsys.readouterr().err
        assert "--framework mxnet needs mxnet" in error and len(error.strip().splitlines()) == 1


def test_training_steps_take_twice_the_rounds_of_a_layer_plus_one(tmp_path, monkeypatch):
    """A model step's spread with the layers' 5 rounds was wider than the effects it measures."""
    from diagonalwise.bench import training_step

    rounds, original = [], training_step.measure_interleaved

    def recording(fns, device, *, warmup, repeats):
        rounds.append(repeats)
        return original(fns, device, warmup=warmup, repeats=repeats)

    monkeypatch.setattr(training_step, "measure_interleaved", recording)
    assert main(["bench", "--level", "models", "--batch-size", "2", "--size", "32", "--repeats",
                 "2", "--warmup", "1", "--device", "cpu", "--output", str(tmp_path / "run"),
                 "--no-cache"]) == 0
    assert rounds == [5]


def test_copy_fractions_take_the_higher_of_the_runs_copy_measurements(tmp_path, monkeypatch,
                                                                      capsys):
    """A copy measured low at the start (the VM waking) and high at the end: the tables' and
    the saved fractions are against the end's, and the machine line says so; both are kept."""
    from diagonalwise.bench import suite

    measured = iter([10.0, 40.0])
    monkeypatch.setattr(suite, "copy_bandwidth", lambda device: next(measured))
    out = tmp_path / "run"
    assert main(["bench", "--model", "causal_conv1d", "--level", "layers", "--batch-size", "2",
                 "--size", "16", "--repeats", "1", "--warmup", "1", "--min-seconds", "0",
                 "--device", "cpu", "--output", str(out), "--no-cache"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert data["provenance"]["environment"]["copy_bandwidth_gbs"] == 40.0
    quality = data["provenance"]["quality"]
    assert (quality["copy_bandwidth_start_gbs"], quality["copy_bandwidth_end_gbs"]) == (10.0, 40.0)
    timed = [row for row in data["layers"] if row["gbs"] is not None]
    assert timed
    for row in timed:
        assert row["copy_fraction"] == pytest.approx(row["gbs"] / 40.0)
    assert printed.splitlines()[0].endswith("copy bandwidth 10.0 GB/s")  # printed as it began
    assert "copy bandwidth 40.0 GB/s" in printed.split("per layer")[1]
