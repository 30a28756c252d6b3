"""convert / revert on real torchvision models and on hand-made trees."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import diagonalwise as dw
from tests.equivalence import TOLERANCES

TOL = TOLERANCES[torch.float64]

# name -> (constructor, number of grouped convs it has)
MODELS = {
    "mobilenet_v2": (torchvision.models.mobilenet_v2, 17),
    "mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, 15),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, 16),
    "convnext_tiny": (torchvision.models.convnext_tiny, 18),
    "regnet_y_400mf": (torchvision.models.regnet_y_400mf, 16),
    "resnext50_32x4d": (torchvision.models.resnext50_32x4d, 16),
}


def forward_backward(model, x, seed=0):
    """Output, input gradient and parameter gradients by name; the seed fixes dropout and
    stochastic depth so two models draw the same masks."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    out = model(x)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape))
    return out, x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model_conversion(name):
    constructor, grouped = MODELS[name]
    torch.manual_seed(0)
    model = constructor(weights=None).double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    out_native, gx_native, grads_native = forward_backward(model, x)

    report = dw.ConversionReport()
    converted = dw.convert(copy.deepcopy(model), report=report)
    assert len(report.changed) == grouped
    n_dw = sum(isinstance(m, dw.modules._DiagonalwiseConvNd) for m in converted.modules())
    assert n_dw == grouped
    assert all("groups=1" in reason for _, reason in report.skipped)
    assert "block_diagonal" in str(report)
    # the state_dict loads both ways, key for key
    assert list(converted.state_dict()) == list(model.state_dict())
    model.load_state_dict(converted.state_dict())
    converted.load_state_dict(model.state_dict())

    out, gx, grads = forward_backward(converted, x)
    torch.testing.assert_close(out, out_native, **TOL)
    torch.testing.assert_close(gx, gx_native, **TOL)
    assert grads.keys() == grads_native.keys()
    for key in grads:
        torch.testing.assert_close(grads[key], grads_native[key], **TOL, msg=key)

    # idempotent: a second conversion changes nothing
    again = dw.ConversionReport()
    assert dw.convert(converted, report=again) is converted
    assert not again.changed
    assert sum("already converted" in r for _, r in again.skipped) == grouped

    reverted = dw.revert(converted)
    assert not any(isinstance(m, dw.modules._DiagonalwiseConvNd) for m in reverted.modules())
    assert [type(m) for m in reverted.modules()] == [type(m) for m in model.modules()]
    out_back, _, _ = forward_backward(reverted, x)
    torch.testing.assert_close(out_back, out_native, **TOL)


def test_convert_shares_parameters_and_keeps_names():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.Conv2d(8, 16, 1))
    weight = model[0].weight
    converted = dw.convert(model)
    assert converted is model
    assert type(model[0]) is dw.DiagonalwiseConv2d and model[0].weight is weight
    assert type(model[2]) is nn.Conv2d


def test_bare_conv_as_root():
    conv = nn.Conv3d(4, 8, 3, groups=4)
    converted = dw.convert(conv)
    assert type(converted) is dw.DiagonalwiseConv3d and converted.weight is conv.weight
    assert type(dw.revert(converted)) is nn.Conv3d


def test_subclasses_and_dense_convs_are_left_alone_with_the_reason():
    class Conv2dSame(nn.Conv2d):
        """Stands for timm's Conv2dSame: a subclass with its own forward."""

    model = nn.Sequential(Conv2dSame(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3),
                          nn.ConvTranspose2d(8, 8, 3, groups=8))
    report = dw.ConversionReport()
    dw.convert(model, report=report)
    assert type(model[0]) is Conv2dSame and type(model[1]) is nn.Conv2d
    reasons = dict(report.skipped)
    assert "Conv2dSame is a subclass of Conv2d" in reasons["0"]
    assert reasons["1"] == "groups=1: a dense convolution, nothing to refactorize"
    assert "ConvTranspose2d is a subclass of _ConvNd" in reasons["2"]
    assert report.changed == []


def test_filter_fn_sees_qualified_names():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)), nn.Conv1d(4, 4, 3, groups=4))
    seen = []

    def only_2d(module, name):
        seen.append(name)
        return isinstance(module, nn.Conv2d)

    report = dw.ConversionReport()
    dw.convert(model, filter_fn=only_2d, report=report)
    assert seen == ["0.0", "1"]
    assert type(model[0][0]) is dw.DiagonalwiseConv2d and type(model[1]) is nn.Conv1d
    assert report.skipped == [("1", "excluded by filter_fn")]


def test_integer_block_size_is_an_upper_bound_per_layer():
    model = nn.Sequential(nn.Conv2d(144, 144, 3, groups=144), nn.Conv2d(64, 64, 3, groups=64),
                          nn.Conv2d(7, 7, 3, groups=7))
    dw.convert(model, block_size=32)
    assert [m.block_size for m in model] == [24, 32, 7]


def test_algorithm_for_every_layer():
    model = dw.convert(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)), algorithm="native")
    assert model[0].algorithm == dw.Native()


def test_a_module_shared_by_two_parents_is_replaced_by_one_module():
    shared = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    model = nn.Sequential(nn.Sequential(shared), nn.Sequential(shared))
    dw.convert(model)
    assert model[0][0] is model[1][0]
    assert type(model[0][0]) is dw.DiagonalwiseConv2d
    assert len(list(model.parameters())) == 2


def test_report_prints_a_table():
    report = dw.ConversionReport()
    dw.convert(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 4, 1)), report=report)
    text = str(report)
    assert text.splitlines()[0] == "converted 1 layer(s), skipped 1"
    assert "converted  0  groups=4 block_diagonal:4" in text
    assert "skipped    1  groups=1" in text


def test_package_attributes_are_the_functions_after_every_submodule_import():
    import importlib

    for name in ("conversion", "tuning", "tuning.autotune", "functional", "modules",
                 "bench.training_step", "cli"):
        importlib.import_module(f"diagonalwise.{name}")
    assert callable(dw.convert) and dw.convert.__name__ == "convert"
    assert callable(dw.tune) and callable(dw.conv2d)
