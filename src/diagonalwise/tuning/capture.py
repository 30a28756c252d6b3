"""Capture the grouped convolution calls of a model from one real forward."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..call import DTYPE_NAMES, ConvCall
from ..layout import memory_layout
from ..modules import DIAGONALWISE_TYPE, is_converted


@contextlib.contextmanager
def restored_state(model: nn.Module, grads: bool = False) -> Iterator[None]:
    """Put the model's buffers (batch-norm statistics) back as they were afterwards, and with
    ``grads`` its parameters' gradients too: for forwards and backwards that only measure."""
    saved_buffers = [buffer.clone() for buffer in model.buffers()]
    saved_grads = [(p, None if p.grad is None else p.grad.clone())
                   for p in model.parameters()] if grads else []
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), saved_buffers):
                buffer.copy_(saved)
            for parameter, grad in saved_grads:
                parameter.grad = grad


def is_tunable(module: nn.Module) -> bool:
    """An exact nn.Conv1d/2d/3d with groups > 1, or an already converted layer."""
    if is_converted(module):
        return True
    return type(module) in DIAGONALWISE_TYPE and module.groups > 1


def call_of(module: nn.Module, x: torch.Tensor) -> ConvCall:
    """The call ``module`` makes on input ``x`` (unbatched inputs as a batch of one)."""
    dims = len(module.kernel_size)
    shape = tuple(x.shape) if x.dim() == dims + 2 else (1, *x.shape)
    padding = module.padding
    if module.padding_mode != "zeros":
        # the layer pads the input itself (by amounts it derived from padding, 'same' included),
        # then convolves with padding 0; the pads run from the last dimension to the first
        pads = module._reversed_padding_repeated_twice
        added = [pads[2 * (dims - 1 - d)] + pads[2 * (dims - 1 - d) + 1] for d in range(dims)]
        shape = shape[:2] + tuple(s + a for s, a in zip(shape[2:], added))
        padding = (0,) * dims
    dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type) and dtype in (torch.float32, torch.float64):
        dtype = torch.get_autocast_dtype(x.device.type)
    return ConvCall(
        input_shape=shape, weight_shape=tuple(module.weight.shape), bias=module.bias is not None,
        stride=tuple(module.stride), padding=padding if isinstance(padding, str) else tuple(padding),
        dilation=tuple(module.dilation), groups=module.groups, dtype=DTYPE_NAMES[dtype],
        layout=memory_layout(x),
    )


def collect_conv_calls(model: nn.Module, example_inputs: tuple,
                       filter_fn=None) -> dict[str, ConvCall]:
    """Run ``model(*example_inputs)`` once (no gradient) and return, per qualified layer name,
    the call each tunable grouped convolution received (those ``filter_fn(module, name)``
    accepts, if given). Run it under autocast to capture the autocast dtype."""
    calls: dict[str, ConvCall] = {}
    handles = []
    for name, module in model.named_modules():
        if is_tunable(module) and (filter_fn is None or filter_fn(module, name)):
            def hook(module, args, name=name):
                calls.setdefault(name, call_of(module, args[0]))
            handles.append(module.register_forward_pre_hook(hook))
    # a forward in training mode updates batch-norm statistics: restored_state puts them back
    try:
        with restored_state(model), torch.no_grad():
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls
