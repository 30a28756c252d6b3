"""The models the benchmarks know, with their inputs and sizes on GPU and CPU.

Each entry builds a model with random weights and makes a batch for it; ``size`` is the image side
(the sequence length for the 1D model). GPU defaults follow the paper (batch 64, 224x224); CPU
defaults are smaller so a run takes minutes on a 2-core machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from .model_files import is_model_file, load_model_file, model_file_loss, output_classes
from .models import CausalConvMixer, LargeKernelNet, MobileNetV1, X3DStyleNet


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    #: input shape for (batch, size)
    input_shape: Callable[[int, int], tuple[int, ...]]
    num_classes: int
    gpu_batch: int
    gpu_size: int
    cpu_batch: int
    cpu_size: int
    description: str
    #: the training loss on (model output, labels)
    loss: Callable = nn.functional.cross_entropy

    def defaults(self, device: torch.device) -> tuple[int, int]:
        """(batch, size) for this device type."""
        if device.type == "cuda":
            return self.gpu_batch, self.gpu_size
        return self.cpu_batch, self.cpu_size

    def make_batch(self, batch: int, size: int, device: torch.device, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(self.input_shape(batch, size), generator=generator, device="cpu").to(device)
        y = torch.randint(0, self.num_classes, (batch,), generator=generator,
                          device="cpu").to(device)
        return x, y


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


def _image(batch: int, size: int) -> tuple[int, ...]:
    return (batch, 3, size, size)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("mobilenet_v1", MobileNetV1, _image, 1000, 64, 224, 16, 224,
                  "MobileNet V1 1.0 (the paper's experiment)"),
        ModelSpec("mobilenet_v2", _torchvision("mobilenet_v2"), _image, 1000, 64, 224, 8, 160,
                  "torchvision MobileNetV2"),
        ModelSpec("mobilenet_v3_large", _torchvision("mobilenet_v3_large"), _image, 1000, 64, 224,
                  8, 160, "torchvision MobileNetV3-Large"),
        ModelSpec("efficientnet_b0", _torchvision("efficientnet_b0"), _image, 1000, 64, 224, 8,
                  160, "torchvision EfficientNet-B0"),
        ModelSpec("convnext_tiny", _torchvision("convnext_tiny"), _image, 1000, 64, 224, 4, 128,
                  "torchvision ConvNeXt-Tiny (7x7 depthwise)"),
        ModelSpec("regnet_y_400mf", _torchvision("regnet_y_400mf"), _image, 1000, 64, 224, 8, 160,
                  "torchvision RegNetY-400MF (grouped, 8 channels per group)"),
        ModelSpec("resnext50_32x4d", _torchvision("resnext50_32x4d"), _image, 1000, 64, 224, 4,
                  128, "torchvision ResNeXt-50 32x4d (grouped)"),
        ModelSpec("large_kernels", LargeKernelNet, _image, 1000, 64, 224, 4, 128,
                  "RepLKNet-style 13x13 and 31x31 depthwise layers"),
        ModelSpec("x3d_style", X3DStyleNet, lambda b, s: (b, 3, 8, s, s), 400, 32, 112, 4, 64,
                  "X3D-style 3D net (3x3x3 depthwise), 8 frames"),
        ModelSpec("causal_conv1d", CausalConvMixer, lambda b, s: (b, s, 256), 10, 64, 2048, 8, 512,
                  "Mamba-style causal depthwise conv1d blocks, width 512"),
    ]
}


def model_file_spec(name: str) -> ModelSpec:
    """A ``darknet:FILE.cfg`` or ``caffe:FILE.prototxt`` network; its file fixes the input size."""
    model = load_model_file(name)
    channels, height, width = model.input_shape
    return ModelSpec(name, lambda: load_model_file(name), lambda b, s: (b, channels, height, width),
                     output_classes(model), 64, height, 16, height,
                     f"{name} ({sum(p.numel() for p in model.parameters())} parameters)",
                     model_file_loss(model))


def get_model_spec(name: str) -> ModelSpec:
    if is_model_file(name):
        return model_file_spec(name)
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]
