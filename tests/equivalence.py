"""Shared checks and builders: an algorithm against F.convNd in value, in every gradient and under
torch.func, the operands of a convolution problem in every layout, a grid of cases and a random search."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import func

import diagonalwise as dw
from diagonalwise.blocking import valid_block_sizes

#: Tolerances per dtype. float64 is the exactness check: the dense conv only adds exact zeros and
#: may sum in another order, so the error is a few ulps of the accumulated magnitude.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


def leaf(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A fresh leaf with the same values and strides (layout is kept: clone preserves it)."""
    return None if tensor is None else tensor.detach().clone().requires_grad_(True)


def seeded_generator(seed: int) -> torch.Generator:
    """A generator on the default device, so operands land where a test's device context puts
    them (the GPU in test_triton.py when one is present)."""
    return torch.Generator(torch.get_default_device()).manual_seed(seed)


def run_with_grads(fn, input, weight, bias, grad_output_seed: int = 0):
    """Output of fn(input, weight, bias) and the gradients of a fixed random projection of it."""
    input, weight, bias = leaf(input), leaf(weight), leaf(bias)
    output = fn(input, weight, bias)
    generator = seeded_generator(grad_output_seed)
    grad_output = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    grad_output = grad_output.to(output.dtype)
    wrt = [t for t in (input, weight, bias) if t is not None]
    grads = torch.autograd.grad(output, wrt, grad_output)
    return output, grads


def assert_matches_native(spatial_dims, input, weight, bias, stride, padding, dilation, groups,
                          *, dtype=torch.float64, **choice):
    """dw.conv_nd with ``choice`` (block_size= or algorithm=) equals F.convNd: output and the
    input, weight and bias gradients."""

    def native(x, w, b):
        return dw.reference_conv(x, w, b, stride, padding, dilation, groups)

    def ours(x, w, b):
        return dw.functional.conv_nd(spatial_dims, x, w, b, stride, padding, dilation, groups,
                                     **choice)

    expected, expected_grads = run_with_grads(native, input, weight, bias)
    actual, actual_grads = run_with_grads(ours, input, weight, bias)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"output {choice}: {m}")
    for name, got, want in zip(("input", "weight", "bias"), actual_grads, expected_grads):
        torch.testing.assert_close(got, want, **tol,
                                   msg=lambda m, name=name: f"{name} gradient {choice}: {m}")


LAYOUTS = ("contiguous", "channels_last", "non_contiguous")


def make_operands(spatial_dims, batch, groups, in_per_group, out_per_group, kernel, sizes, bias,
                  layout="contiguous", dtype=torch.float64, seed=0):
    generator = seeded_generator(seed)
    shape = ((batch,) if batch else ()) + (groups * in_per_group, *sizes)
    if layout == "non_contiguous":
        # every other element of a twice-as-long last dimension: a strided view
        wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=generator, dtype=dtype)
        input = wide[..., ::2]
        # PyTorch calls a view contiguous when no dimension larger than 1 is strided (one
        # element, say), so the stride itself says it is a view
        assert input.stride(-1) == 2
    else:
        input = torch.randn(shape, generator=generator, dtype=dtype)
    if layout == "channels_last" and batch and spatial_dims in (2, 3):
        fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        input = input.contiguous(memory_format=fmt)
    weight = torch.randn(groups * out_per_group, in_per_group, *kernel, generator=generator,
                         dtype=dtype)
    bias_tensor = (torch.randn(groups * out_per_group, generator=generator, dtype=dtype)
                   if bias else None)
    return input, weight, bias_tensor


# (dims, groups, in/group, out/group, kernel, stride, padding, dilation, sizes)
CASES = [
    # MobileNet-style 3x3 depthwise, stride 1 and 2
    (2, 8, 1, 1, (3, 3), 1, 1, 1, (7, 7)),
    (2, 8, 1, 1, (3, 3), 2, 1, 1, (13, 13)),
    # channel multiplier 2 and 3, rectangular kernels, tuple padding
    (2, 6, 1, 2, (1, 5), 1, (0, 2), 1, (7, 9)),
    (2, 4, 1, 3, (7, 3), (2, 1), (3, 1), (1, 2), (13, 7)),
    # grouped: several input and output channels per group (ResNeXt/RegNet)
    (2, 4, 3, 2, (3, 3), 1, 1, 1, (7, 7)),
    (2, 6, 2, 2, (3, 3), 3, 2, 3, (13, 13)),
    # large kernel, dilation, 'same' and 'valid'
    (2, 4, 1, 1, (7, 7), 1, "same", 1, (13, 13)),
    (2, 4, 1, 1, (4, 2), 1, "same", (2, 3), (7, 13)),
    (2, 6, 1, 1, (3, 3), 1, "valid", 2, (13, 7)),
    # size-1 spatial dimension and 1x1 kernels
    (2, 4, 1, 1, (1, 1), 1, 0, 1, (1, 7)),
    # 1D: Mamba-style causal conv1d (left padding done by the caller) and strided
    (1, 8, 1, 1, (4,), 1, 3, 1, (13,)),
    (1, 6, 2, 1, (7,), 2, "valid", 2, (13,)),
    (1, 4, 1, 2, (3,), 1, "same", 3, (7,)),
    # 3D: X3D-style depthwise 3x3x3, grouped, strided
    (3, 4, 1, 1, (3, 3, 3), 1, 1, 1, (5, 7, 7)),
    (3, 6, 2, 1, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, (3, 7, 5)),
    (3, 4, 1, 2, (3, 1, 2), 1, "same", (2, 1, 1), (5, 3, 4)),
]


@st.composite
def conv_problems(draw, depthwise: bool = False):
    """A random grouped (``depthwise``: one input channel per group) convolution problem."""
    dims = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    in_pg = 1 if depthwise else draw(st.integers(1, 3))
    out_pg = draw(st.integers(1, 3))
    max_kernel = 7 if dims < 3 else 3
    kernel = tuple(draw(st.integers(1, max_kernel)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    padding_kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    if padding_kind == "same":
        stride = (1,) * dims
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    if padding_kind == "int":
        padding = draw(st.integers(0, 3))
    elif padding_kind == "tuple":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(dims))
    else:
        padding = padding_kind
    # spatial sizes: at least the dilated kernel so every padding gives an output
    sizes = tuple(d * (k - 1) + 1 + draw(st.sampled_from([0, 1, 2, 5]))
                  for k, d in zip(kernel, dilation))
    batch = draw(st.sampled_from([0, 1, 2]))
    bias = draw(st.booleans())
    layout = draw(st.sampled_from(LAYOUTS))
    block_size = draw(st.sampled_from(valid_block_sizes(groups) + [None]))
    return dims, batch, groups, in_pg, out_pg, kernel, sizes, bias, layout, stride, padding, \
        dilation, block_size


def assert_func_transforms_match_native(algorithm: str, layout: str, multiplier: int,
                                        dims: int = 2) -> None:
    """``torch.func`` over a depthwise conv through ``algorithm`` against native ``F.convNd``
    (float64): grad, vmap with the inputs or the weights batched, per-sample gradients
    (vmap of grad), jacrev, jvp and jacfwd."""
    channels, kernel, sizes = 3, (3,) * dims, (5, 6, 7)[-dims:]
    x, weight, bias = make_operands(dims, 2, channels, 1, multiplier, kernel, sizes, True, layout)
    native_conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    ours_conv = (dw.conv1d, dw.conv2d, dw.conv3d)[dims - 1]
    probe = torch.randn(native_conv(x, weight, bias, 2, 1, 1, channels).shape,
                        generator=seeded_generator(1), dtype=x.dtype)

    def native(x, weight, bias):
        return native_conv(x, weight, bias, 2, 1, 1, channels)

    def ours(x, weight, bias):
        return ours_conv(x, weight, bias, 2, 1, 1, channels, algorithm=algorithm)

    def loss(conv):
        return lambda x, weight, bias: (conv(x, weight, bias) * probe[: x.shape[0]]).sum()

    stacked = torch.stack([x, x.flip(0)])
    transforms = {
        "grad": lambda conv: func.grad(loss(conv), argnums=(0, 1, 2))(x, weight, bias),
        "vmap over inputs": lambda conv: func.vmap(conv, in_dims=(0, None, None))(
            stacked, weight, bias),
        "vmap over weights": lambda conv: func.vmap(conv, in_dims=(None, 0, 0))(
            x, torch.stack([weight, 2 * weight]), torch.stack([bias, -bias])),
        "per-sample grads": lambda conv: func.vmap(
            func.grad(loss(conv), argnums=(1, 2)), in_dims=(0, None, None))(
            x.unsqueeze(1), weight, bias),
        "jacrev": lambda conv: func.jacrev(conv, argnums=1)(x, weight, bias),
        "jvp": lambda conv: func.jvp(conv, (x, weight, bias), (x.cos(), weight.sin(),
                                                               bias.exp())),
        "jacfwd": lambda conv: func.jacfwd(conv, argnums=(0, 2))(x[:1], weight, bias),
    }
    for name, transform in transforms.items():
        torch.testing.assert_close(transform(ours), transform(native),
                                   msg=lambda message, name=name: f"{name}: {message}",
                                   **TOLERANCES[torch.float64])
