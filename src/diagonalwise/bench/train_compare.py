"""``diagonalwise train``: train a model natively and converted, on real data, and compare.

The data is scikit-learn's handwritten digits (1,797 8x8 images that ship with the package, so no
download) upsampled to ``--size``, or any ImageFolder directory. All runs start from the same
weights and see the same batches in the same order. Small networks trained with SGD are chaotic:
a rounding difference in step 1 can grow tenfold per step (seen here: MobileNet V1 on the digits,
float64, 1e-14 after one step, 1e-2 after ten). So a third, control run computes the native model
with native convolutions in another memory layout (the same arithmetic, other rounding), and the
curves match when the diagonalwise run stays within ``CURVE_TOLERANCE`` of native or within ten
times the control's own gap.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..atomic_files import write_json_atomic
from ..conversion import convert
from ..errors import UsageError
from ..timing import environment, synchronize
from ..tuning import tune
from .model_files import (
    check_size,
    is_model_file,
    load_model_file,
    model_file_loss,
    output_classes,
    save_model_file,
)
from .models import MobileNetV1
from .results import provenance

#: Largest relative gap between the two loss curves that still counts as a match, per dtype.
CURVE_TOLERANCE = {"float64": 1e-8, "float32": 1e-2}


def relative_loss_gap(reference: list[float], losses: list[float]) -> float:
    """The largest gap between two loss curves, relative to the largest finite reference loss.
    A step where either loss is not finite counts as equal only if both are the same value
    (NaN and NaN, or the same infinity); otherwise the gap is infinite. Curves of different
    lengths never match."""
    if len(reference) != len(losses):
        return math.inf
    largest = 0.0
    for want, got in zip(reference, losses):
        if math.isfinite(want) and math.isfinite(got):
            largest = max(largest, abs(want - got))
        elif not (want == got or (math.isnan(want) and math.isnan(got))):
            return math.inf
    scale = max((abs(v) for v in reference if math.isfinite(v)), default=0.0) or 1.0
    return largest / scale


def curves_match(gap: float, control_gap: float, tolerance: float) -> bool:
    """The diagonalwise curve matches native if its gap is within ``tolerance`` or within ten
    times the rounding control's (when the control itself stayed finite)."""
    allowed = max(tolerance, 10 * control_gap) if math.isfinite(control_gap) else tolerance
    return gap <= allowed


@dataclass(frozen=True)
class TrainConfig:
    """What ``diagonalwise train`` runs; ``block_size`` is an int, None (the paper's 32 channels
    per block) or ``"auto"`` (autotune on a training batch). ``model`` may be a model file
    (``darknet:FILE.cfg``, ``caffe:FILE.prototxt``, starting from ``weights`` if given), whose
    input size is its own; ``size`` None is 32 for the built-in models."""

    model: str = "mobilenet_v1"
    data: str = "digits"
    epochs: int = 3
    batch_size: int = 64
    size: int | None = None
    width: float = 0.5
    lr: float = 0.05
    dtype: str = "float32"
    block_size: int | str | None = None
    limit: int | None = None
    weights: str | None = None


def digits_dataset(size: int, limit: int | None = None):
    """(train, test, classes): the digits as 3-channel size x size images, normalised, 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                       align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0), device="cpu")
    split = int(0.8 * len(labels))
    train, test = order[:split], order[split:]
    if limit:
        train = train[:limit]
    return (TensorDataset(images[train], labels[train]), TensorDataset(images[test], labels[test]),
            10)


def image_folder_dataset(path: str, size: int, limit: int | None = None):
    from torchvision import datasets, transforms

    if not Path(path).is_dir():
        raise UsageError(f"--data {path!r} is neither 'digits' nor a directory")
    transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
    dataset = datasets.ImageFolder(path, transform=transform)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0),
                           device="cpu").tolist()
    split = max(1, int(0.8 * len(order)))
    train = order[:split][:limit] if limit else order[:split]
    return (torch.utils.data.Subset(dataset, train), torch.utils.data.Subset(dataset, order[split:]),
            len(dataset.classes))


def build_model(name: str, classes: int, width: float) -> nn.Module:
    if name == "mobilenet_v1":
        return MobileNetV1(num_classes=classes, width=width)
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=classes)


def train_run(model: nn.Module, train_set, test_set, *, epochs: int, batch_size: int, lr: float,
              device: torch.device, dtype: torch.dtype, label: str,
              loss_function=nn.functional.cross_entropy) -> dict:
    """Train with SGD; return per-step losses, per-epoch seconds and test accuracy."""
    from tqdm.auto import tqdm

    model = model.to(device=device, dtype=dtype).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    losses, epoch_seconds = [], []
    torch.manual_seed(0)
    for epoch in range(epochs):
        synchronize(device)
        start = time.perf_counter()
        for images, labels in tqdm(loader, desc=f"{label} epoch {epoch + 1}/{epochs}",
                                   leave=False):
            images, labels = images.to(device=device, dtype=dtype), labels.to(device)
            loss = loss_function(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        synchronize(device)
        epoch_seconds.append(time.perf_counter() - start)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in DataLoader(test_set, batch_size=256):
            predictions = model(images.to(device=device, dtype=dtype)).flatten(1).argmax(1).cpu()
            correct += (predictions == labels).sum().item()
            total += len(labels)
    return {"losses": losses, "epoch_seconds": epoch_seconds,
            "test_accuracy": correct / max(1, total)}


def plot_curves(runs: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for (label, run), style in zip(runs.items(), ("-", "--", ":")):
        axis.plot(run["losses"], style, label=f"{label} ({sum(run['epoch_seconds']):.1f} s)")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title(title, fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def train_both(config: TrainConfig, device: torch.device, output: Path, command: list[str]) -> int:
    """Train native, converted and the rounding control; write train.json and losses.png to
    ``output``; print the comparison. Returns 0 when the curves match, 1 otherwise."""
    dtype = getattr(torch, config.dtype)
    torch.manual_seed(0)
    loss_function, size = nn.functional.cross_entropy, config.size or 32
    if is_model_file(config.model):
        native = load_model_file(config.model, config.weights)
        check_size(config.model, native, config.size)
        if native.input_shape[0] != 3 or native.input_shape[1] != native.input_shape[2]:
            raise UsageError(f"{config.model} takes {native.input_shape} input; training takes "
                             "square RGB images")
        size, loss_function = native.input_shape[-1], model_file_loss(native)
    if config.data == "digits":
        train_set, test_set, classes = digits_dataset(size, config.limit)
    else:
        train_set, test_set, classes = image_folder_dataset(config.data, size, config.limit)
    if is_model_file(config.model):
        outputs = output_classes(native)
        if outputs < classes:
            raise UsageError(f"{config.model} gives {outputs} value(s) per image; the data has "
                             f"{classes} classes (a classifier is needed)")
    else:
        native = build_model(config.model, classes, config.width)
    if config.block_size == "auto":
        example = torch.stack([train_set[i][0] for i in range(min(config.batch_size,
                                                                   len(train_set)))])
        converted = copy.deepcopy(native).to(device=device, dtype=dtype)
        tune(converted, (example.to(device, dtype),))
    else:
        converted = convert(copy.deepcopy(native), block_size=config.block_size)
    control = convert(copy.deepcopy(native), algorithm="native_channels_last")
    runs = {}
    for label, model in (("native", native), ("diagonalwise", converted),
                         ("rounding control", control)):
        runs[label] = train_run(model, train_set, test_set, epochs=config.epochs,
                                batch_size=config.batch_size, lr=config.lr, device=device,
                                dtype=dtype, label=label, loss_function=loss_function)

    native_losses = runs["native"]["losses"]
    gap = relative_loss_gap(native_losses, runs["diagonalwise"]["losses"])
    control_gap = relative_loss_gap(native_losses, runs["rounding control"]["losses"])
    match = curves_match(gap, control_gap, CURVE_TOLERANCE[config.dtype])
    env = environment(device)
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "train.json", {
        "provenance": provenance(env, command, {k: str(v) for k, v in asdict(config).items()}),
        "runs": runs, "relative_loss_gap": gap, "control_relative_loss_gap": control_gap,
        "match": match})
    plot_curves(runs, output / "losses.png",
                f"{config.model} on {config.data}, {config.dtype}, {device}: losses must coincide")
    for label, run in runs.items():
        per_epoch = sum(run["epoch_seconds"]) / len(run["epoch_seconds"])
        print(f"{label:<17} {per_epoch:8.2f} s/epoch  final loss {run['losses'][-1]:.4f}  "
              f"test accuracy {run['test_accuracy']:.3f}")
    print(f"largest loss gap to native, relative: diagonalwise {gap:.1e}, rounding control "
          f"{control_gap:.1e}: {'curves match' if match else 'MISMATCH'}")
    print(f"results written to {output / 'train.json'} and {output / 'losses.png'}")
    if is_model_file(config.model):
        print(f"the {'autotuned' if config.block_size == 'auto' else 'diagonalwise'} model's "
              f"trained weights: {save_model_file(converted, config.model, output)}")
    return 0 if match else 1
