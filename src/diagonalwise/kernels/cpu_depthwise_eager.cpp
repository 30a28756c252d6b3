// The extension's Python module: the kernels of cpu_depthwise.h for the custom ops of cpu_ops.py,
// and `depthwise`, the cpu_direct algorithm's plain eager calls whole in C++: a 1D, 2D or 3D
// depthwise call, batched or not, lifted to the 3-D kernels (leading spatial sizes of 1), with
// its autograd. Equivalence contract (cpu_ops.py): F.conv1d/2d/3d's value and input, weight and
// bias gradients; a backward that may itself be differentiated (create_graph) is computed by
// native's convolution backward, whose derivatives exist. Through Python (the lifting, the
// checks, an autograd.Function) such a call cost about 150 us more than its kernel once other
// layers had cleared the caches (v11 in benchmarks/cpu_direct_notes.md).
#include "cpu_depthwise.h"

#include <torch/extension.h>

#include <string>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Python's floor division (the output size formula's numerator may be negative).
int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

// The lifted call's padding for F.pad / constant_pad_nd (last dimension first): per dimension
// the leading zeros and the trailing ones that output_size implies (negative: input cut off).
std::vector<int64_t> pad_widths(const at::Tensor& x, const at::Tensor& weight,
                                const std::vector<int64_t>& stride,
                                const std::vector<int64_t>& padding,
                                const std::vector<int64_t>& dilation,
                                const std::vector<int64_t>& output_size) {
  std::vector<int64_t> pads;
  for (int64_t i = 2; i >= 0; --i) {
    const int64_t trailing = (output_size[i] - 1) * stride[i] +
                             (weight.size(2 + i) - 1) * dilation[i] + 1 - (x.size(2 + i) + padding[i]);
    pads.push_back(padding[i]);
    pads.push_back(trailing);
  }
  return pads;
}

class Depthwise : public torch::autograd::Function<Depthwise> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias,
                            const std::vector<int64_t>& stride,
                            const std::vector<int64_t>& padding,
                            const std::vector<int64_t>& dilation,
                            const std::vector<int64_t>& output_size) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["output_size"] = output_size;
    ctx->saved_data["has_bias"] = bias.has_value();
    return diagonalwise::depthwise_forward(x, weight, bias, stride, padding, dilation,
                                           output_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &dy = grad_outputs[0];
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    // the output edges are the tensor inputs only: a bias's is the third where there is one
    const bool need_b = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    at::Tensor dx, dw, db;
    if (at::GradMode::is_enabled()) {
      // create_graph: native's convolution backward on the padded input, differentiable again
      const std::vector<int64_t> pads = pad_widths(
          x, weight, stride, padding, dilation, ctx->saved_data["output_size"].toIntVector());
      std::vector<int64_t> unpad(pads.size());
      for (size_t i = 0; i < pads.size(); ++i) unpad[i] = -pads[i];
      const std::vector<int64_t> zeros(3, 0);
      auto grads = at::convolution_backward(dy, at::constant_pad_nd(x, pads), weight, std::nullopt,
                                            stride, zeros, dilation, false, zeros, x.size(1),
                                            {need_x, need_w, false});
      if (need_x) dx = at::constant_pad_nd(std::get<0>(grads), unpad);
      dw = std::get<1>(grads);
      if (need_b) db = dy.sum({0, 2, 3, 4});
    } else {
      std::vector<at::Tensor> grads = diagonalwise::depthwise_backward(
          dy, x, weight, stride, padding, dilation, need_x, need_w, need_b);
      dx = grads[0];
      dw = grads[1];
      db = grads[2];
    }
    return {dx, dw, db, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// F.conv1d/2d/3d(input, weight, bias, stride, padding, dilation, groups=channels) through the 3-D
// kernels; `padding_mode` "same" or "valid" stands for `padding`, "" takes it.
at::Tensor depthwise(const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                     at::IntArrayRef padding, const std::string& padding_mode,
                     at::IntArrayRef dilation) {
  const int64_t spatial = weight.dim() - 2, missing = 3 - spatial;
  TORCH_CHECK(spatial >= 1 && spatial <= 3, "cpu_depthwise: a 3-D to 5-D weight expected");
  TORCH_CHECK(input.dim() == weight.dim() || input.dim() == weight.dim() - 1,
              "cpu_depthwise: a ", weight.dim(), "-D weight takes a ", weight.dim(), "-D input (or ",
              weight.dim() - 1, "-D unbatched), got ", input.dim(), "-D");
  TORCH_CHECK(static_cast<int64_t>(stride.size()) == spatial &&
                  static_cast<int64_t>(dilation.size()) == spatial &&
                  (!padding_mode.empty() || static_cast<int64_t>(padding.size()) == spatial),
              "cpu_depthwise: ", spatial, " strides, paddings and dilations expected, got ",
              stride, ", ", padding, ", ", dilation);
  for (int64_t i = 0; i < spatial; ++i)
    TORCH_CHECK(stride[i] > 0 && dilation[i] > 0 && (!padding_mode.empty() || padding[i] >= 0),
                "strides and dilations must be positive and padding not negative, got stride ",
                stride, ", padding ", padding, ", dilation ", dilation);
  TORCH_CHECK(padding_mode.empty() || padding_mode == "same" || padding_mode == "valid",
              "cpu_depthwise: padding '", padding_mode, "': 'same', 'valid' or sizes expected");
  const bool batched = input.dim() == weight.dim();
  at::Tensor x = batched ? input : input.unsqueeze(0), w = weight;
  for (int64_t i = 0; i < missing; ++i) {
    x = x.unsqueeze(2);
    w = w.unsqueeze(2);
  }
  std::vector<int64_t> stride3(missing, 1), padding3(missing, 0), dilation3(missing, 1), size(3);
  stride3.insert(stride3.end(), stride.begin(), stride.end());
  dilation3.insert(dilation3.end(), dilation.begin(), dilation.end());
  if (padding_mode.empty()) padding3.insert(padding3.end(), padding.begin(), padding.end());
  else padding3.resize(3, 0);
  bool positive = true;
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t reach = dilation3[i] * (w.size(2 + i) - 1);
    if (padding_mode == "same") padding3[i] = reach / 2;
    size[i] = padding_mode == "same"
                  ? x.size(2 + i)
                  : floor_div(x.size(2 + i) + 2 * padding3[i] - reach - 1, stride3[i]) + 1;
    positive = positive && size[i] > 0;
  }
  TORCH_CHECK(positive, "the output size ", at::IntArrayRef(size).slice(missing),
              " is not positive: the dilated kernel ", w.sizes().slice(2 + missing),
              " is larger than the padded input ", x.sizes().slice(2 + missing));
  at::Tensor y = Depthwise::apply(x, w, bias, stride3, padding3, dilation3, size);
  for (int64_t i = 0; i < missing; ++i) y = y.squeeze(2);
  return batched ? y : y.squeeze(0);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &diagonalwise::depthwise_forward, "depthwise convolution, 3-D, CPU");
  m.def("backward", &diagonalwise::depthwise_backward, "its input, weight and bias gradients");
  m.def("depthwise", &depthwise, "a 1D/2D/3D depthwise convolution with autograd (eager calls)");
  m.def("set_poison", &diagonalwise::set_poison_outputs, "fill outputs with NaN first (tests)");
  m.def("set_streaming_threshold", &diagonalwise::set_streaming_threshold,
        "bytes moved above which outputs are streamed (tests)");
}
