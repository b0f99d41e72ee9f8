// Max pooling without padding or dilation, with the window index of each maximum kept as one byte.
//
// torch's max_pool2d keeps a 64-bit flat index per output and, on channel-first spike maps, runs
// several times slower than the memory traffic requires. Ties go to the first maximum in row-major
// window order, and NaN wins, as in torch, so outputs and gradients are identical to torch's.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "kernels.h"

#include <cstdint>
#include <vector>

namespace lightning_snn {

// input (N, C, H, W) contiguous. Returns the pooled maps and the window index of each maximum.
std::vector<torch::Tensor> max_pool2d_forward(const torch::Tensor& input, int64_t kernel_h, int64_t kernel_w,
                                              int64_t stride_h, int64_t stride_w) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous() && input.device().is_cpu(),
              "input must be a contiguous (N, C, H, W) CPU tensor");
  TORCH_CHECK(kernel_h * kernel_w <= 256, "the pooling window must have at most 256 elements");
  const int64_t planes = input.size(0) * input.size(1), height = input.size(2), width = input.size(3);
  const int64_t out_h = (height - kernel_h) / stride_h + 1, out_w = (width - kernel_w) / stride_w + 1;
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "the pooling window is larger than the input");
  auto output = torch::empty({input.size(0), input.size(1), out_h, out_w}, input.options());
  auto argmax = torch::empty({input.size(0), input.size(1), out_h, out_w}, input.options().dtype(torch::kUInt8));

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d_forward", [&] {
    const scalar_t* in = input.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    uint8_t* index = argmax.data_ptr<uint8_t>();
    at::parallel_for(0, planes, 16, [&](int64_t first, int64_t last) {
      for (int64_t p = first; p < last; ++p) {
        const scalar_t* plane = in + p * height * width;
        for (int64_t oy = 0; oy < out_h; ++oy) {
          // Taps in the outer loops and output columns in the inner one: the inner loop has no
          // dependency between iterations, so it vectorises.
          scalar_t* best = out + (p * out_h + oy) * out_w;
          uint8_t* best_index = index + (p * out_h + oy) * out_w;
          const scalar_t* top = plane + oy * stride_h * width;
          for (int64_t ox = 0; ox < out_w; ++ox) {
            best[ox] = top[ox * stride_w];
            best_index[ox] = 0;
          }
          for (int64_t ky = 0; ky < kernel_h; ++ky) {
            for (int64_t kx = 0; kx < kernel_w; ++kx) {
              if (ky == 0 && kx == 0) continue;
              const scalar_t* row = top + ky * width + kx;
              const uint8_t tap = static_cast<uint8_t>(ky * kernel_w + kx);
              for (int64_t ox = 0; ox < out_w; ++ox) {
                const scalar_t value = row[ox * stride_w];
                const bool larger = (value > best[ox]) | (value != value);
                best[ox] = larger ? value : best[ox];
                best_index[ox] = larger ? tap : best_index[ox];
              }
            }
          }
        }
      }
    });
  });
  return {output, argmax};
}

// Routes each output gradient to the input that held the maximum. Overlapping windows add up.
torch::Tensor max_pool2d_backward(const torch::Tensor& grad_output, const torch::Tensor& argmax, int64_t height,
                                  int64_t width, int64_t kernel_w, int64_t stride_h, int64_t stride_w) {
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.is_contiguous() && argmax.is_contiguous() &&
                  argmax.sizes() == grad_output.sizes(),
              "grad_output and argmax must be contiguous tensors of the pooled shape");
  const int64_t planes = grad_output.size(0) * grad_output.size(1);
  const int64_t out_h = grad_output.size(2), out_w = grad_output.size(3);
  auto grad_input = torch::zeros({grad_output.size(0), grad_output.size(1), height, width}, grad_output.options());

  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "max_pool2d_backward", [&] {
    const scalar_t* grad = grad_output.data_ptr<scalar_t>();
    const uint8_t* index = argmax.data_ptr<uint8_t>();
    scalar_t* grad_in = grad_input.data_ptr<scalar_t>();
    at::parallel_for(0, planes, 16, [&](int64_t first, int64_t last) {
      for (int64_t p = first; p < last; ++p) {
        scalar_t* plane = grad_in + p * height * width;
        for (int64_t oy = 0; oy < out_h; ++oy) {
          for (int64_t ox = 0; ox < out_w; ++ox) {
            const int64_t at = (p * out_h + oy) * out_w + ox;
            const int64_t ky = index[at] / kernel_w, kx = index[at] % kernel_w;
            plane[(oy * stride_h + ky) * width + ox * stride_w + kx] += grad[at];
          }
        }
      }
    });
  });
  return grad_input;
}

}  // namespace lightning_snn
