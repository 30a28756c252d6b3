"""Darknet cfgs and Caffe prototxts written here for the tests (and, at full size, the examples):
MobileNet V1 and V2, EfficientNet-B0 (swish, squeeze-excitation, 5x5 depthwise) and
EfficientNet-lite (relu6, no squeeze-excitation), each at a width multiplier and resolution, plus
a small detector with darknet's route groups, stride-1 maxpool, upsample and [yolo] heads."""

from __future__ import annotations

MOBILENET_V1 = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
#: (expansion, kernel, first stride, output channels, repeats) of the inverted-residual stages
MOBILENET_V2 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 3, 2, 32, 3), (6, 3, 2, 64, 4),
                (6, 3, 1, 96, 3), (6, 3, 2, 160, 3), (6, 3, 1, 320, 1)]
EFFICIENTNET_B0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                   (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def scaled(channels: int, multiplier: float) -> int:
    return max(8, int(channels * multiplier + 4) // 8 * 8)


def inverted_residuals(stages, multiplier: float):
    """Each block of the ``stages`` in turn: (number from 1, expansion, kernel, stride, input
    channels, output channels), the channels scaled by ``multiplier``."""
    channels, number = scaled(32, multiplier), 0
    for expansion, kernel, first_stride, out, repeats in stages:
        out = scaled(out, multiplier)
        for repeat in range(repeats):
            number += 1
            yield number, expansion, kernel, first_stride if repeat == 0 else 1, channels, out
            channels = out


class Cfg:
    """A Darknet cfg being written; ``add`` returns the new layer's index."""

    def __init__(self, resolution: int, channels: int = 3):
        self.parts = [f"[net]\nbatch=1\nwidth={resolution}\nheight={resolution}\n"
                      f"channels={channels}\n"]
        self.count = 0

    def add(self, kind: str, **options) -> int:
        lines = [f"[{kind}]"] + [f"{key}={value}" for key, value in options.items()]
        self.parts.append("\n".join(lines) + "\n")
        self.count += 1
        return self.count - 1

    def conv(self, filters: int, size: int = 1, stride: int = 1, groups: int = 1,
             activation: str = "linear", batch_normalize: int = 1) -> int:
        options = {"batch_normalize": batch_normalize} if batch_normalize else {}
        options.update(filters=filters, size=size, stride=stride, pad=1)
        if groups > 1:
            options["groups"] = groups
        return self.add("convolutional", **options, activation=activation)

    def head(self, classes: int, softmax: bool) -> str:
        self.add("avgpool")
        self.add("connected", output=classes, activation="linear")
        if softmax:
            self.add("softmax", groups=1)
        return "\n".join(self.parts)


def mobilenet_v1_cfg(multiplier: float = 0.25, resolution: int = 64, activation: str = "leaky",
                     classes: int = 10, softmax: bool = False) -> str:
    cfg = Cfg(resolution)
    channels = scaled(32, multiplier)
    cfg.conv(channels, 3, 2, activation=activation)
    for out, stride in MOBILENET_V1:
        cfg.conv(channels, 3, stride, groups=channels, activation=activation)
        channels = scaled(out, multiplier)
        cfg.conv(channels, activation=activation)
    return cfg.head(classes, softmax)


def mobilenet_v2_cfg(multiplier: float = 0.25, resolution: int = 64, activation: str = "relu6",
                     classes: int = 10) -> str:
    cfg = Cfg(resolution)
    last = cfg.conv(scaled(32, multiplier), 3, 2, activation=activation)
    for _, expansion, kernel, stride, channels, out in inverted_residuals(MOBILENET_V2,
                                                                          multiplier):
        hidden = channels * expansion
        if expansion != 1:
            cfg.conv(hidden, activation=activation)
        cfg.conv(hidden, kernel, stride, groups=hidden, activation=activation)
        project = cfg.conv(out)
        if stride == 1 and channels == out:
            project = cfg.add("shortcut", **{"from": last}, activation="linear")
        last = project
    cfg.conv(scaled(1280, multiplier), activation=activation)
    return cfg.head(classes, False)


def efficientnet_cfg(multiplier: float = 0.25, resolution: int = 64, lite: bool = False,
                     activation: str | None = None, classes: int = 10) -> str:
    """EfficientNet-B0 (swish, squeeze-excitation) or, with ``lite``, EfficientNet-lite
    (relu6, none)."""
    activation = activation or ("relu6" if lite else "swish")
    cfg = Cfg(resolution)
    last = cfg.conv(scaled(32, multiplier), 3, 2, activation=activation)
    for _, expansion, kernel, stride, channels, out in inverted_residuals(EFFICIENTNET_B0,
                                                                          multiplier):
        hidden = channels * expansion
        if expansion != 1:
            cfg.conv(hidden, activation=activation)
        depthwise = cfg.conv(hidden, kernel, stride, groups=hidden, activation=activation)
        if not lite:
            cfg.add("avgpool")
            cfg.conv(max(1, channels // 4), activation=activation, batch_normalize=0)
            cfg.conv(hidden, activation="logistic", batch_normalize=0)
            cfg.add("scale_channels", **{"from": depthwise})
        project = cfg.conv(out)
        if stride == 1 and channels == out:
            project = cfg.add("shortcut", **{"from": last}, activation="linear")
        last = project
    cfg.conv(scaled(1280, multiplier), activation=activation)
    return cfg.head(classes, False)


def detector_cfg(resolution: int = 64, yolo: bool = True) -> str:
    """A yolov4-tiny-like detector: route groups, stride-1 maxpool, upsample, two heads."""
    cfg = Cfg(resolution)
    cfg.conv(16, 3, 2, activation="leaky")
    cfg.conv(32, 3, 2, activation="mish")
    split = cfg.conv(32, 3, 1, activation="leaky")
    cfg.add("route", layers=-1, groups=2, group_id=1)
    cfg.conv(16, 3, 1, activation="swish")
    cfg.add("route", layers=f"-1,{split}")
    cfg.add("maxpool", size=2, stride=2)
    cfg.add("maxpool", size=2, stride=1)
    deep = cfg.conv(64, 3, 1, activation="leaky")
    cfg.conv(27, 1, 1, activation="linear", batch_normalize=0)
    if yolo:
        cfg.add("yolo", mask="0,1,2", anchors="10,14, 23,27, 37,58, 81,82, 135,169, 344,319",
                classes=4, num=6)
    cfg.add("route", layers=deep)
    cfg.conv(16, 1, 1, activation="leaky")
    cfg.add("upsample", stride=2)
    cfg.add("route", layers=f"-1,{split}")
    cfg.conv(27, 1, 1, activation="linear", batch_normalize=0)
    if yolo:
        cfg.add("yolo", mask="3,4,5", anchors="10,14, 23,27, 37,58, 81,82, 135,169, 344,319",
                classes=4, num=6)
    return "\n".join(cfg.parts)


class Prototxt:
    """A Caffe deploy prototxt being written; each method returns its top's name."""

    def __init__(self, name: str, resolution: int, channels: int = 3):
        self.lines = [f'name: "{name}"',
                      'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 '
                      f'dim: {channels} dim: {resolution} dim: {resolution} }} }} }}']

    def layer(self, name: str, kind: str, bottoms: list[str], top: str, params: str = "") -> str:
        inputs = " ".join(f'bottom: "{b}"' for b in bottoms)
        self.lines.append(f'layer {{ name: "{name}" type: "{kind}" {inputs} top: "{top}" '
                          f'{params}}}')
        return top

    def conv(self, name: str, bottom: str, filters: int, size: int = 1, stride: int = 1,
             groups: int = 1, activation: str = "ReLU", batch_norm: bool = True,
             kind: str = "Convolution") -> str:
        group = f"group: {groups} engine: CAFFE " if groups > 1 else ""
        self.layer(name, kind, [bottom], name,
                   f"param {{ lr_mult: 1 decay_mult: 1 }} convolution_param {{ num_output: "
                   f"{filters} bias_term: {str(not batch_norm).lower()} pad: {size // 2} "
                   f"kernel_size: {size} stride: {stride} {group}weight_filler {{ type: \"msra\" }} }} ")
        if batch_norm:
            self.layer(f"{name}/bn", "BatchNorm", [name], name,
                       "batch_norm_param { use_global_stats: true eps: 1e-05 } ")
            self.layer(f"{name}/scale", "Scale", [name], name, "scale_param { bias_term: true } ")
        if activation:
            self.layer(f"{name}/{activation.lower()}", activation, [name], name)
        return name

    def head(self, bottom: str, classes: int, softmax: bool) -> str:
        pooled = self.layer("pool", "Pooling", [bottom], "pool",
                            "pooling_param { pool: AVE global_pooling: true } ")
        out = self.layer("fc", "InnerProduct", [pooled], "fc",
                         f"inner_product_param {{ num_output: {classes} }} ")
        if softmax:
            self.layer("prob", "Softmax", [out], "prob")
        return "\n".join(self.lines) + "\n"


def mobilenet_v1_prototxt(multiplier: float = 0.25, resolution: int = 64, classes: int = 10,
                          softmax: bool = False) -> str:
    net = Prototxt("MobileNet V1", resolution)
    channels = scaled(32, multiplier)
    x = net.conv("conv1", "data", channels, 3, 2)
    for index, (out, stride) in enumerate(MOBILENET_V1, start=2):
        x = net.conv(f"conv{index}/dw", x, channels, 3, stride, groups=channels)
        channels = scaled(out, multiplier)
        x = net.conv(f"conv{index}/sep", x, channels)
    return net.head(x, classes, softmax)


def mobilenet_v2_prototxt(multiplier: float = 0.25, resolution: int = 64,
                          classes: int = 10) -> str:
    net = Prototxt("MobileNet V2", resolution)
    x = net.conv("conv1", "data", scaled(32, multiplier), 3, 2, activation="ReLU6")
    for block, expansion, kernel, stride, channels, out in inverted_residuals(MOBILENET_V2,
                                                                              multiplier):
        hidden, y = channels * expansion, x
        if expansion != 1:
            y = net.conv(f"block{block}/expand", y, hidden, activation="ReLU6")
        y = net.conv(f"block{block}/dw", y, hidden, kernel, stride, groups=hidden,
                     activation="ReLU6")
        y = net.conv(f"block{block}/project", y, out, activation="")
        if stride == 1 and channels == out:
            y = net.layer(f"block{block}/add", "Eltwise", [x, y], f"block{block}/add")
        x = y
    x = net.conv("conv_last", x, scaled(1280, multiplier), activation="ReLU6")
    return net.head(x, classes, False)


def efficientnet_prototxt(multiplier: float = 0.25, resolution: int = 64, lite: bool = False,
                          classes: int = 10, depthwise_type: str = "Convolution") -> str:
    """EfficientNet-B0 (Swish; squeeze-excitation as global pooling, two 1x1 convolutions and a
    two-bottom Scale) or EfficientNet-lite (ReLU6), with ``depthwise_type`` for the depthwise
    layers (a fork's ``DepthwiseConvolution`` or ``ConvolutionDepthwise``)."""
    activation = "ReLU6" if lite else "Swish"
    net = Prototxt("EfficientNet-lite" if lite else "EfficientNet-B0", resolution)
    x = net.conv("stem", "data", scaled(32, multiplier), 3, 2, activation=activation)
    for block, expansion, kernel, stride, channels, out in inverted_residuals(EFFICIENTNET_B0,
                                                                              multiplier):
        hidden, y, name = channels * expansion, x, f"block{block}"
        if expansion != 1:
            y = net.conv(f"{name}/expand", y, hidden, activation=activation)
        y = net.conv(f"{name}/dw", y, hidden, kernel, stride, groups=hidden,
                     activation=activation, kind=depthwise_type)
        if not lite:
            pooled = net.layer(f"{name}/se/pool", "Pooling", [y], f"{name}/se/pool",
                               "pooling_param { pool: AVE global_pooling: true } ")
            squeezed = net.conv(f"{name}/se/reduce", pooled, max(1, channels // 4),
                                activation=activation, batch_norm=False)
            gate = net.conv(f"{name}/se/expand", squeezed, hidden, activation="Sigmoid",
                            batch_norm=False)
            flat = net.layer(f"{name}/se/flatten", "Flatten", [gate], f"{name}/se/flat")
            y = net.layer(f"{name}/se/scale", "Scale", [y, flat], f"{name}/se",
                          "scale_param { axis: 0 } ")
        y = net.conv(f"{name}/project", y, out, activation="")
        if stride == 1 and channels == out:
            y = net.layer(f"{name}/add", "Eltwise", [x, y], f"{name}/add")
        x = y
    x = net.conv("head", x, scaled(1280, multiplier), activation=activation)
    return net.head(x, classes, False)
