"""Autograd, forward-mode AD and ``torch.func`` for our depthwise custom ops.

Each kernel family gives two ``torch.library`` custom ops with one signature:
``forward(x, weight, bias, stride, padding, dilation, output_size) -> y`` and
``backward(dy, x, weight, stride, padding, dilation, input_grad, weight_grad, bias_grad)
-> (dx, dw, db)`` (the gradients not asked for are empty). :func:`differentiable` gives them fake
kernels and makes them one differentiable call. Equivalence contract: what ``F.conv3d`` with
``groups=channels`` gives, in value, in the input, weight and bias gradients (reverse mode) and
in the output's tangent (forward mode, ``torch.func.jvp``/``jacfwd``), under ``torch.func.grad``,
``vmap`` and their compositions. A backward that may itself be differentiated
(``create_graph=True``, gradient penalties, and every ``torch.func`` transform, which all run it
so) is computed by native's ``F.conv3d``, whose backward has derivatives: exact, at native's
speed.

Why not only ``register_autograd`` on the op: the ``autograd.Function`` torch.library generates
has no ``setup_context``, so ``torch.func.grad``/``jacrev`` refuse it (pytorch/pytorch#168393,
#179652), and it has no forward-mode rule: ``torch.func.jvp`` gave a zero tangent, silently.
Dynamo, in turn, does not trace an ``autograd.Function`` with a ``jvp``; under ``torch.compile``
the op's registered autograd is used instead. The forward op gets a batching rule for ``vmap``
and ``jacfwd`` (the vmapped dimension folded into the channels: one call instead of a loop).
A family may serve plain eager calls (:func:`_plain_eager`) without the ops, as
:mod:`.cpu_ops` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..layout import memory_format_like


def _moved(tensor: torch.Tensor | None, dim: int | None, batch: int) -> torch.Tensor | None:
    """``tensor`` with its vmapped dimension first (expanded to ``batch`` where it has none)."""
    if tensor is None:
        return None
    if dim is None:
        return tensor.unsqueeze(0).expand(batch, *tensor.shape)
    return tensor.movedim(dim, 0)


def _fold(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, N, C, ...) -> (N, B * C, ...): the vmapped copies become more channels."""
    return tensor.movedim(0, 1).reshape(tensor.shape[1], batch * tensor.shape[2],
                                        *tensor.shape[3:])


def _unfold(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """(N, B * C, ...) -> (B, N, C, ...)."""
    return tensor.reshape(tensor.shape[0], batch, -1, *tensor.shape[2:]).movedim(1, 0)


def _register_batching_rule(forward_op) -> None:
    """vmap over the forward op: copy b of (x, weight, bias) becomes channels [b*C, (b+1)*C) of one
    depthwise call, whose output channels b*C*M + c*M + m are copy b's channel c*M + m."""

    def forward_rule(info, in_dims, x, weight, bias, stride, padding, dilation, output_size):
        batch = info.batch_size
        x, weight = _moved(x, in_dims[0], batch), _moved(weight, in_dims[1], batch)
        bias = _moved(bias, in_dims[2], batch)
        y = forward_op(_fold(x, batch), weight.flatten(0, 1),
                       None if bias is None else bias.flatten(), stride, padding, dilation,
                       output_size)
        return _unfold(y, batch), 0

    forward_op.register_vmap(forward_rule)


def native_depthwise(x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                     padding: list[int], dilation: list[int],
                     output_size: list[int]) -> torch.Tensor:
    """Our ops' convolution (5-D, leading padding, the trailing one implied by ``output_size``)
    through ``F.conv3d``, differentiable to any order."""
    pads = []
    for size, out, k, s, p, d in zip(x.shape[2:], output_size, weight.shape[2:], stride, padding,
                                     dilation):
        trailing = (out - 1) * s + (k - 1) * d + 1 - (size + p)
        pads = [p, trailing] + pads  # F.pad lists the last dimension first
    return F.conv3d(F.pad(x, pads), weight, None, stride, 0, dilation, x.shape[1])


def _register_fake_kernels(forward_op, backward_op) -> None:
    """Output shapes and layouts for tracing (torch.compile): y and dx in x's layout, dw
    contiguous, and the gradients not asked for empty."""

    @forward_op.register_fake
    def _(x, weight, bias, stride, padding, dilation, output_size):
        return torch.empty((x.shape[0], weight.shape[0], *output_size), dtype=x.dtype,
                           device=x.device, memory_format=memory_format_like(x))

    @backward_op.register_fake
    def _(grad_output, x, weight, stride, padding, dilation, input_grad, weight_grad,
          bias_grad):
        return (torch.empty_like(x, memory_format=memory_format_like(x)) if input_grad
                else x.new_empty(0),
                torch.empty_like(weight, memory_format=torch.contiguous_format) if weight_grad
                else x.new_empty(0),
                x.new_empty(weight.shape[0]) if bias_grad else x.new_empty(0))


def _plain_eager(*tensors: torch.Tensor | None) -> bool:
    """Whether an eager call (not under torch.compile) may skip the custom ops and this module's
    autograd.Function: on plain tensors (or parameters), outside every transform, dispatch mode
    and forward-AD level that they serve."""
    return (all(t is None or type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)
            and not torch._C._are_functorch_transforms_active()
            and torch.autograd.forward_ad._current_level < 0
            and torch.utils._python_dispatch._get_current_dispatch_mode() is None)


def differentiable(forward_op, backward_op) -> Callable[..., torch.Tensor]:
    """``call(x5, weight5, bias, stride, padding, dilation, output_size) -> y5``: the custom ops
    with reverse- and forward-mode derivatives (see the module's contract)."""

    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, output_size = inputs
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        ctx.output_size = output_size
        ctx.has_bias = bias is not None

    def gradients(ctx, grad_output):
        x, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        needs_bias = needs_bias and ctx.has_bias
        dx, dw, db = backward_op(grad_output, x, weight, *ctx.geometry, needs_input, needs_weight,
                                 needs_bias)
        return (dx if needs_input else None, dw if needs_weight else None,
                db if needs_bias else None, None, None, None, None)

    def differentiable_gradients(ctx, grad_output):
        # a backward with grad mode on (create_graph=True, or any torch.func transform) may be
        # differentiated again: native's convolution, whose backward has derivatives, computes it
        x, weight = ctx.saved_tensors
        _, pullback = torch.func.vjp(
            lambda x, weight: native_depthwise(x, weight, *ctx.geometry, ctx.output_size),
            x, weight)
        dx, dw = pullback(grad_output)
        needs_bias = ctx.needs_input_grad[2] and ctx.has_bias
        return (dx if ctx.needs_input_grad[0] else None, dw if ctx.needs_input_grad[1] else None,
                grad_output.sum((0, 2, 3, 4)) if needs_bias else None, None, None, None, None)

    class DepthwiseConv(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, weight, bias, stride, padding, dilation, output_size):
            return forward_op(x, weight, bias, stride, padding, dilation, output_size)

        @staticmethod
        def setup_context(ctx, inputs, output):
            setup_context(ctx, inputs, output)
            ctx.save_for_forward(*inputs[:2])

        @staticmethod
        def backward(ctx, grad_output):
            if torch.is_grad_enabled():
                return differentiable_gradients(ctx, grad_output)
            return gradients(ctx, grad_output)

        @staticmethod
        def jvp(ctx, x_tangent, weight_tangent, bias_tangent, *_):
            # the convolution is bilinear in (x, weight) and affine in the bias
            x, weight = ctx.saved_tensors
            geometry = (*ctx.geometry, ctx.output_size)
            terms = []
            if x_tangent is not None:
                terms.append(forward_op(x_tangent, weight, None, *geometry))
            if weight_tangent is not None:
                terms.append(forward_op(x, weight_tangent, None, *geometry))
            if bias_tangent is not None:
                terms.append(bias_tangent.view(-1, 1, 1, 1).expand(
                    x.shape[0], -1, *ctx.output_size))
            return sum(terms[1:], terms[0])

    # apply() binds its arguments to forward's signature on every call (setup_context style):
    # computed once here, not by inspect on each call (about 10 us a call)
    DepthwiseConv.forward.__signature__ = inspect.signature(DepthwiseConv.forward)
    _register_fake_kernels(forward_op, backward_op)
    forward_op.register_autograd(gradients, setup_context=setup_context)
    _register_batching_rule(forward_op)

    def call(x, weight, bias, stride, padding, dilation, output_size):
        if torch.compiler.is_compiling():
            return forward_op(x, weight, bias, stride, padding, dilation, output_size)
        return DepthwiseConv.apply(x, weight, bias, stride, padding, dilation, output_size)

    return call
