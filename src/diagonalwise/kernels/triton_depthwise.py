"""Triton kernels for depthwise convolution (groups == in_channels, any channel multiplier).

Three kernels, each tiled over (pixels x channels) and addressing tensors through their strides,
so NCHW and channels_last inputs both run without a copy:

- forward: ``y[n, o, p] = b[o] + sum_taps x[n, o // M, p'] * w[o, tap]``;
- input gradient: the same sum run backwards, gathering every output position that read a pixel;
- weight gradient: per output channel and tap, a reduction over batch and pixels, split into a
  fixed number of chunks whose partial sums are added by ``torch.sum``: deterministic, no atomics.

Accumulation is in float32 (float64 for float64 tensors, so the CPU tests check exactness).
This module imports Triton; the package imports it only when the ``triton`` algorithm runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _forward_kernel(x, w, b, y, C, H, W, OH, OW, M, sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                    KH, KW, SH, SW, PH, PW, DH, DW, HAS_BIAS: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    o = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < OH * OW
    o_ok = o < C * M
    oh = p // OW
    ow = p % OW
    c = o // M
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for kh in range(KH):
        ih = oh * SH - PH + kh * DH
        h_ok = p_ok & (ih >= 0) & (ih < H)
        for kw in range(KW):
            iw = ow * SW - PW + kw * DW
            ok = h_ok & (iw >= 0) & (iw < W)
            xv = tl.load(x + n * sxn + ih[:, None] * sxh + iw[:, None] * sxw + c[None, :] * sxc,
                         mask=ok[:, None] & o_ok[None, :], other=0.0)
            wv = tl.load(w + o * (KH * KW) + kh * KW + kw, mask=o_ok, other=0.0)
            acc += xv.to(ACC) * wv.to(ACC)[None, :]
    if HAS_BIAS:
        acc += tl.load(b + o, mask=o_ok, other=0.0).to(ACC)[None, :]
    tl.store(y + n * syn + oh[:, None] * syh + ow[:, None] * syw + o[None, :] * syc,
             acc.to(y.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])


@triton.jit
def _input_grad_kernel(dy, w, dx, C, H, W, OH, OW, M, sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
                       KH, KW, SH, SW, PH, PW, DH, DW,
                       ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok = q < H * W
    c_ok = c < C
    ih = q // W
    iw = q % W
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for kh in range(KH):
        th = ih + PH - kh * DH
        oh = th // SH
        h_ok = q_ok & (th >= 0) & (th % SH == 0) & (oh < OH)
        for kw in range(KW):
            tw = iw + PW - kw * DW
            ow = tw // SW
            ok = h_ok & (tw >= 0) & (tw % SW == 0) & (ow < OW)
            for m in range(M):
                o = c * M + m
                dyv = tl.load(dy + n * sdn + oh[:, None] * sdh + ow[:, None] * sdw
                              + o[None, :] * sdc, mask=ok[:, None] & c_ok[None, :], other=0.0)
                wv = tl.load(w + o * (KH * KW) + kh * KW + kw, mask=c_ok, other=0.0)
                acc += dyv.to(ACC) * wv.to(ACC)[None, :]
    tl.store(dx + n * sxn + ih[:, None] * sxh + iw[:, None] * sxw + c[None, :] * sxc,
             acc.to(dx.dtype.element_ty), mask=q_ok[:, None] & c_ok[None, :])


@triton.jit
def _weight_grad_kernel(x, dy, partial, C, H, W, OH, OW, M, TOTAL, CHUNK,
                        sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, KH, KW, SH, SW, PH, PW, DH, DW,
                        ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    o = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    o_ok = o < C * M
    c = o // M
    kh = tap // KW
    kw = tap % KW
    start = split * CHUNK
    acc = tl.zeros((BLOCK_C,), dtype=ACC)
    for offset in range(0, CHUNK, BLOCK_P):
        index = start + offset + tl.arange(0, BLOCK_P)
        n = (index // (OH * OW)).to(tl.int64)
        rest = index % (OH * OW)
        oh = rest // OW
        ow = rest % OW
        ih = oh * SH - PH + kh * DH
        iw = ow * SW - PW + kw * DW
        ok = (index < TOTAL) & (offset + tl.arange(0, BLOCK_P) < CHUNK) & (ih >= 0) & (ih < H) \
            & (iw >= 0) & (iw < W)
        mask = ok[:, None] & o_ok[None, :]
        xv = tl.load(x + n[:, None] * sxn + ih[:, None] * sxh + iw[:, None] * sxw
                     + c[None, :] * sxc, mask=mask, other=0.0)
        dyv = tl.load(dy + n[:, None] * sdn + oh[:, None] * sdh + ow[:, None] * sdw
                      + o[None, :] * sdc, mask=mask, other=0.0)
        acc += tl.sum(xv.to(ACC) * dyv.to(ACC), axis=0)
    tl.store(partial + split * (C * M * KH * KW) + o * (KH * KW) + tap, acc, mask=o_ok)


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(channels_contiguous: bool) -> tuple[int, int]:
    """(pixels, channels) per tile: wide in whichever dimension is contiguous in memory."""
    return (16, 64) if channels_contiguous else (64, 16)


def _geometry(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, output_size):
    n, c, h, w = x.shape
    oc, _, kh, kw = weight.shape
    return dict(C=c, H=h, W=w, OH=output_size[0], OW=output_size[1], M=oc // c, KH=kh, KW=kw,
                SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], DH=dilation[0],
                DW=dilation[1])


def forward(x, weight, bias, stride, padding, dilation, output_size) -> torch.Tensor:
    """y (N, C*M, OH, OW) in x's memory layout; ``padding`` is the leading pad per dimension."""
    g = _geometry(x, weight, stride, padding, dilation, output_size)
    channels_last = x.dim() == 4 and x.stride(1) == 1 and g["C"] > 1
    y = torch.empty((x.shape[0], weight.shape[0], *output_size), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    block_p, block_c = _blocks(channels_last)
    grid = (x.shape[0], triton.cdiv(g["OH"] * g["OW"], block_p), triton.cdiv(y.shape[1], block_c))
    w = weight.reshape(weight.shape[0], -1).contiguous()
    _forward_kernel[grid](x, w, bias if bias is not None else w, y, g["C"], g["H"], g["W"],
                          g["OH"], g["OW"], g["M"], *x.stride(), *y.stride(), g["KH"], g["KW"],
                          g["SH"], g["SW"], g["PH"], g["PW"], g["DH"], g["DW"],
                          HAS_BIAS=bias is not None, ACC=_accumulator(x.dtype), BLOCK_P=block_p,
                          BLOCK_C=block_c)
    return y


def input_grad(grad_output, x, weight, stride, padding, dilation) -> torch.Tensor:
    g = _geometry(x, weight, stride, padding, dilation, grad_output.shape[2:])
    channels_last = x.stride(1) == 1 and g["C"] > 1
    dx = torch.empty_like(x, memory_format=torch.channels_last if channels_last
                          else torch.contiguous_format)
    block_p, block_c = _blocks(channels_last)
    grid = (x.shape[0], triton.cdiv(g["H"] * g["W"], block_p), triton.cdiv(g["C"], block_c))
    w = weight.reshape(weight.shape[0], -1).contiguous()
    _input_grad_kernel[grid](grad_output, w, dx, g["C"], g["H"], g["W"], g["OH"], g["OW"],
                             g["M"], *grad_output.stride(), *dx.stride(), g["KH"], g["KW"],
                             g["SH"], g["SW"], g["PH"], g["PW"], g["DH"], g["DW"],
                             ACC=_accumulator(x.dtype), BLOCK_P=block_p, BLOCK_C=block_c)
    return dx


def weight_grad(grad_output, x, weight, stride, padding, dilation) -> torch.Tensor:
    g = _geometry(x, weight, stride, padding, dilation, grad_output.shape[2:])
    out_channels, taps = weight.shape[0], g["KH"] * g["KW"]
    total = x.shape[0] * g["OH"] * g["OW"]
    block_p, block_c = _blocks(x.stride(1) == 1 and g["C"] > 1)
    channel_blocks = triton.cdiv(out_channels, block_c)
    # enough programs to fill a GPU, each reducing a chunk of at least a few tiles
    splits = max(1, min(triton.cdiv(total, 4 * block_p), 2048 // max(1, channel_blocks * taps)))
    chunk = triton.cdiv(triton.cdiv(total, splits), block_p) * block_p
    splits = triton.cdiv(total, chunk)
    partial = torch.empty((splits, out_channels, taps), device=x.device,
                          dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    _weight_grad_kernel[(channel_blocks, taps, splits)](
        x, grad_output, partial, g["C"], g["H"], g["W"], g["OH"], g["OW"], g["M"], total, chunk,
        *x.stride(), *grad_output.stride(), g["KH"], g["KW"], g["SH"], g["SW"], g["PH"], g["PW"],
        g["DH"], g["DW"], ACC=_accumulator(x.dtype), BLOCK_P=block_p, BLOCK_C=block_c)
    return partial.sum(0).reshape(weight.shape).to(weight.dtype)
