// The direct CPU depthwise kernels of cpu_depthwise.cpp, on 5-D tensors: x (N, C, D, H, W),
// weight (C * M, 1, KD, KH, KW) for a channel multiplier M, padding the zeros before the first
// element of each spatial dimension, output_size the output's (D, H, W) (which implies the
// trailing padding). Outputs and the input gradient take x's layout (NCDHW or channels_last).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace diagonalwise {

at::Tensor depthwise_forward(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation,
                             at::IntArrayRef output_size);

// {dx, dw, db}; those not asked for are undefined.
std::vector<at::Tensor> depthwise_backward(const at::Tensor& grad_output, const at::Tensor& x,
                                           const at::Tensor& weight, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           bool input_grad, bool weight_grad, bool bias_grad);

// Tests: fill every output with NaN before computing it, so an element the kernels forget to
// write shows up.
void set_poison_outputs(bool on);

// Tests: the bytes a call moves above which large outputs are written with streaming stores (the
// default: 16 MB; 0 streams every output that can be); returns the previous threshold.
int64_t set_streaming_threshold(int64_t bytes);

}  // namespace diagonalwise
