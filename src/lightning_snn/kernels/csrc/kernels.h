// Declarations of the CPU kernels that bindings.cpp exposes to Python. Each source file includes this
// header, so a signature cannot differ between its definition and its binding.

#pragma once

#include <torch/extension.h>

#include <memory>
#include <optional>
#include <vector>

namespace lightning_snn {

// An event-driven convolution prepared once for a weight and an input shape (convolution.cpp), so that
// loops over time steps do not rebuild its tables on every call.
class SparseConvolution {
 public:
  // Prepares the convolution with weight (out_channels, in_channels, kernel_h, kernel_w) of inputs of
  // spatial size (height, width).
  SparseConvolution(const torch::Tensor& weight, int64_t height, int64_t width, int64_t stride_h, int64_t stride_w,
                    int64_t pad_h, int64_t pad_w);
  // Returns base + conv(input) as a new contiguous tensor, for input (A, B, in_channels, height, width)
  // and base (A, B, out_channels, out_height, out_width) or none.
  torch::Tensor forward(const torch::Tensor& input, const std::optional<torch::Tensor>& base) const;

  struct Plan;

 private:
  std::shared_ptr<const Plan> plan_;
};

void forward_step(const torch::Tensor& mem, const torch::Tensor& syn, const torch::Tensor& pending,
                  const torch::Tensor& decay_mem, const torch::Tensor& one_minus_decay_mem,
                  const torch::Tensor& decay_syn, double threshold, std::optional<double> clamp_max,
                  torch::Tensor spikes, torch::Tensor new_mem, torch::Tensor new_syn,
                  std::optional<torch::Tensor> not_clamped);
void backward_step(const torch::Tensor& adjoint_mem, const torch::Tensor& keep, const torch::Tensor& direct,
                   std::optional<torch::Tensor> spike_grad, std::optional<torch::Tensor> pseudo_derivative,
                   const torch::Tensor& adjoint_syn_next, const torch::Tensor& decay_mem,
                   const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn,
                   torch::Tensor new_adjoint_mem, torch::Tensor adjoint_syn,
                   std::optional<torch::Tensor> grad_membrane_input);
void forward_sequence(const torch::Tensor& drive, const torch::Tensor& pending, const torch::Tensor& decay_mem,
                      const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn, double threshold_value,
                      std::optional<double> clamp, torch::Tensor spikes, torch::Tensor mem_sequence,
                      std::optional<torch::Tensor> syn_sequence, std::optional<torch::Tensor> not_clamped,
                      torch::Tensor final_mem, torch::Tensor final_syn);
void backward_steps(torch::Tensor adjoint_mem, const torch::Tensor& keep, const torch::Tensor& direct,
                    torch::Tensor adjoint_syn, const torch::Tensor& decay_mem,
                    const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn,
                    std::optional<torch::Tensor> grad_membrane_input);
void backward_sequence_superspike(torch::Tensor adjoint_mem, const torch::Tensor& mem_sequence,
                                  const torch::Tensor& grad_spikes, std::optional<torch::Tensor> not_clamped,
                                  torch::Tensor grad_drive, torch::Tensor edge, const torch::Tensor& decay_mem,
                                  const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn,
                                  double threshold_value, double beta_value, double scale_value,
                                  std::optional<torch::Tensor> grad_membrane_input,
                                  std::optional<torch::Tensor> weight, std::optional<torch::Tensor> mask,
                                  std::vector<int64_t> conv_padding);
void forward_sequence_recurrent(const torch::Tensor& drive, torch::Tensor pending_work, const torch::Tensor& decay_mem,
                                const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn,
                                double threshold_value, std::optional<double> clamp, torch::Tensor spikes,
                                torch::Tensor mem_sequence, std::optional<torch::Tensor> syn_sequence,
                                std::optional<torch::Tensor> not_clamped, torch::Tensor final_mem,
                                torch::Tensor final_syn, const torch::Tensor& weight,
                                std::optional<torch::Tensor> mask, double event_density,
                                std::vector<int64_t> conv_padding);
std::vector<torch::Tensor> max_pool2d_forward(const torch::Tensor& input, int64_t kernel_h, int64_t kernel_w,
                                              int64_t stride_h, int64_t stride_w);
torch::Tensor max_pool2d_backward(const torch::Tensor& grad_output, const torch::Tensor& argmax, int64_t height,
                                  int64_t width, int64_t kernel_w, int64_t stride_h, int64_t stride_w);
std::vector<torch::Tensor> find_events(const torch::Tensor& x);
torch::Tensor conv_forward_events(const torch::Tensor& input, const torch::Tensor& weight,
                                  std::optional<torch::Tensor> base, int64_t out_height, int64_t out_width,
                                  int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w);
torch::Tensor conv_weight_gradient_events(const torch::Tensor& input, const torch::Tensor& grad_output,
                                          int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                                          int64_t pad_h, int64_t pad_w);

}  // namespace lightning_snn
