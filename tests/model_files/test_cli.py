"""``diagonalwise bench`` and ``train`` on a user's own Darknet or Caffe network: the benchmark
runs native, the paper's blocks and tuned, and training writes its weights back in the file's
format, which loads again."""

from __future__ import annotations

import json

import pytest
import torch

from diagonalwise.caffe import load_caffe
from diagonalwise.cli import main
from diagonalwise.darknet import load_darknet

from . import nets


@pytest.fixture
def files(tmp_path):
    cfg = tmp_path / "small.cfg"
    cfg.write_text(nets.mobilenet_v1_cfg(resolution=32, activation="relu", softmax=True))
    prototxt = tmp_path / "small.prototxt"
    prototxt.write_text(nets.mobilenet_v1_prototxt(resolution=32).replace("use_global_stats: true ",
                                                                          ""))
    return cfg, prototxt


def test_bench_runs_both_model_files(tmp_path, files, capsys):
    cfg, prototxt = files
    output = tmp_path / "bench"
    assert main(["bench", "--darknet-cfg", str(cfg), "--caffe-prototxt", str(prototxt),
                 "--batch-size", "2", "--repeats", "1", "--warmup", "1", "--device", "cpu",
                 "--output", str(output)]) == 0
    result = json.loads((output / "results.json").read_text())
    rows = {(row["model"], row["variant"]): row for row in result["models"]}
    for name in (f"darknet:{cfg}", f"caffe:{prototxt}"):
        assert {rows[(name, v)]["status"] for v in ("native", "paper", "tuned")} == {"ok"}
        paper = rows[(name, "paper")]["algorithms"].split(", ")  # e.g. "11x block_diagonal:32"
        assert all("block_diagonal" in part for part in paper)
        assert sum(int(part.split("x")[0]) for part in paper) == 13
        assert any(row["model"] == name for row in result["layers"])
    assert (output / "speedup-darknet-small.cfg.png").exists()
    assert (output / "speedup-caffe-small.prototxt.png").exists()


@pytest.mark.parametrize("kind", ["darknet", "caffe"])
def test_train_writes_the_trained_weights_in_the_files_format(tmp_path, files, kind, capsys):
    cfg, prototxt = files
    source = cfg if kind == "darknet" else prototxt
    output = tmp_path / "train"
    assert main(["train", f"--{'darknet-cfg' if kind == 'darknet' else 'caffe-prototxt'}",
                 str(source), "--epochs", "1", "--limit", "64", "--batch-size", "32",
                 "--block-size", "4", "--device", "cpu", "--output", str(output)]) == 0
    trained = output / ("trained.weights" if kind == "darknet" else "trained.caffemodel")
    assert str(trained) in capsys.readouterr().out
    load = load_darknet if kind == "darknet" else load_caffe
    model = load(source, trained)
    # started from the same seed as a fresh model: training moved the depthwise weights
    torch.manual_seed(0)
    fresh = load(source)
    depthwise = [(a, b) for a, b in zip(model.modules(), fresh.modules())
                 if isinstance(a, torch.nn.Conv2d) and a.groups > 1]
    assert len(depthwise) == 13
    assert not any(torch.equal(a.weight, b.weight) for a, b in depthwise)
    # and training again from the written file starts where it ended
    again = tmp_path / "again"
    assert main(["train", f"--{'darknet-cfg' if kind == 'darknet' else 'caffe-prototxt'}",
                 str(source), "--weights", str(trained), "--epochs", "1", "--limit", "32",
                 "--batch-size", "32", "--device", "cpu", "--output", str(again)]) == 0


@pytest.mark.parametrize("argv,message", [
    (["train", "--darknet-cfg", "{cfg}", "--size", "64"], "takes 32x32 input, fixed by the file"),
    (["train", "--weights", "x.weights"], "--weights goes with --darknet-cfg"),
    (["train", "--darknet-cfg", "{missing}"], "no such file"),
    (["bench", "--darknet-cfg", "{cfg}", "--size", "48"], "leave out --size 48"),
    (["train", "--darknet-cfg", "{cfg}", "--caffe-prototxt", "{prototxt}"], "not allowed with"),
])
def test_model_file_argument_errors_are_one_line(tmp_path, files, argv, message, capsys):
    cfg, prototxt = files
    names = {"cfg": cfg, "prototxt": prototxt, "missing": tmp_path / "missing.cfg"}
    argv = [a.format(**names) for a in argv] + ["--output", str(tmp_path / "out")]
    if "not allowed" in message:  # argparse's own check
        with pytest.raises(SystemExit):
            main(argv)
    else:
        assert main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error

