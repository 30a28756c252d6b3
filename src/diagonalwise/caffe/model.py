"""A Caffe network (deploy ``.prototxt``, TEST phase) as a PyTorch module: one child per layer
in file order, reading and writing blobs by name, so in-place layers (``top`` equal to
``bottom``) work as in Caffe. Shapes are found by running each new layer on meta tensors."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError
from .layers import (
    CaffeBatchNorm,
    CaffeConcat,
    CaffeEltwise,
    CaffeInnerProduct,
    CaffePooling,
    CaffeScale,
    CaffeSwish,
    caffe_pooled_size,
)
from .schema import ENUMS, message_class

DEPTHWISE_TYPES = ("DepthwiseConvolution", "ConvolutionDepthwise")
SUPPORTED_TYPES = ("Input", "Convolution", *DEPTHWISE_TYPES, "BatchNorm", "Scale", "ReLU", "ReLU6",
                   "Clip", "Sigmoid", "TanH", "Swish", "Pooling", "InnerProduct", "Softmax",
                   "Eltwise", "Concat", "Flatten", "Dropout")
TEST_PHASE = ENUMS["Phase"]["TEST"]


class CaffeModel(nn.Module):
    """Caffe's forward pass in the TEST phase. ``layers[i]`` is the i-th kept layer of the
    prototxt, named ``names[i]``; it reads the blobs ``bottoms[i]`` and writes ``tops[i]``. Takes
    one tensor per network input (``input_names``, of ``input_shapes``) and returns the last
    layer's top. ``definition`` is the parsed prototxt, which ``save_caffemodel`` writes back
    with the weights, as Caffe's own snapshots do."""

    def __init__(self, layers: list[nn.Module], names: list[str], bottoms: list[list[str]],
                 tops: list[list[str]], input_names: list[str],
                 input_shapes: list[tuple[int, ...]], definition: bytes, prototxt: str):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.names, self.bottoms, self.tops = names, bottoms, tops
        self.input_names, self.input_shapes = input_names, input_shapes
        self.definition, self.prototxt = definition, prototxt

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The (C, H, W) of the only input, as the benchmarks and trainer ask."""
        if len(self.input_shapes) != 1:
            raise ValueError(f"{self.prototxt} has {len(self.input_shapes)} inputs")
        return tuple(self.input_shapes[0][1:])

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.prototxt} takes {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}); got {len(inputs)}")
        for name, shape, x in zip(self.input_names, self.input_shapes, inputs):
            if tuple(x.shape[1:]) != tuple(shape[1:]):
                raise ValueError(f"{self.prototxt}: input '{name}' is (N, "
                                 f"{', '.join(map(str, shape[1:]))}); got {tuple(x.shape)}")
        blobs = dict(zip(self.input_names, inputs))
        for layer, bottoms, tops in zip(self.layers, self.bottoms, self.tops):
            blobs[tops[0]] = layer(*(blobs[b] for b in bottoms))
        outputs = tuple(blobs[t] for t in self.tops[-1])
        return outputs[0] if len(outputs) == 1 else outputs


def _meets(rule, level: int = 0) -> bool:
    """Caffe's StateMeetsRule for the TEST phase, level 0 and no stages."""
    if rule.HasField("phase") and rule.phase != TEST_PHASE:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    return not rule.stage


def _kept(layer) -> bool:
    if layer.include:
        return any(_meets(rule) for rule in layer.include)
    return not any(_meets(rule) for rule in layer.exclude)


class _Place:
    """Where a layer is in the file, for errors."""

    def __init__(self, path: str, text: str):
        self.path, self.text, self.start = path, text, 0

    def find(self, name: str) -> int | None:
        match = re.compile(r'name\s*:\s*["\']' + re.escape(name) + r'["\']').search(self.text,
                                                                                    self.start)
        if match is None:
            return None
        self.start = match.end()
        return self.text.count("\n", 0, match.start()) + 1


def _either(param, name: str) -> bool:
    """Whether ``name_h`` or ``name_w`` is set (Caffe then takes both, the other at its default)."""
    return param.HasField(f"{name}_h") or param.HasField(f"{name}_w")


def _pair(values, single_h, single_w, has_h: bool, default: int, what: str, error) -> tuple[int, int]:
    """Caffe's 2-D spatial option: ``what_h``/``what_w``, or ``what`` given once or twice."""
    if has_h:
        if values:
            raise error(f"give either {what} or {what}_h/{what}_w, not both", what)
        return single_h, single_w
    if len(values) > 2:
        raise error(f"has {len(values)} values; a 2-D layer takes 1 or 2", what)
    if not values:
        return default, default
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _convolution(layer, shape, error) -> nn.Module:
    param = layer.convolution_param
    if len(shape) != 4:
        raise error(f"takes a 4-D (N, C, H, W) bottom; got shape {shape}", "bottom")
    if param.axis != 1:
        raise error("only axis: 1 (channels) is supported", "convolution_param.axis")
    channels = shape[1]
    kernel = _pair(param.kernel_size, param.kernel_h, param.kernel_w,
                   _either(param, "kernel"), 0, "kernel_size", error)
    if min(kernel) < 1:
        raise error("needs kernel_size (or kernel_h and kernel_w)", "convolution_param.kernel_size")
    stride = _pair(param.stride, param.stride_h, param.stride_w, _either(param, "stride"), 1,
                   "stride", error)
    pad = _pair(param.pad, param.pad_h, param.pad_w, _either(param, "pad"), 0, "pad", error)
    dilation = _pair(param.dilation, 0, 0, False, 1, "dilation", error)
    groups = param.group
    if layer.type in DEPTHWISE_TYPES:
        if param.HasField("group") and groups != channels:
            raise error(f"{layer.type} is depthwise: group must be the {channels} input channels",
                        "convolution_param.group")
        groups = channels
    if not param.HasField("num_output") or param.num_output < 1:
        raise error("needs num_output", "convolution_param.num_output")
    if channels % groups or param.num_output % groups:
        raise error(f"group {groups} must divide the {channels} input channels and num_output "
                    f"{param.num_output}", "convolution_param.group")
    return nn.Conv2d(channels, param.num_output, kernel, stride=stride, padding=pad,
                     dilation=dilation, groups=groups, bias=param.bias_term)


def _pooling(layer, shape, error) -> nn.Module:
    param = layer.pooling_param
    methods = {v: k for k, v in ENUMS["PoolingParameter.PoolMethod"].items()}
    method = methods[param.pool]
    if method == "STOCHASTIC":
        raise error("STOCHASTIC pooling is not supported", "pooling_param.pool")
    if len(shape) != 4:
        raise error(f"takes a 4-D bottom; got shape {shape}", "bottom")
    ceil_mode = param.round_mode == ENUMS["PoolingParameter.RoundMode"]["CEIL"]
    if param.global_pooling:
        return CaffePooling(method, shape[2:], (1, 1), (0, 0), ceil_mode, True)
    kernel = _pair([param.kernel_size] if param.HasField("kernel_size") else [], param.kernel_h,
                   param.kernel_w, _either(param, "kernel"), 0, "kernel_size", error)
    if min(kernel) < 1:
        raise error("needs kernel_size (or kernel_h and kernel_w, or global_pooling: true)",
                    "pooling_param.kernel_size")
    stride = (param.stride_h, param.stride_w) if _either(param, "stride") \
        else (param.stride, param.stride)
    pad = (param.pad_h, param.pad_w) if _either(param, "pad") else (param.pad, param.pad)
    if any(2 * p > k for p, k in zip(pad, kernel)):
        raise error(f"pads {pad} for a {kernel} window; more than half the window is not "
                    "supported", "pooling_param.pad")
    module = CaffePooling(method, kernel, stride, pad, ceil_mode, False)
    expected = [caffe_pooled_size(e, k, s, p, ceil_mode)
                for e, k, s, p in zip(shape[2:], kernel, stride, pad)]
    got = list(module(torch.empty(shape, device="meta")).shape[2:])
    if got != expected:
        raise error(f"Caffe pools this {tuple(shape[2:])} input to {tuple(expected)}, torch to "
                    f"{tuple(got)} (a window entirely outside the image); not supported")
    return module


def _layer(layer, shapes: list[tuple[int, ...]], error) -> nn.Module:
    kind, shape = layer.type, shapes[0]
    if kind in ("Convolution", *DEPTHWISE_TYPES):
        return _convolution(layer, shape, error)
    if kind == "Pooling":
        return _pooling(layer, shape, error)
    if kind == "BatchNorm":
        param = layer.batch_norm_param
        return CaffeBatchNorm(shape[1], param.eps, param.moving_average_fraction,
                              param.use_global_stats if param.HasField("use_global_stats")
                              else None)
    if kind == "Scale":
        param = layer.scale_param
        axis = param.axis % len(shape)
        if len(shapes) == 2:
            scale = tuple(shapes[1])
            if tuple(shape[axis:axis + len(scale)]) != scale:
                raise error(f"scales a {shape} blob by a {scale} one from axis {axis}", "bottom")
            return CaffeScale(axis, None, scale if param.bias_term else None)
        end = len(shape) if param.num_axes == -1 else axis + param.num_axes
        weight = tuple(shape[axis:end])
        return CaffeScale(axis, weight, weight if param.bias_term else None)
    if kind == "ReLU":
        slope = layer.relu_param.negative_slope
        return nn.LeakyReLU(slope) if slope else nn.ReLU()
    if kind == "ReLU6":
        return nn.ReLU6()
    if kind == "Clip":
        param = layer.clip_param
        if not (param.HasField("min") and param.HasField("max")):
            raise error("needs clip_param { min: ... max: ... }", "clip_param")
        return nn.Hardtanh(param.min, param.max)
    if kind == "Sigmoid":
        return nn.Sigmoid()
    if kind == "TanH":
        return nn.Tanh()
    if kind == "Swish":
        beta = layer.swish_param.beta
        return nn.SiLU() if beta == 1 else CaffeSwish(beta)
    if kind == "InnerProduct":
        param = layer.inner_product_param
        axis = param.axis % len(shape)
        inputs = 1
        for extent in shape[axis:]:
            inputs *= extent
        return CaffeInnerProduct(inputs, param.num_output, param.bias_term, axis, param.transpose)
    if kind == "Softmax":
        return nn.Softmax(dim=layer.softmax_param.axis)
    if kind == "Eltwise":
        param = layer.eltwise_param
        operation = {v: k for k, v in ENUMS["EltwiseParameter.EltwiseOp"].items()}[param.operation]
        if param.coeff and (operation != "SUM" or len(param.coeff) != len(shapes)):
            raise error("coeff is for SUM, one per bottom", "eltwise_param.coeff")
        if any(s != shape for s in shapes):
            raise error(f"needs bottoms of one shape; got {shapes}", "bottom")
        return CaffeEltwise(operation, list(param.coeff))
    if kind == "Concat":
        param = layer.concat_param
        return CaffeConcat(param.axis if param.HasField("axis") or not param.HasField("concat_dim")
                           else param.concat_dim)
    if kind == "Flatten":
        return nn.Flatten(layer.flatten_param.axis, layer.flatten_param.end_axis)
    if kind == "Dropout":
        return nn.Dropout(layer.dropout_param.dropout_ratio)
    raise error(f"type '{kind}' is not supported (a deploy prototxt is expected; supported: "
                f"{', '.join(SUPPORTED_TYPES)})", "type")


def parse_prototxt(path: str | Path):
    """The prototxt as Caffe's ``NetParameter``; parse errors name the file, line and field."""
    from google.protobuf import text_format

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except UnicodeDecodeError:
        raise ModelFileError(path, "is not a text file (a Caffe .prototxt was expected; the "
                             "binary .caffemodel goes second)") from None
    net = message_class("NetParameter")()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as failure:
        message = str(failure)
        line = failure.GetLine() if hasattr(failure, "GetLine") else None
        if 'no field named "layers"' in message:
            message = ("uses Caffe's old V1 'layers' format; upgrade it with Caffe's "
                       "upgrade_net_proto_text tool")
        elif "has no field named" in message:
            message = message.split(" : ", 1)[-1] + " (an option not supported here)"
        raise ModelFileError(path, message, line=line) from None
    return net, text


def _inputs(net, path) -> tuple[list[str], list[tuple[int, ...]]]:
    names = list(net.input)
    if net.input_shape:
        shapes = [tuple(s.dim) for s in net.input_shape]
    else:
        dims = list(net.input_dim)
        shapes = [tuple(dims[i:i + 4]) for i in range(0, len(dims), 4)]
    if len(shapes) != len(names):
        raise ModelFileError(path, f"declares {len(names)} input(s) but {len(shapes)} shape(s) "
                             "(input_shape, or four input_dim per input)", key="input")
    return names, shapes


def build_caffe(prototxt: str | Path) -> CaffeModel:
    """The module a deploy prototxt describes, with PyTorch's default initial weights."""
    net, text = parse_prototxt(prototxt)
    input_names, input_shapes = _inputs(net, prototxt)
    shapes = dict(zip(input_names, input_shapes))
    place = _Place(str(prototxt), text)
    layers, names, bottoms, tops = [], [], [], []
    for layer in net.layer:
        line = place.find(layer.name)

        def error(problem, key=None, layer=layer, line=line):
            return ModelFileError(prototxt, f"layer '{layer.name}' ({layer.type}): {problem}",
                                  line=line, key=key)

        if not _kept(layer):
            continue
        if layer.type == "Input":
            for top, shape in zip(layer.top, layer.input_param.shape):
                input_names.append(top)
                input_shapes.append(tuple(shape.dim))
                shapes[top] = tuple(shape.dim)
            continue
        if len(layer.top) != 1:
            raise error(f"has {len(layer.top)} tops; layers here have one", "top")
        missing = [b for b in layer.bottom if b not in shapes]
        if missing or not layer.bottom:
            raise error(f"reads blob(s) {missing or '(none)'} that no earlier layer or input "
                        "writes", "bottom")
        module = _layer(layer, [shapes[b] for b in layer.bottom], error)
        meta = [torch.empty(shapes[b], device="meta") for b in layer.bottom]
        try:
            shapes[layer.top[0]] = tuple(copy.deepcopy(module).eval().to("meta")(*meta).shape)
        except (RuntimeError, ValueError) as failure:
            raise error(f"does not run on bottoms of shapes {[shapes[b] for b in layer.bottom]}: "
                        f"{failure}") from None
        layers.append(module)
        names.append(layer.name)
        bottoms.append(list(layer.bottom))
        tops.append(list(layer.top))
    if not input_names:
        raise ModelFileError(prototxt, "declares no input (an Input layer, or input and "
                             "input_shape/input_dim)")
    if not layers:
        raise ModelFileError(prototxt, "has no layers to run")
    return CaffeModel(layers, names, bottoms, tops, input_names, input_shapes,
                      net.SerializeToString(), str(prototxt))
