"""Caffe model files: our PyTorch model computes what OpenCV's Caffe importer computes, files
round-trip bit for bit, a model trained with the method writes a caffemodel OpenCV loads, and
every malformed file gets its file:line: key error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diagonalwise.caffe import load_caffe, save_caffemodel
from diagonalwise.caffe.schema import message_class
from diagonalwise.errors import ModelFileError

from . import nets
from .oracles import (
    FLOAT32_TOLERANCE,
    example_input,
    opencv_caffe,
    randomize,
    relative_error,
    train_with_the_method,
)

pytest.importorskip("google.protobuf", reason="Caffe files need the protobuf package")

#: OpenCV has no DepthwiseConvolution (a fork's type): it runs the same prototxt with
#: type Convolution, which is what the fork's layer computes (group = channels).
NETS = {
    "mobilenet_v1": lambda: nets.mobilenet_v1_prototxt(softmax=True),
    "mobilenet_v2": lambda: nets.mobilenet_v2_prototxt(),
    "efficientnet_b0": lambda: nets.efficientnet_prototxt(),
    "efficientnet_lite": lambda: nets.efficientnet_prototxt(
        lite=True, depthwise_type="DepthwiseConvolution"),
}

#: Caffe's rounding and padding edges: ceil-mode pooling, average pooling over padding,
#: rectangular kernels, weighted sums, in-place layers
EDGES = Path(__file__).with_name("edges.prototxt")


def _write(tmp_path, name: str, text: str):
    prototxt = tmp_path / f"{name}.prototxt"
    prototxt.write_text(text)
    model = randomize(load_caffe(prototxt))
    caffemodel = tmp_path / f"{name}.caffemodel"
    save_caffemodel(model, caffemodel)
    return prototxt, caffemodel


def _for_opencv(prototxt):
    """The same network with the forks' depthwise types spelled as Convolution."""
    text = prototxt.read_text().replace('"DepthwiseConvolution"', '"Convolution"')
    plain = prototxt.with_name(f"opencv-{prototxt.name}")
    plain.write_text(text)
    return plain


@pytest.mark.parametrize("name", [*NETS, "edges"])
def test_outputs_equal_opencv(tmp_path, name):
    text = NETS[name]() if name in NETS else EDGES.read_text()
    prototxt, caffemodel = _write(tmp_path, name, text)
    model = load_caffe(prototxt, caffemodel).eval()
    x = example_input(model)
    with torch.no_grad():
        ours = model(x)
    assert relative_error(ours, opencv_caffe(_for_opencv(prototxt), caffemodel, x)) \
        < FLOAT32_TOLERANCE


def test_depthwise_fork_types_are_depthwise_convolutions(tmp_path):
    for kind in ("DepthwiseConvolution", "ConvolutionDepthwise"):
        (tmp_path / "n.prototxt").write_text(nets.efficientnet_prototxt(lite=True,
                                                                        depthwise_type=kind))
        model = load_caffe(tmp_path / "n.prototxt")
        depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert len(depthwise) == 16
        assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_clip_and_swish_beta_follow_caffes_formulas(tmp_path):
    (tmp_path / "c.prototxt").write_text(
        'input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
        'layer { name: "clip" type: "Clip" bottom: "data" top: "clip" clip_param { min: -0.5 '
        'max: 0.25 } }\n'
        'layer { name: "swish" type: "Swish" bottom: "clip" top: "out" swish_param { beta: 3 } }')
    model = load_caffe(tmp_path / "c.prototxt")
    x = torch.randn(4, 2, 3, 3)
    clipped = x.clamp(-0.5, 0.25)
    torch.testing.assert_close(model(x), clipped * torch.sigmoid(3 * clipped), rtol=0, atol=0)


def test_floor_rounding_pools_like_torch_without_ceil_mode(tmp_path):
    (tmp_path / "f.prototxt").write_text(
        'input: "data" input_shape { dim: 1 dim: 2 dim: 9 dim: 9 }\n'
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE '
        'kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR } }')
    x = torch.randn(3, 2, 9, 9)
    expected = nn.functional.avg_pool2d(x, 3, 2, 1, ceil_mode=False, count_include_pad=True)
    assert expected.shape[-1] == 5
    assert torch.equal(load_caffe(tmp_path / "f.prototxt")(x), expected)


def test_batch_norm_scale_factor_is_read_as_caffe_does(tmp_path):
    prototxt, caffemodel = _write(tmp_path, "v1", nets.mobilenet_v1_prototxt())
    net = message_class("NetParameter").FromString(caffemodel.read_bytes())
    layer = next(layer for layer in net.layer if layer.type == "BatchNorm")
    for blob in layer.blobs[:2]:
        blob.data[:] = [4 * v for v in blob.data]
    layer.blobs[2].data[0] = 4.0
    scaled = tmp_path / "scaled.caffemodel"
    scaled.write_bytes(net.SerializeToString())
    model, again = load_caffe(prototxt, caffemodel), load_caffe(prototxt, scaled)
    for want, got in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=0)
    model.eval()
    x = example_input(model)
    with torch.no_grad():
        assert relative_error(model(x), opencv_caffe(prototxt, scaled, x)) < FLOAT32_TOLERANCE


def test_write_then_read_is_bit_exact(tmp_path):
    prototxt, caffemodel = _write(tmp_path, "b0", nets.efficientnet_prototxt())
    model = load_caffe(prototxt, caffemodel)
    save_caffemodel(model, tmp_path / "again.caffemodel")
    assert (tmp_path / "again.caffemodel").read_bytes() == caffemodel.read_bytes()
    again = load_caffe(prototxt, tmp_path / "again.caffemodel")
    for (name, want), got in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(want, got), name


def test_transposed_inner_product_weights(tmp_path):
    text = ('input: "data" input_shape { dim: 1 dim: 6 }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
            'inner_product_param { num_output: 3 transpose: true } }')
    prototxt, caffemodel = _write(tmp_path, "t", text)
    stored = message_class("NetParameter").FromString(caffemodel.read_bytes()).layer[0].blobs[0]
    assert list(stored.shape.dim) == [6, 3]
    model = load_caffe(prototxt, caffemodel)
    weight = torch.tensor(stored.data).reshape(6, 3)
    assert torch.equal(model.layers[0].weight, weight.t())


def test_trained_with_the_method_the_written_file_gives_our_output_in_opencv(tmp_path):
    # as a training prototxt: batch norm on batch statistics (a deploy file freezes them, and a
    # deep ReLU6 net on frozen random statistics saturates, so most gradients are zero)
    text = nets.mobilenet_v2_prototxt().replace("use_global_stats: true ", "")
    prototxt, caffemodel = _write(tmp_path, "v2", text)
    model = load_caffe(prototxt, caffemodel)
    train_with_the_method(model, block_size=8, converted=17)
    trained = tmp_path / "trained.caffemodel"
    save_caffemodel(model, trained)
    model.eval()
    x = example_input(model)
    with torch.no_grad():
        ours = model(x)
    assert relative_error(ours, opencv_caffe(prototxt, trained, x)) < FLOAT32_TOLERANCE


def test_training_phase_batch_norm_uses_batch_statistics_unless_global(tmp_path):
    text = ('input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
            'layer { name: "frozen" type: "BatchNorm" bottom: "bn" top: "out" '
            'batch_norm_param { use_global_stats: true moving_average_fraction: 0.9 } }')
    (tmp_path / "bn.prototxt").write_text(text)
    model = load_caffe(tmp_path / "bn.prototxt").train()
    x = 3 + 2 * torch.randn(8, 3, 4, 4)
    out = model(x)
    normalized = nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)
    torch.testing.assert_close(out, normalized / (1 + 1e-5) ** 0.5)
    assert not torch.equal(model.layers[0].running_mean, torch.zeros(3))
    assert torch.equal(model.layers[1].running_mean, torch.zeros(3))


def test_train_phase_layers_are_left_out(tmp_path):
    text = (nets.mobilenet_v1_prototxt() +
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" '
            'include { phase: TRAIN } }\n')
    (tmp_path / "n.prototxt").write_text(text)
    assert load_caffe(tmp_path / "n.prototxt").names[-1] == "fc"


# --- malformed files ----------------------------------------------------------------------------

HEAD = 'name: "bad"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
CONV = ('layer {\n  name: "conv"\n  type: "Convolution"\n  bottom: "data"\n  top: "conv"\n'
        '  convolution_param { num_output: 4 kernel_size: 3 }\n}\n')


@pytest.mark.parametrize("text,line,key,words", [
    (HEAD + CONV.replace("kernel_size: 3", "kernel_size: 3 frobnicate: 2"), 9, None,
     'no field named "frobnicate"'),
    (HEAD + CONV.replace('"Convolution"', '"Deconvolution"'), 5, "type", "not supported"),
    (HEAD + CONV.replace('bottom: "data"', 'bottom: "nothing"'), 5, "bottom", "nothing"),
    (HEAD + CONV.replace("num_output: 4 ", ""), 5, "convolution_param.num_output", "num_output"),
    (HEAD + CONV.replace("kernel_size: 3", "kernel_size: 3 group: 2"), 5,
     "convolution_param.group", "must divide"),
    (HEAD + CONV.replace("kernel_size: 3", "kernel_size: 3 kernel_h: 3 kernel_w: 3"), 5,
     "kernel_size", "not both"),
    (HEAD + 'layers { name: "old" }\n', 4, None, "V1"),
    (HEAD + CONV + 'layer { name: "p" type: "Pooling" bottom: "conv" top: "p" pooling_param { '
     'pool: STOCHASTIC kernel_size: 2 } }\n', 11, "pooling_param.pool", "STOCHASTIC"),
    (HEAD + CONV + 'layer { name: "p" type: "Pooling" bottom: "conv" top: "p" pooling_param { '
     'kernel_size: 2 pad: 2 } }\n', 11, "pooling_param.pad", "half the window"),
    (HEAD + CONV + 'layer { name: "p" type: "Pooling" bottom: "conv" top: "p" pooling_param { '
     'kernel_size: 1 stride: 4 } }\n', 11, None, "entirely outside"),
    (HEAD + CONV + 'layer { name: "e" type: "Eltwise" bottom: "conv" bottom: "data" top: "e" }\n',
     11, "bottom", "one shape"),
    ('name: "x"\n' + CONV, 3, "bottom", "no earlier layer"),
    (HEAD.replace("input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n", "") + CONV, None, "input",
     "0 shape"),
])
def test_malformed_prototxt_names_file_line_and_key(tmp_path, text, line, key, words):
    prototxt = tmp_path / "bad.prototxt"
    prototxt.write_text(text)
    with pytest.raises(ModelFileError) as caught:
        load_caffe(prototxt)
    message = str(caught.value)
    where = f"{prototxt}:{line}: " if line else f"{prototxt}: "
    assert message.startswith(where) and words in message, message
    assert caught.value.line == line and caught.value.key == key


def test_malformed_caffemodels(tmp_path):
    prototxt, caffemodel = _write(tmp_path, "v1", nets.mobilenet_v1_prototxt())
    net = message_class("NetParameter").FromString(caffemodel.read_bytes())
    missing = message_class("NetParameter")()
    missing.CopyFrom(net)
    del missing.layer[3:]
    wrong_shape = message_class("NetParameter")()
    wrong_shape.CopyFrom(net)
    wrong_shape.layer[1].blobs[0].shape.dim[:] = [8, 3, 9, 1]
    cases = {
        "missing": (missing.SerializeToString(), "has no blobs for layer 'conv1/scale'"),
        "shape": (wrong_shape.SerializeToString(), r"blob 0 is \(8, 3, 9, 1\), the prototxt needs"),
        "garbage": (b"\xff\xff\xff\xff not protobuf", "not a binary Caffe NetParameter"),
        "empty": (b"", "has no layers"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=words):
            load_caffe(prototxt, tmp_path / name)
    with pytest.raises(ModelFileError, match="no such file"):
        load_caffe(prototxt, tmp_path / "nothing.caffemodel")
    with pytest.raises(ModelFileError, match="not a text file"):
        load_caffe(caffemodel)


def test_example_prototxt_is_what_the_generator_writes(request):
    examples = request.config.rootpath / "examples" / "model_files"
    assert (examples / "mobilenet_v1.prototxt").read_text() == \
        nets.mobilenet_v1_prototxt(multiplier=1.0, resolution=224, classes=1000, softmax=True)
    assert load_caffe(examples / "mobilenet_v1.prototxt").input_shape == (3, 224, 224)
