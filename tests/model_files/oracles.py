"""The independent runtimes our model files are checked against: OpenCV's DNN module (4.x, which
reads both Darknet and Caffe files) and Debian's darknet package, plus the random statistics that
make a batch-norm check mean something."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diagonalwise.darknet import save_darknet_weights

#: OpenCV's Darknet importer uses batch-norm epsilon 1e-6 (the original darknet divides by
#: sqrt(var) + 1e-6); AlexeyAB's darknet, which we follow, 1e-5. Checks against those runtimes set
#: ours to 1e-6 so that only float32 rounding is left.
ORIGINAL_DARKNET_EPS = 1e-6

#: float32 outputs of networks 20-60 layers deep: largest difference over largest value
FLOAT32_TOLERANCE = 2e-5

DARKNET_LIBRARY = Path("/usr/lib/darknet/libdarknet.so")


def cv2():
    return pytest.importorskip("cv2", reason="OpenCV 4.x (opencv-python-headless<5) is the oracle")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch-norm statistics, scales and shifts away from their identity initialization."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                    module.bias.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            elif type(module).__name__ == "CaffeScale":
                for parameter in module.parameters():
                    parameter.copy_(torch.rand(parameter.shape, generator=generator) + 0.5)
    return model


def example_input(model: nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A random batch of the size the model file declares."""
    return torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(seed))


def train_with_the_method(model: nn.Module, block_size: int, converted: int) -> None:
    """Convert ``model``'s depthwise layers (``converted`` of them) to the paper's method and
    train three SGD steps on random 10-class data; the converted weights must have moved."""
    import diagonalwise as dw

    dw.convert(model, block_size=block_size)
    weights = [m.weight for m in model.modules() if dw.is_converted(m)]
    assert len(weights) == converted
    before = [w.detach().clone() for w in weights]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(8, *model.input_shape, generator=generator)
        y = torch.randint(0, 10, (8,), generator=generator)
        loss = nn.functional.cross_entropy(model(x).flatten(1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not any(torch.equal(a, b) for a, b in zip(before, weights))


def with_eps(model: nn.Module, eps: float) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps
    return model


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.size == theirs.size, (ours.shape, theirs.shape)
    return float(np.abs(ours.reshape(theirs.shape) - theirs).max() / np.abs(theirs).max())


def opencv_darknet(cfg: Path, weights: Path, x: torch.Tensor) -> np.ndarray:
    return _per_sample(cv2().dnn.readNetFromDarknet(str(cfg), str(weights)), x)


def opencv_caffe(prototxt: Path, caffemodel: Path, x: torch.Tensor) -> np.ndarray:
    return _per_sample(cv2().dnn.readNetFromCaffe(str(prototxt), str(caffemodel)), x)


def _per_sample(net, x: torch.Tensor) -> np.ndarray:
    """One sample at a time: OpenCV's Scale layer with a second input (squeeze-excitation,
    darknet's scale_channels) assumes batch 1 (opencv/opencv#16630)."""
    outputs = []
    for sample in x.numpy():
        net.setInput(sample[None])
        outputs.append(net.forward().copy())  # forward() reuses its output buffer
    return np.concatenate(outputs)


def debian_darknet(cfg: Path, weights: Path, x: torch.Tensor, count: int, tmp: Path) -> np.ndarray:
    """The original darknet's output for each sample (``count`` floats), from libdarknet.so."""
    if not DARKNET_LIBRARY.exists():
        pytest.skip("Debian's darknet package is not installed (make test installs it as root)")
    np.save(tmp / "input.npy", x.numpy())
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("darknet_runner.py")), str(cfg),
         str(weights), str(tmp / "input.npy"), str(count), str(tmp / "output.npy")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return np.load(tmp / "output.npy")


def write_darknet(tmp: Path, name: str, text: str, model=None) -> tuple[Path, Path]:
    """``name.cfg`` and, from ``model`` (built from it if None), ``name.weights`` in ``tmp``."""
    from diagonalwise.darknet import load_darknet

    cfg = tmp / f"{name}.cfg"
    cfg.write_text(text)
    model = model if model is not None else randomize(load_darknet(cfg))
    weights = tmp / f"{name}.weights"
    save_darknet_weights(model, weights)
    return cfg, weights
