"""DiagonalwiseConv1d/2d/3d: same parameters and results as nn.ConvNd, every padding mode."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import diagonalwise as dw
from tests.equivalence import TOLERANCES

MODULES = {1: (nn.Conv1d, dw.DiagonalwiseConv1d), 2: (nn.Conv2d, dw.DiagonalwiseConv2d),
           3: (nn.Conv3d, dw.DiagonalwiseConv3d)}
TOL = TOLERANCES[torch.float64]


def assert_modules_equivalent(native, ours, x):
    """Same output and the same input/weight/bias gradients."""
    results = []
    for module in (native, ours):
        inp = x.detach().clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        out = module(inp)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape))
        results.append((out, inp.grad, module.weight.grad,
                        None if module.bias is None else module.bias.grad))
    for name, got, want in zip(("output", "input", "weight", "bias"), results[1], results[0]):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("bias", [True, False])
def test_module_matches_native_every_padding_mode(dims, padding_mode, bias):
    native_cls, ours_cls = MODULES[dims]
    kwargs = dict(in_channels=6, out_channels=12, kernel_size=3, stride=2, padding=2, dilation=1,
                  groups=6, bias=bias, padding_mode=padding_mode, dtype=torch.float64)
    native = native_cls(**kwargs)
    ours = ours_cls(**kwargs, block_size=3)
    ours.load_state_dict(native.state_dict())
    x = torch.randn(2, 6, *(7,) * dims, dtype=torch.float64)
    assert_modules_equivalent(native, ours, x)


@pytest.mark.parametrize("dims", [2, 3])
def test_module_same_padding_and_channels_last(dims):
    native_cls, ours_cls = MODULES[dims]
    native = native_cls(8, 8, 4, padding="same", groups=8, dtype=torch.float64)
    ours = ours_cls.from_conv(copy.deepcopy(native), block_size=8)
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    x = torch.randn(2, 8, *(9,) * dims, dtype=torch.float64).contiguous(memory_format=fmt)
    assert_modules_equivalent(native, ours, x)


def test_module_is_a_conv2d_with_the_same_state_dict_keys():
    ours = dw.DiagonalwiseConv2d(64, 64, 3, padding=1, groups=64, block_size=32)
    native = nn.Conv2d(64, 64, 3, padding=1, groups=64)
    assert isinstance(ours, nn.Conv2d)
    assert list(ours.state_dict()) == list(native.state_dict()) == ["weight", "bias"]
    assert ours.weight.shape == native.weight.shape == (64, 1, 3, 3)
    native.load_state_dict(ours.state_dict())
    ours.load_state_dict(native.state_dict())
    assert torch.equal(ours.weight, native.weight)


def test_extra_repr_shows_the_block_size_and_algorithm():
    layer = dw.DiagonalwiseConv2d(64, 64, 3, padding=1, groups=64, block_size=32)
    assert repr(layer).endswith("groups=64, block_size=32)")
    layer.set_algorithm(algorithm="native_channels_last")
    assert "block_size=1, algorithm=native_channels_last" in repr(layer)
    default = dw.DiagonalwiseConv2d(144, 144, 3, groups=144)
    assert default.block_size == 24


def test_from_conv_reuses_the_parameter_objects():
    conv = nn.Conv2d(16, 32, 3, groups=16, bias=True)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    conv(torch.randn(1, 16, 5, 5)).sum().backward()
    optimizer.step()
    layer = dw.DiagonalwiseConv2d.from_conv(conv, block_size=4)
    assert layer.weight is conv.weight and layer.bias is conv.bias
    assert optimizer.state[layer.weight]["momentum_buffer"] is not None
    assert not layer.weight.is_meta
    assert layer.block_size == 4 and layer.groups == 16 and layer.out_channels == 32
    back = layer.to_native()
    assert type(back) is nn.Conv2d and back.weight is conv.weight


def test_from_conv_keeps_training_mode_and_the_padding_string():
    conv = nn.Conv1d(4, 4, 4, padding="same", groups=4, padding_mode="zeros").eval()
    layer = dw.DiagonalwiseConv1d.from_conv(conv)
    assert not layer.training
    assert layer.padding == "same"


def test_from_conv_rejects_the_wrong_dimension():
    with pytest.raises(TypeError, match="takes an torch.nn.modules.conv.Conv2d, got Conv1d"):
        dw.DiagonalwiseConv2d.from_conv(nn.Conv1d(4, 4, 3, groups=4))


def test_module_survives_deepcopy_and_pickle():
    layer = dw.DiagonalwiseConv2d(8, 8, 3, groups=8, block_size=4)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.algorithm == layer.algorithm
        x = torch.randn(1, 8, 5, 5)
        torch.testing.assert_close(clone(x), layer(x))


def test_bad_block_size_is_rejected_at_construction():
    with pytest.raises(ValueError, match=r"block_size=5 does not divide groups=64.*\[1, 2, 4, 8"):
        dw.DiagonalwiseConv2d(64, 64, 3, groups=64, block_size=5)
    with pytest.raises(ValueError, match="give block_size or algorithm, not both"):
        dw.DiagonalwiseConv2d(64, 64, 3, groups=64, block_size=4, algorithm="native")
    with pytest.raises(ValueError, match="unknown algorithm 'fast'"):
        dw.DiagonalwiseConv2d(64, 64, 3, groups=64, algorithm="fast")
