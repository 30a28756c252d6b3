"""Triton kernels for depthwise convolution (groups == in_channels, any channel multiplier M).

The kernels are 3D; a 2D convolution runs with depth 1 and a 1D one with depth and height 1.
Each is tiled over (pixels x channels) and addresses tensors through their strides, so NCHW and
channels_last inputs both run without a copy:

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

from ..layout import channels_innermost, memory_format_like


@triton.jit
def _forward_kernel(x, w, b, y, C, D, H, W, OD, OH, OW, M,
                    sxn, sxc, sxd, sxh, sxw, syn, syc, syd, syh, syw,
                    KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW, HAS_BIAS: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    o = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < OD * OH * OW
    o_ok = o < C * M
    od = p // (OH * OW)
    oh = (p // OW) % OH
    ow = p % OW
    c = o // M
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for kd in range(KD):
        id_ = od * SD - PD + kd * DD
        d_ok = p_ok & (id_ >= 0) & (id_ < D)
        for kh in range(KH):
            ih = oh * SH - PH + kh * DH
            h_ok = d_ok & (ih >= 0) & (ih < H)
            for kw in range(KW):
                iw = ow * SW - PW + kw * DW
                ok = h_ok & (iw >= 0) & (iw < W)
                xv = tl.load(x + n * sxn + id_[:, None] * sxd + ih[:, None] * sxh
                             + iw[:, None] * sxw + c[None, :] * sxc,
                             mask=ok[:, None] & o_ok[None, :], other=0.0)
                wv = tl.load(w + o * (KD * KH * KW) + (kd * KH + kh) * KW + kw, mask=o_ok,
                             other=0.0)
                acc += xv.to(ACC) * wv.to(ACC)[None, :]
    if HAS_BIAS:
        acc += tl.load(b + o, mask=o_ok, other=0.0).to(ACC)[None, :]
    tl.store(y + n * syn + od[:, None] * syd + oh[:, None] * syh + ow[:, None] * syw
             + o[None, :] * syc, acc.to(y.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])


@triton.jit
def _input_grad_kernel(dy, w, dx, C, D, H, W, OD, OH, OW, M,
                       sdn, sdc, sdd, sdh, sdw, sxn, sxc, sxd, sxh, sxw,
                       KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW,
                       ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok = q < D * H * W
    c_ok = c < C
    id_ = q // (H * W)
    ih = (q // W) % H
    iw = q % W
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for kd in range(KD):
        td = id_ + PD - kd * DD
        od = td // SD
        d_ok = q_ok & (td >= 0) & (td % SD == 0) & (od < OD)
        for kh in range(KH):
            th = ih + PH - kh * DH
            oh = th // SH
            h_ok = d_ok & (th >= 0) & (th % SH == 0) & (oh < OH)
            for kw in range(KW):
                tw = iw + PW - kw * DW
                ow = tw // SW
                ok = h_ok & (tw >= 0) & (tw % SW == 0) & (ow < OW)
                for m in range(M):
                    o = c * M + m
                    dyv = tl.load(dy + n * sdn + od[:, None] * sdd + oh[:, None] * sdh
                                  + ow[:, None] * sdw + o[None, :] * sdc,
                                  mask=ok[:, None] & c_ok[None, :], other=0.0)
                    wv = tl.load(w + o * (KD * KH * KW) + (kd * KH + kh) * KW + kw, mask=c_ok,
                                 other=0.0)
                    acc += dyv.to(ACC) * wv.to(ACC)[None, :]
    tl.store(dx + n * sxn + id_[:, None] * sxd + ih[:, None] * sxh + iw[:, None] * sxw
             + c[None, :] * sxc, acc.to(dx.dtype.element_ty), mask=q_ok[:, None] & c_ok[None, :])


@triton.jit
def _weight_grad_kernel(x, dy, partial, C, D, H, W, OD, OH, OW, M, TOTAL, CHUNK,
                        sxn, sxc, sxd, sxh, sxw, sdn, sdc, sdd, sdh, sdw,
                        KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW,
                        ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    o = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    o_ok = o < C * M
    c = o // M
    kd = tap // (KH * KW)
    kh = (tap // KW) % KH
    kw = tap % KW
    start = split * CHUNK
    acc = tl.zeros((BLOCK_C,), dtype=ACC)
    for offset in range(0, CHUNK, BLOCK_P):
        step = offset + tl.arange(0, BLOCK_P)
        index = start + step
        n = (index // (OD * OH * OW)).to(tl.int64)
        od = (index // (OH * OW)) % OD
        oh = (index // OW) % OH
        ow = index % OW
        id_ = od * SD - PD + kd * DD
        ih = oh * SH - PH + kh * DH
        iw = ow * SW - PW + kw * DW
        ok = (index < TOTAL) & (step < CHUNK) & (id_ >= 0) & (id_ < D) & (ih >= 0) & (ih < H) \
            & (iw >= 0) & (iw < W)
        mask = ok[:, None] & o_ok[None, :]
        xv = tl.load(x + n[:, None] * sxn + id_[:, None] * sxd + ih[:, None] * sxh
                     + iw[:, None] * sxw + c[None, :] * sxc, mask=mask, other=0.0)
        dyv = tl.load(dy + n[:, None] * sdn + od[:, None] * sdd + oh[:, None] * sdh
                      + ow[:, None] * sdw + o[None, :] * sdc, mask=mask, other=0.0)
        acc += tl.sum(xv.to(ACC) * dyv.to(ACC), axis=0)
    taps = KD * KH * KW
    tl.store(partial + split * (C * M * taps) + o * taps + tap, acc, mask=o_ok)


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(x: torch.Tensor) -> tuple[int, int]:
    """(pixels, channels) per tile: wide in whichever dimension is contiguous in memory."""
    return (16, 64) if channels_innermost(x) else (64, 16)


def _geometry(x, weight, stride, padding, dilation, output_size) -> list[int]:
    """C, D, H, W, OD, OH, OW, M and the per-dimension kernel, stride, padding, dilation."""
    return [x.shape[1], *x.shape[2:], *output_size, weight.shape[0] // x.shape[1],
            *weight.shape[2:], *stride, *padding, *dilation]


def forward(x, weight, bias, stride, padding, dilation, output_size) -> torch.Tensor:
    """x (N, C, D, H, W) -> y (N, C*M, *output_size) in x's memory layout; ``padding`` is the
    leading pad per dimension."""
    y = torch.empty((x.shape[0], weight.shape[0], *output_size), device=x.device, dtype=x.dtype,
                    memory_format=memory_format_like(x))
    block_p, block_c = _blocks(x)
    pixels = output_size[0] * output_size[1] * output_size[2]
    grid = (x.shape[0], triton.cdiv(pixels, block_p), triton.cdiv(y.shape[1], block_c))
    w = weight.reshape(weight.shape[0], -1).contiguous()
    c, d, h, wd, od, oh, ow, m, *conv = _geometry(x, weight, stride, padding, dilation,
                                                  output_size)
    _forward_kernel[grid](x, w, bias if bias is not None else w, y, c, d, h, wd, od, oh, ow, m,
                          *x.stride(), *y.stride(), *conv, HAS_BIAS=bias is not None,
                          ACC=_accumulator(x.dtype), BLOCK_P=block_p, BLOCK_C=block_c)
    return y


def input_grad(grad_output, x, weight, stride, padding, dilation) -> torch.Tensor:
    dx = torch.empty_like(x, memory_format=memory_format_like(x))
    block_p, block_c = _blocks(x)
    c, d, h, wd, od, oh, ow, m, *conv = _geometry(x, weight, stride, padding, dilation,
                                                  grad_output.shape[2:])
    grid = (x.shape[0], triton.cdiv(d * h * wd, block_p), triton.cdiv(c, block_c))
    w = weight.reshape(weight.shape[0], -1).contiguous()
    _input_grad_kernel[grid](grad_output, w, dx, c, d, h, wd, od, oh, ow, m,
                             *grad_output.stride(), *dx.stride(), *conv,
                             ACC=_accumulator(x.dtype), BLOCK_P=block_p, BLOCK_C=block_c)
    return dx


def weight_grad(grad_output, x, weight, stride, padding, dilation) -> torch.Tensor:
    c, d, h, wd, od, oh, ow, m, *conv = _geometry(x, weight, stride, padding, dilation,
                                                  grad_output.shape[2:])
    out_channels, taps = weight.shape[0], weight[0].numel()
    total = x.shape[0] * od * oh * ow
    block_p, block_c = _blocks(x)
    channel_blocks = triton.cdiv(out_channels, block_c)
    # enough programs to fill a GPU, each reducing a chunk of at least a few tiles
    splits = max(1, min(triton.cdiv(total, 4 * block_p), 2048 // max(1, channel_blocks * taps)))
    chunk = triton.cdiv(triton.cdiv(total, splits), block_p) * block_p
    splits = triton.cdiv(total, chunk)
    partial = torch.empty((splits, out_channels, taps), device=x.device,
                          dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    _weight_grad_kernel[(channel_blocks, taps, splits)](
        x, grad_output, partial, c, d, h, wd, od, oh, ow, m, total, chunk,
        *x.stride(), *grad_output.stride(), *conv,
        ACC=_accumulator(x.dtype), BLOCK_P=block_p, BLOCK_C=block_c)
    return partial.sum(0).reshape(weight.shape).to(weight.dtype)
