"""Convolutions carrying hooks or hook-based reparametrizations come through convert, revert and
Plan.apply exactly: same output and gradients, same state_dict keys, the hooks still run (and
their handles still remove them), and never a meta tensor left behind."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import diagonalwise as dw
from tests.equivalence import TOLERANCES


def pruned(conv):
    return prune.l1_unstructured(conv, "weight", amount=0.5)


def weight_normed(conv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy API, still in use
        return nn.utils.weight_norm(conv)


def spectral_normed(conv):
    return nn.utils.spectral_norm(conv)


def with_hooks(conv):
    conv.register_forward_pre_hook(lambda module, args: (args[0] * 2,))
    conv.register_forward_hook(lambda module, args, output: output + 1)
    conv.register_full_backward_hook(lambda module, grad_in, grad_out: (grad_in[0] * 3,))
    return conv


REPARAMETRIZATIONS = [pruned, weight_normed, spectral_normed, with_hooks]


def model_with(reparametrize):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 1), reparametrize(nn.Conv2d(8, 16, 3, padding=1,
                                                                        groups=8)))
    return model.double()


def outputs_and_grads(model, x):
    x = x.clone().requires_grad_()
    output = model(x)
    output.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return output.detach(), x.grad, grads


def assert_same(model, reference, x):
    assert list(model.state_dict()) == list(reference.state_dict())
    assert not any(t.is_meta for t in model.state_dict().values())
    assert not any(p.is_meta for p in model.parameters())
    got, want = outputs_and_grads(model, x), outputs_and_grads(reference, x)
    torch.testing.assert_close(got[0], want[0], **TOLERANCES[torch.float64])
    torch.testing.assert_close(got[1], want[1], **TOLERANCES[torch.float64])
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], **TOLERANCES[torch.float64],
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("reparametrize", REPARAMETRIZATIONS, ids=lambda f: f.__name__)
def test_convert_and_revert_carry_hooks_and_reparametrizations(reparametrize):
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    reference = model_with(reparametrize)
    # built twice from one seed: a reparametrized weight is not a leaf, which deepcopy refuses
    converted = dw.convert(model_with(reparametrize), block_size=4)
    assert dw.is_converted(converted[1])
    assert_same(converted, reference, x)
    reverted = dw.revert(converted)
    assert type(reverted[1]) is nn.Conv2d
    assert_same(reverted, reference, x)


@pytest.mark.parametrize("reparametrize", REPARAMETRIZATIONS, ids=lambda f: f.__name__)
def test_plan_apply_carries_hooks_and_reparametrizations(reparametrize):
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    reference = model_with(reparametrize)
    plan = dw.Plan({"1": dw.tuning.LayerChoice("block_diagonal:2", "key")})
    model = plan.apply(model_with(reparametrize))
    assert model[1].algorithm.name == "block_diagonal:2"
    assert_same(model, reference, x)


def test_hook_handles_still_remove_the_hooks_after_conversion():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4).double()
    handle = conv.register_forward_hook(lambda module, args, output: output * 0)
    converted = dw.convert(conv)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    assert converted(x).abs().max() == 0
    handle.remove()
    assert converted(x).abs().max() > 0


def test_prune_remove_works_on_the_converted_layer():
    conv = pruned(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    converted = dw.convert(conv, block_size=2)
    prune.remove(converted, "weight")
    assert isinstance(converted.weight, nn.Parameter)
    assert "weight_orig" not in dict(converted.named_parameters())
    assert (converted.weight == 0).sum() == 18  # half of the 36 weights stay pruned
