"""A Darknet network as a PyTorch module: one child per cfg section, in cfg order, so that
``model.layers[i]`` is darknet's layer ``i`` (the numbers its ``from=`` and ``layers=`` options
use)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError
from .cfg import Section, read_cfg
from .layers import (
    ACTIVATIONS,
    Connected,
    Convolutional,
    GlobalAvgPool,
    MaxPool,
    Route,
    ScaleChannels,
    Shortcut,
    Softmax,
    Upsample,
    Yolo,
)

#: the weights file header written for a model that was not read from one (AlexeyAB's version)
DEFAULT_HEADER = (0, 2, 5, 0)

Shape = tuple[int, int, int]


class DarknetModel(nn.Module):
    """Darknet's forward pass: each layer reads the previous output, and route, shortcut and
    scale_channels layers also read the earlier outputs their ``sources`` name. Returns the last
    layer's output, or for a detector the inputs of its ``[yolo]`` heads in cfg order.

    ``input_shape`` is the cfg's (channels, height, width); ``header`` the weights file's
    (major, minor, revision, seen), written back unchanged by ``save_darknet_weights``.
    """

    def __init__(self, layers: list[nn.Module], kinds: list[str], input_shape: Shape,
                 output_shapes: list[Shape], cfg: str):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.kinds = kinds
        self.input_shape = input_shape
        self.output_shapes = output_shapes
        self.cfg = cfg
        self.header = DEFAULT_HEADER
        self.heads = [i for i, layer in enumerate(layers) if isinstance(layer, Yolo)]
        self.kept = {s for layer in layers for s in getattr(layer, "sources", ())} | set(self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.cfg} takes (N, {', '.join(map(str, self.input_shape))}) "
                             f"input (its [net] channels, height, width); got {tuple(x.shape)}")
        kept: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            if isinstance(layer, Route):
                x = layer(*(kept[s] for s in layer.sources))
            elif isinstance(layer, Shortcut):
                x = layer(x, *(kept[s] for s in layer.sources))
            elif isinstance(layer, ScaleChannels):
                x = layer(x, kept[layer.sources[0]])
            else:
                x = layer(x)
            if index in self.kept:
                kept[index] = x
        return [kept[i] for i in self.heads] if self.heads else x


def _source(section: Section, key: str, index: int, count: int | None = None) -> list[int]:
    """Darknet's layer references: negative counts back from this layer, else absolute."""
    found = [value + index if value < 0 else value for value in section.integers(key)]
    for value in found:
        if not 0 <= value < index:
            raise section.error(f"refers to layer {value}, but only layers 0..{index - 1} come "
                                "before this one", key)
    if count is not None and len(found) != count:
        raise section.error(f"takes {count} layer index(es), got {len(found)}", key)
    return found


def _activation(section: Section, default: str) -> nn.Module:
    name = section.text("activation", default)
    if name == "hardswish":
        raise section.error("darknet has no 'hardswish' (it would fall back to relu with a "
                            "warning); use hard_mish, relu6 or swish", "activation")
    if name not in ACTIVATIONS:
        raise section.error(f"'{name}' is not supported; use one of {', '.join(ACTIVATIONS)}",
                            "activation")
    return ACTIVATIONS[name]()


def _convolutional(section: Section, shape: Shape) -> tuple[nn.Module, Shape]:
    channels, height, width = shape
    filters = section.integer("filters", 1, minimum=1)
    size = section.integer("size", 1, minimum=1)
    stride = section.integer("stride", 1, minimum=1)
    stride_y = section.integer("stride_y", stride, minimum=1)
    stride_x = section.integer("stride_x", stride, minimum=1)
    groups = section.integer("groups", 1, minimum=1)
    dilation = section.integer("dilation", 1, minimum=1) if size > 1 else 1  # as darknet
    section.read.add("dilation")
    padding = section.integer("padding", 0, minimum=0)
    if section.integer("pad", 0):
        padding = size // 2
    batch_normalize = bool(section.integer("batch_normalize", 0))
    if channels % groups or filters % groups:
        raise section.error(f"groups={groups} must divide the {channels} input channels and the "
                            f"{filters} filters", "groups")
    conv = nn.Conv2d(channels, filters, size, stride=(stride_y, stride_x),
                     padding=padding * dilation, dilation=dilation, groups=groups,
                     bias=not batch_normalize)
    # darknet's output size leaves the dilation out; refuse where that differs from the conv
    out_h = (height + 2 * padding - size) // stride_y + 1
    out_w = (width + 2 * padding - size) // stride_x + 1
    ours = [(extent + 2 * padding * dilation - dilation * (size - 1) - 1) // step + 1
            for extent, step in ((height, stride_y), (width, stride_x))]
    if ours != [out_h, out_w] or min(out_h, out_w) < 1:
        raise section.error(f"gives a {out_h}x{out_w} output by darknet's formula but "
                            f"{ours[0]}x{ours[1]} by the convolution it runs (dilation "
                            f"{dilation}, padding {padding}, input {height}x{width})")
    layer = Convolutional(conv, batch_normalize, _activation(section, "logistic"))
    return layer, (filters, out_h, out_w)


def _maxpool(section: Section, shape: Shape) -> tuple[nn.Module, Shape]:
    channels, height, width = shape
    stride = section.integer("stride", 1, minimum=1)
    stride_y = section.integer("stride_y", stride, minimum=1)
    stride_x = section.integer("stride_x", stride, minimum=1)
    size = section.integer("size", stride, minimum=1)
    padding = section.integer("padding", size - 1, minimum=0)
    for key in ("maxpool_depth", "antialiasing", "maxpool_zero_nonmax"):
        section.require_default(key, "0", "not reproduced here")
    section.require_default("out_channels", "1", "only with maxpool_depth")
    out = ((height + padding - size) // stride_y + 1, (width + padding - size) // stride_x + 1)
    if min(out) < 1:
        raise section.error(f"a {size}x{size} window does not fit the {height}x{width} input")
    return MaxPool(size, (stride_y, stride_x), padding, out, (height, width)), (channels, *out)


def _layer(section: Section, index: int, shapes: list[Shape], shape: Shape) \
        -> tuple[nn.Module, Shape]:
    kind = section.kind
    if kind == "convolutional":
        return _convolutional(section, shape)
    if kind == "maxpool":
        return _maxpool(section, shape)
    if kind == "avgpool":
        return GlobalAvgPool(), (shape[0], 1, 1)
    if kind == "route":
        sources = _source(section, "layers", index)
        groups = section.integer("groups", 1, minimum=1)
        group_id = section.integer("group_id", 0, minimum=0)
        if group_id >= groups:
            raise section.error(f"group_id={group_id} must be below groups={groups}", "group_id")
        picked = [shapes[s] for s in sources]
        if any(p[1:] != picked[0][1:] for p in picked) or any(p[0] % groups for p in picked):
            raise section.error(f"joins layers of shapes {picked} (C, H, W): they need the same "
                                f"height and width and channels divisible by groups={groups}",
                                "layers")
        return Route(sources, groups, group_id), \
            (sum(p[0] for p in picked) // groups, *picked[0][1:])
    if kind == "shortcut":
        sources = _source(section, "from", index)
        section.require_default("weights_type", "none", "weighted shortcuts are not reproduced")
        section.require_default("weights_normalization", "none", "only with weights_type")
        if any(shapes[s] != shape for s in sources):
            raise section.error(f"adds layers of shapes {[shapes[s] for s in sources]} to the "
                                f"previous {shape}; darknet's partial sums of different shapes "
                                "are not reproduced", "from")
        return Shortcut(sources, _activation(section, "linear")), shape
    if kind == "scale_channels":
        source = _source(section, "from", index, count=1)
        section.require_default("scale_wh", "0", "only per-channel scaling is reproduced")
        if shape != (shapes[source[0]][0], 1, 1):
            raise section.error(f"scales a {shapes[source[0]]} map by the previous layer's {shape}"
                                "; the previous layer must give one value per channel", "from")
        return ScaleChannels(source, _activation(section, "linear")), shapes[source[0]]
    if kind == "upsample":
        stride = section.integer("stride", 2, minimum=1)
        return Upsample(stride, section.number("scale", 1.0)), \
            (shape[0], shape[1] * stride, shape[2] * stride)
    if kind == "dropout":
        probability = section.number("probability", 0.2)
        section.require_default("dropblock", "0", "DropBlock is not reproduced")
        return nn.Dropout(probability), shape
    if kind == "connected":
        outputs = section.integer("output", 1, minimum=1)
        layer = Connected(shape[0] * shape[1] * shape[2], outputs,
                          bool(section.integer("batch_normalize", 0)),
                          _activation(section, "logistic"))
        return layer, (outputs, 1, 1)
    if kind == "softmax":
        groups = section.integer("groups", 1, minimum=1)
        section.require_default("spatial", "0", "spatial softmax is not reproduced")
        if (shape[0] * shape[1] * shape[2]) % groups:
            raise section.error(f"groups={groups} must divide the layer's {shape} values", "groups")
        return Softmax(groups, section.number("temperature", 1.0)), shape
    if kind == "yolo":
        return Yolo(), shape
    if kind == "cost":
        return nn.Identity(), shape
    raise section.error("is not a layer type we read; supported: convolutional, maxpool, avgpool, "
                        "route, shortcut, scale_channels, upsample, dropout, connected, softmax, "
                        "yolo, cost")


#: sections whose options only steer training or decoding, so any key is accepted
TRAINING_ONLY = {"net", "yolo", "cost"}


def build_darknet(cfg: str | Path) -> DarknetModel:
    """The module a cfg describes, with PyTorch's default initial weights."""
    sections = read_cfg(cfg)
    net = sections[0]
    input_shape = (net.integer("channels", 3, minimum=1), net.integer("height", minimum=1),
                   net.integer("width", minimum=1))
    net.check_all_read(accept_any=True)
    if len(sections) == 1:
        raise ModelFileError(cfg, "has no layers after [net]")
    layers, shapes, shape = [], [], input_shape
    for index, section in enumerate(sections[1:]):
        layer, shape = _layer(section, index, shapes, shape)
        section.check_all_read(accept_any=section.kind in TRAINING_ONLY)
        layers.append(layer)
        shapes.append(shape)
    return DarknetModel(layers, [s.kind for s in sections[1:]], input_shape, shapes, str(cfg))
