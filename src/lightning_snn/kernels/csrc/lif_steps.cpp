// The elementwise work of the LIF sequence kernel and of its adjoint, fused into single passes: one
// time step at a time for recurrent populations, whole sequences for the others.
//
// The Python loop in lif.py would otherwise launch about ten elementwise torch ops per step, and on
// small populations their dispatch costs more than the arithmetic. Each function here reads every
// input once and writes every output once. The forward step performs the same float operations in
// the same order as LIF.step (it is built with -ffp-contract=off, so no multiply-add is fused), which
// keeps spikes and states identical to the plain loop.
//
// All state tensors of the step functions are (batch, neurons) with contiguous rows. A row of an output
// may start at any stride, so that a time slice of a (batch, time, neurons) sequence can be written in
// place. Decays contain one value per neuron.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "kernels.h"

#include <algorithm>
#include <initializer_list>
#include <cstdint>
#include <cstring>
#include <optional>

namespace lightning_snn {

// Batch rows and the row length of a (batch, *shape) tensor whose rows are contiguous.
struct Rows {
  int64_t count;
  int64_t length;
};

Rows rows_of(const torch::Tensor& x) {
  const int64_t count = x.size(0);
  return {count, count == 0 ? 0 : x.numel() / count};
}

// True when every dimension after the first is laid out densely, so that a row is one block.
bool rows_contiguous(const torch::Tensor& x) {
  int64_t expected = 1;
  for (int64_t d = x.dim() - 1; d >= 1; --d) {
    if (x.size(d) != 1 && x.stride(d) != expected) return false;
    expected *= x.size(d);
  }
  return true;
}

void check_rows(const torch::Tensor& x, const Rows& rows, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.size(0) == rows.count && x.numel() == rows.count * rows.length, name,
              " must have the shape of the membrane state");
  TORCH_CHECK(rows_contiguous(x), name, " must have contiguous rows");
}

// Rows per parallel task: about 32k elements, below which threads cost more than they save.
int64_t grain_rows(const Rows& rows) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, rows.length));
}

// A decay factor given for every neuron, so that the inner loops index it like the states and vectorise.
template <typename scalar_t>
const scalar_t* per_neuron(const torch::Tensor& decay, int64_t length, const char* name) {
  TORCH_CHECK(decay.is_contiguous() && decay.numel() == length, name, " must hold one value per neuron");
  return decay.data_ptr<scalar_t>();
}

// One batch row of the forward step. Outputs may alias inputs at the same index (in-place updates),
// which is safe to vectorise, hence ivdep. The clip is a template flag so that the loop has no branch.
template <typename scalar_t, bool kClamp>
void forward_row(const scalar_t* u, const scalar_t* i_syn, const scalar_t* p, const scalar_t* lambda_mem,
                 const scalar_t* leak, const scalar_t* lambda_syn, scalar_t threshold, scalar_t clamp_max,
                 scalar_t* s_out, scalar_t* u_out, scalar_t* i_out, scalar_t* nc_out, int64_t length) {
#pragma GCC ivdep
  for (int64_t n = 0; n < length; ++n) {
    const scalar_t u_n = u[n];
    const scalar_t i_n = i_syn[n];
    const scalar_t stays = u_n <= threshold ? scalar_t(1) : scalar_t(0);
    s_out[n] = u_n > threshold ? scalar_t(1) : scalar_t(0);

    // (lambda_mem * U + (1 - lambda_mem) * I) * (1 - S), rounded after every operation.
    scalar_t decayed = u_n * lambda_mem[n];
    const scalar_t charge = i_n * leak[n];
    decayed = decayed + charge;
    decayed = decayed * stays;
    if constexpr (kClamp) {
      nc_out[n] = decayed <= clamp_max ? scalar_t(1) : scalar_t(0);
      decayed = decayed < clamp_max ? decayed : clamp_max;
    }
    u_out[n] = decayed;

    const scalar_t current = i_n * lambda_syn[n];
    i_out[n] = current + p[n];
  }
}

template <typename scalar_t>
void forward_step_impl(const torch::Tensor& mem, const torch::Tensor& syn, const torch::Tensor& pending,
                       const torch::Tensor& decay_mem, const torch::Tensor& one_minus_decay_mem,
                       const torch::Tensor& decay_syn, double threshold_value, std::optional<double> clamp,
                       torch::Tensor& spikes, torch::Tensor& new_mem,
                       torch::Tensor& new_syn, std::optional<torch::Tensor>& not_clamped) {
  const Rows rows = rows_of(mem);
  const auto lambda_mem = per_neuron<scalar_t>(decay_mem, rows.length, "decay_mem");
  const auto leak = per_neuron<scalar_t>(one_minus_decay_mem, rows.length, "one_minus_decay_mem");
  const auto lambda_syn = per_neuron<scalar_t>(decay_syn, rows.length, "decay_syn");
  // Rounded to the state dtype, as torch rounds a Python number in a comparison with a tensor.
  const scalar_t threshold = static_cast<scalar_t>(threshold_value);
  const scalar_t clamp_max = static_cast<scalar_t>(clamp.value_or(0.0));

  at::parallel_for(0, rows.count, grain_rows(rows), [&](int64_t first, int64_t last) {
  for (int64_t b = first; b < last; ++b) {
    const scalar_t* u = mem.data_ptr<scalar_t>() + b * mem.stride(0);
    const scalar_t* i_syn = syn.data_ptr<scalar_t>() + b * syn.stride(0);
    const scalar_t* p = pending.data_ptr<scalar_t>() + b * pending.stride(0);
    scalar_t* s_out = spikes.data_ptr<scalar_t>() + b * spikes.stride(0);
    scalar_t* u_out = new_mem.data_ptr<scalar_t>() + b * new_mem.stride(0);
    scalar_t* i_out = new_syn.data_ptr<scalar_t>() + b * new_syn.stride(0);
    scalar_t* nc_out = not_clamped ? not_clamped->data_ptr<scalar_t>() + b * not_clamped->stride(0) : nullptr;

    if (nc_out != nullptr) {
      forward_row<scalar_t, true>(u, i_syn, p, lambda_mem, leak, lambda_syn, threshold, clamp_max, s_out,
                                  u_out, i_out, nc_out, rows.length);
    } else {
      forward_row<scalar_t, false>(u, i_syn, p, lambda_mem, leak, lambda_syn, threshold, clamp_max, s_out,
                                   u_out, i_out, nc_out, rows.length);
    }
  }
  });
}

// Writes the spikes, the next membrane and current, and, with clamp_max, whether
// the membrane stayed below the clip.
void forward_step(const torch::Tensor& mem, const torch::Tensor& syn, const torch::Tensor& pending,
                  const torch::Tensor& decay_mem, const torch::Tensor& one_minus_decay_mem,
                  const torch::Tensor& decay_syn, double threshold, std::optional<double> clamp_max,
                  torch::Tensor spikes, torch::Tensor new_mem, torch::Tensor new_syn,
                  std::optional<torch::Tensor> not_clamped) {
  const Rows rows = rows_of(mem);
  for (const auto& [tensor, name] : {std::pair{&mem, "mem"}, {&syn, "syn"}, {&pending, "pending"},
                                     {&spikes, "spikes"}, {&new_mem, "new_mem"},
                                     {&new_syn, "new_syn"}}) {
    check_rows(*tensor, rows, name);
    TORCH_CHECK(tensor->scalar_type() == mem.scalar_type(), name, " must have the dtype of mem");
  }
  TORCH_CHECK(clamp_max.has_value() == not_clamped.has_value(),
              "give clamp_max and not_clamped together");
  if (not_clamped) check_rows(*not_clamped, rows, "not_clamped");
  AT_DISPATCH_FLOATING_TYPES(mem.scalar_type(), "lif_forward_step", [&] {
    forward_step_impl<scalar_t>(mem, syn, pending, decay_mem, one_minus_decay_mem, decay_syn, threshold,
                                clamp_max, spikes, new_mem, new_syn, not_clamped);
  });
}

// One batch row of the adjoint step, with the spike gradient and the membrane-input output as flags.
template <typename scalar_t, bool kSpikeGrad, bool kMembraneInput>
void backward_row(const scalar_t* g_u, const scalar_t* k, const scalar_t* d, const scalar_t* g_s,
                  const scalar_t* pd, const scalar_t* g_i_next, const scalar_t* lambda_mem, const scalar_t* leak,
                  const scalar_t* lambda_syn, scalar_t* g_u_out, scalar_t* g_i_out, scalar_t* g_v_out,
                  int64_t length) {
#pragma GCC ivdep
  for (int64_t n = 0; n < length; ++n) {
    // Gradient w.r.t. the membrane input, blocked where the neuron reset or was clipped.
    const scalar_t g_v = g_u[n] * k[n];
    if constexpr (kMembraneInput) g_v_out[n] = g_v;
    scalar_t g_u_new = d[n] + g_v * lambda_mem[n];
    if constexpr (kSpikeGrad) g_u_new += g_s[n] * pd[n];
    g_u_out[n] = g_u_new;
    g_i_out[n] = g_i_next[n] * lambda_syn[n] + g_v * leak[n];
  }
}

template <typename scalar_t>
void backward_step_impl(const torch::Tensor& adjoint_mem, const torch::Tensor& keep, const torch::Tensor& direct,
                        const std::optional<torch::Tensor>& spike_grad,
                        const std::optional<torch::Tensor>& pseudo_derivative, const torch::Tensor& adjoint_syn_next,
                        const torch::Tensor& decay_mem, const torch::Tensor& one_minus_decay_mem,
                        const torch::Tensor& decay_syn, torch::Tensor& new_adjoint_mem,
                        torch::Tensor& adjoint_syn, std::optional<torch::Tensor>& grad_membrane_input) {
  const Rows rows = rows_of(adjoint_mem);
  const auto lambda_mem = per_neuron<scalar_t>(decay_mem, rows.length, "decay_mem");
  const auto leak = per_neuron<scalar_t>(one_minus_decay_mem, rows.length, "one_minus_decay_mem");
  const auto lambda_syn = per_neuron<scalar_t>(decay_syn, rows.length, "decay_syn");

  at::parallel_for(0, rows.count, grain_rows(rows), [&](int64_t first, int64_t last) {
  for (int64_t b = first; b < last; ++b) {
    const scalar_t* g_u = adjoint_mem.data_ptr<scalar_t>() + b * adjoint_mem.stride(0);
    const scalar_t* k = keep.data_ptr<scalar_t>() + b * keep.stride(0);
    const scalar_t* d = direct.data_ptr<scalar_t>() + b * direct.stride(0);
    const scalar_t* g_s = spike_grad ? spike_grad->data_ptr<scalar_t>() + b * spike_grad->stride(0) : nullptr;
    const scalar_t* pd = pseudo_derivative ? pseudo_derivative->data_ptr<scalar_t>() + b * pseudo_derivative->stride(0)
                                           : nullptr;
    const scalar_t* g_i_next = adjoint_syn_next.data_ptr<scalar_t>() + b * adjoint_syn_next.stride(0);
    scalar_t* g_u_out = new_adjoint_mem.data_ptr<scalar_t>() + b * new_adjoint_mem.stride(0);
    scalar_t* g_i_out = adjoint_syn.data_ptr<scalar_t>() + b * adjoint_syn.stride(0);
    scalar_t* g_v_out = grad_membrane_input
                            ? grad_membrane_input->data_ptr<scalar_t>() + b * grad_membrane_input->stride(0)
                            : nullptr;

    if (g_s != nullptr && g_v_out != nullptr) {
      backward_row<scalar_t, true, true>(g_u, k, d, g_s, pd, g_i_next, lambda_mem, leak, lambda_syn, g_u_out,
                                         g_i_out, g_v_out, rows.length);
    } else if (g_s != nullptr) {
      backward_row<scalar_t, true, false>(g_u, k, d, g_s, pd, g_i_next, lambda_mem, leak, lambda_syn, g_u_out,
                                          g_i_out, g_v_out, rows.length);
    } else if (g_v_out != nullptr) {
      backward_row<scalar_t, false, true>(g_u, k, d, g_s, pd, g_i_next, lambda_mem, leak, lambda_syn, g_u_out,
                                          g_i_out, g_v_out, rows.length);
    } else {
      backward_row<scalar_t, false, false>(g_u, k, d, g_s, pd, g_i_next, lambda_mem, leak, lambda_syn,
                                           g_u_out, g_i_out, g_v_out, rows.length);
    }
  }
  });
}

// Runs one step of the adjoint recurrence backwards in time; see the docstring of lif.py.
void backward_step(const torch::Tensor& adjoint_mem, const torch::Tensor& keep, const torch::Tensor& direct,
                   std::optional<torch::Tensor> spike_grad, std::optional<torch::Tensor> pseudo_derivative,
                   const torch::Tensor& adjoint_syn_next, const torch::Tensor& decay_mem,
                   const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn,
                   torch::Tensor new_adjoint_mem, torch::Tensor adjoint_syn,
                   std::optional<torch::Tensor> grad_membrane_input) {
  const Rows rows = rows_of(adjoint_mem);
  for (const auto& [tensor, name] :
       {std::pair{&adjoint_mem, "adjoint_mem"}, {&keep, "keep"}, {&direct, "direct"},
        {&adjoint_syn_next, "adjoint_syn_next"}, {&new_adjoint_mem, "new_adjoint_mem"},
        {&adjoint_syn, "adjoint_syn"}}) {
    check_rows(*tensor, rows, name);
    TORCH_CHECK(tensor->scalar_type() == adjoint_mem.scalar_type(), name, " must have the dtype of adjoint_mem");
  }
  TORCH_CHECK(spike_grad.has_value() == pseudo_derivative.has_value(),
              "give spike_grad and pseudo_derivative together");
  if (spike_grad) {
    check_rows(*spike_grad, rows, "spike_grad");
    check_rows(*pseudo_derivative, rows, "pseudo_derivative");
  }
  if (grad_membrane_input) check_rows(*grad_membrane_input, rows, "grad_membrane_input");
  AT_DISPATCH_FLOATING_TYPES(adjoint_mem.scalar_type(), "lif_backward_step", [&] {
    backward_step_impl<scalar_t>(adjoint_mem, keep, direct, spike_grad, pseudo_derivative, adjoint_syn_next,
                                 decay_mem, one_minus_decay_mem, decay_syn, new_adjoint_mem, adjoint_syn,
                                 grad_membrane_input);
  });
}

// Contiguous tensor or null, for optional outputs.
template <typename scalar_t>
scalar_t* data_or_null(const std::optional<torch::Tensor>& x) {
  return x ? x->data_ptr<scalar_t>() : nullptr;
}

void check_contiguous(const torch::Tensor& x, at::IntArrayRef shape, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), name, " must be a contiguous CPU tensor");
  TORCH_CHECK(x.sizes() == shape, name, " has shape ", x.sizes(), ", expected ", shape);
  TORCH_CHECK(x.scalar_type() == dtype, name, " must have the dtype of the drive");
}

// The whole forward pass of a population without recurrence. Each batch row runs all its time steps
// before the next row starts, so that its states stay in cache. Layouts: drive and spikes are
// (batch, time, neurons); mem_sequence, syn_sequence and not_clamped are (time, batch, neurons), and
// mem_sequence[0] (and syn_sequence[0]) already hold the initial state. final_syn contains the initial
// current on entry when there is no syn_sequence.
// Checks shared by the whole-sequence forward functions: drive and spikes are (batch, time, neurons),
// the saved sequences (time, batch, neurons), and each state in `states` one contiguous (batch, neurons).
void check_forward_buffers(const torch::Tensor& drive, const torch::Tensor& spikes, const torch::Tensor& mem_sequence,
                           const std::optional<torch::Tensor>& syn_sequence,
                           const std::optional<torch::Tensor>& not_clamped, const std::optional<double>& clamp,
                           std::initializer_list<const torch::Tensor*> states) {
  const auto dtype = drive.scalar_type();
  check_contiguous(drive, drive.sizes(), dtype, "drive");
  check_contiguous(spikes, drive.sizes(), dtype, "spikes");
  check_contiguous(mem_sequence, mem_sequence.sizes(), dtype, "mem_sequence");
  TORCH_CHECK(mem_sequence.numel() == drive.numel(), "mem_sequence must contain one state per step");
  if (syn_sequence) check_contiguous(*syn_sequence, mem_sequence.sizes(), dtype, "syn_sequence");
  if (not_clamped) check_contiguous(*not_clamped, mem_sequence.sizes(), dtype, "not_clamped");
  TORCH_CHECK(clamp.has_value() == not_clamped.has_value(), "give clamp_max and not_clamped together");
  const int64_t rows = drive.numel() / std::max<int64_t>(1, drive.size(1));
  for (const torch::Tensor* state : states) {
    TORCH_CHECK(state->is_contiguous() && state->numel() == rows && state->scalar_type() == dtype,
                "the pending drive and the final states must be contiguous (batch, neurons) tensors");
  }
}

// The buffers of a whole-sequence forward pass, and one step of one batch row on them.
template <typename scalar_t>
struct ForwardSequence {
  int64_t batch, steps, length;
  const scalar_t *lambda_mem, *leak, *lambda_syn;
  scalar_t threshold, clamp_max;
  scalar_t *spikes, *mem_sequence, *syn_sequence, *not_clamped, *final_mem, *final_syn;

  ForwardSequence(const torch::Tensor& drive, const torch::Tensor& decay_mem, const torch::Tensor& one_minus_decay_mem,
                  const torch::Tensor& decay_syn, double threshold_value, const std::optional<double>& clamp,
                  torch::Tensor& spikes_out, torch::Tensor& mem_sequence_out,
                  const std::optional<torch::Tensor>& syn_sequence_out,
                  const std::optional<torch::Tensor>& not_clamped_out, torch::Tensor& final_mem_out,
                  torch::Tensor& final_syn_out)
      : batch(drive.size(0)),
        steps(drive.size(1)),
        length(drive.numel() / std::max<int64_t>(1, drive.size(0) * drive.size(1))),
        lambda_mem(per_neuron<scalar_t>(decay_mem, length, "decay_mem")),
        leak(per_neuron<scalar_t>(one_minus_decay_mem, length, "one_minus_decay_mem")),
        lambda_syn(per_neuron<scalar_t>(decay_syn, length, "decay_syn")),
        threshold(static_cast<scalar_t>(threshold_value)),
        clamp_max(static_cast<scalar_t>(clamp.value_or(0.0))),
        spikes(spikes_out.data_ptr<scalar_t>()),
        mem_sequence(mem_sequence_out.data_ptr<scalar_t>()),
        syn_sequence(data_or_null<scalar_t>(syn_sequence_out)),
        not_clamped(data_or_null<scalar_t>(not_clamped_out)),
        final_mem(final_mem_out.data_ptr<scalar_t>()),
        final_syn(final_syn_out.data_ptr<scalar_t>()) {}

  // Runs step t of batch row b with the pending drive p and returns the row's spikes of that step.
  // Without a current sequence, final_syn is the running current of the row.
  scalar_t* step(int64_t t, int64_t b, const scalar_t* p) const {
    const bool last = t == steps - 1;
    const int64_t row = (t * batch + b) * length, next_row = ((t + 1) * batch + b) * length;
    const scalar_t* u = mem_sequence + row;
    scalar_t* u_out = last ? final_mem + b * length : mem_sequence + next_row;
    const scalar_t* i = syn_sequence != nullptr ? syn_sequence + row : final_syn + b * length;
    scalar_t* i_out = (syn_sequence != nullptr && !last) ? syn_sequence + next_row : final_syn + b * length;
    scalar_t* s_out = spikes + (b * steps + t) * length;
    if (not_clamped != nullptr) {
      forward_row<scalar_t, true>(u, i, p, lambda_mem, leak, lambda_syn, threshold, clamp_max, s_out, u_out, i_out,
                                  not_clamped + row, length);
    } else {
      forward_row<scalar_t, false>(u, i, p, lambda_mem, leak, lambda_syn, threshold, clamp_max, s_out, u_out, i_out,
                                   nullptr, length);
    }
    return s_out;
  }
};

void forward_sequence(const torch::Tensor& drive, const torch::Tensor& pending, const torch::Tensor& decay_mem,
                      const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn, double threshold_value,
                      std::optional<double> clamp, torch::Tensor spikes, torch::Tensor mem_sequence,
                      std::optional<torch::Tensor> syn_sequence, std::optional<torch::Tensor> not_clamped,
                      torch::Tensor final_mem, torch::Tensor final_syn) {
  check_forward_buffers(drive, spikes, mem_sequence, syn_sequence, not_clamped, clamp,
                        {&pending, &final_mem, &final_syn});
  AT_DISPATCH_FLOATING_TYPES(drive.scalar_type(), "lif_forward_sequence", [&] {
    const ForwardSequence<scalar_t> run(drive, decay_mem, one_minus_decay_mem, decay_syn, threshold_value, clamp,
                                        spikes, mem_sequence, syn_sequence, not_clamped, final_mem, final_syn);
    const scalar_t* x = drive.data_ptr<scalar_t>();
    const scalar_t* p0 = pending.data_ptr<scalar_t>();
    at::parallel_for(0, run.batch, grain_rows({run.batch, run.length * run.steps}), [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        for (int64_t t = 0; t < run.steps; ++t) {
          // The drive of step t - 1 arrives at step t.
          run.step(t, b, t == 0 ? p0 + b * run.length : x + (b * run.steps + t - 1) * run.length);
        }
      }
    });
  });
}

// Several steps of the adjoint recurrence of a population without recurrence, from the last step of
// a chunk back to its first. keep, direct and grad_membrane_input are (steps, batch, neurons). adjoint_syn
// is (steps + 1, batch, neurons), and its last slot contains dL/dI after the chunk on entry.
void backward_steps(torch::Tensor adjoint_mem, const torch::Tensor& keep, const torch::Tensor& direct,
                    torch::Tensor adjoint_syn, const torch::Tensor& decay_mem,
                    const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn,
                    std::optional<torch::Tensor> grad_membrane_input) {
  const int64_t steps = keep.size(0), batch = keep.size(1);
  const int64_t length = keep.numel() / std::max<int64_t>(1, steps * batch);
  const auto dtype = adjoint_mem.scalar_type();
  check_contiguous(keep, keep.sizes(), dtype, "keep");
  check_contiguous(direct, keep.sizes(), dtype, "direct");
  TORCH_CHECK(adjoint_syn.is_contiguous() && adjoint_syn.numel() == (steps + 1) * batch * length &&
                  adjoint_syn.scalar_type() == dtype,
              "adjoint_syn must be a contiguous (steps + 1, batch, neurons) tensor");
  TORCH_CHECK(adjoint_mem.is_contiguous() && adjoint_mem.numel() == batch * length,
              "adjoint_mem must be a contiguous (batch, neurons) state");
  if (grad_membrane_input) check_contiguous(*grad_membrane_input, keep.sizes(), dtype, "grad_membrane_input");

  AT_DISPATCH_FLOATING_TYPES(dtype, "lif_backward_steps", [&] {
    const scalar_t* lambda_mem = per_neuron<scalar_t>(decay_mem, length, "decay_mem");
    const scalar_t* leak = per_neuron<scalar_t>(one_minus_decay_mem, length, "one_minus_decay_mem");
    const scalar_t* lambda_syn = per_neuron<scalar_t>(decay_syn, length, "decay_syn");
    scalar_t* g_u = adjoint_mem.data_ptr<scalar_t>();
    const scalar_t* k = keep.data_ptr<scalar_t>();
    const scalar_t* d = direct.data_ptr<scalar_t>();
    scalar_t* g_i = adjoint_syn.data_ptr<scalar_t>();
    scalar_t* g_v = data_or_null<scalar_t>(grad_membrane_input);

    at::parallel_for(0, batch, std::max<int64_t>(1, grain_rows({batch, length * steps})), [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        for (int64_t j = steps - 1; j >= 0; --j) {
          const int64_t row = (j * batch + b) * length;
          scalar_t* g_u_row = g_u + b * length;
          if (g_v != nullptr) {
            backward_row<scalar_t, false, true>(g_u_row, k + row, d + row, nullptr, nullptr, g_i + row + batch * length,
                                                lambda_mem, leak, lambda_syn, g_u_row, g_i + row, g_v + row, length);
          } else {
            backward_row<scalar_t, false, false>(g_u_row, k + row, d + row, nullptr, nullptr,
                                                 g_i + row + batch * length, lambda_mem, leak, lambda_syn, g_u_row,
                                                 g_i + row, nullptr, length);
          }
        }
      }
    });
  });
}

// The recurrent connection of a population: W s for one step's transmitted spikes s (batch, neurons)
// in the forward pass, and W^T g for a drive gradient g in the backward pass. Dense when the padding
// list is empty (the forward pass takes W^T, the backward pass W), else a stride-1 convolution with
// that zero padding on populations of shape (channels, *spatial).
struct RecurrentProjection {
  torch::Tensor weight;
  std::vector<int64_t> padding;
  std::vector<int64_t> population;  // (batch, channels, *spatial) of one step
  std::optional<SparseConvolution> events;  // forward convolutions only, on (1, batch, channels, height, width)

  // `forward` prepares the event-driven convolution, which only the forward pass uses.
  RecurrentProjection(const torch::Tensor& drive, const torch::Tensor& weight_in, std::vector<int64_t> conv_padding,
                      bool forward)
      : weight(weight_in), padding(std::move(conv_padding)) {
    const int64_t length = drive.numel() / std::max<int64_t>(1, drive.size(0) * drive.size(1));
    TORCH_CHECK(weight.is_contiguous() && weight.scalar_type() == drive.scalar_type() && weight.device().is_cpu(),
                "the recurrent weight must be a contiguous CPU tensor of the drive's dtype");
    if (padding.empty()) {
      TORCH_CHECK(weight.dim() == 2 && weight.size(0) == length && weight.size(1) == length,
                  "a dense recurrent weight must be (neurons, neurons)");
      return;
    }
    const int64_t dims = static_cast<int64_t>(padding.size());
    TORCH_CHECK((dims == 1 || dims == 2) && drive.dim() == dims + 3 && weight.dim() == dims + 2,
                "a convolutional recurrence needs a (batch, time, channels, *spatial) drive with 1 or 2 spatial "
                "dimensions and a (channels, channels, *kernel) weight");
    TORCH_CHECK(weight.size(0) == drive.size(2) && weight.size(1) == drive.size(2),
                "the recurrent convolution must map the population's channels onto themselves");
    for (int64_t d = 0; d < dims; ++d) {
      TORCH_CHECK(2 * padding[d] == weight.size(2 + d) - 1,
                  "the recurrent convolution must keep the spatial shape (odd kernel, padding (kernel - 1) / 2)");
    }
    population.push_back(drive.size(0));
    for (int64_t d = 2; d < drive.dim(); ++d) population.push_back(drive.size(d));
    if (!forward) return;
    // A 1-D population is a 2-D one of height 1.
    const bool one_d = dims == 1;
    events.emplace(one_d ? weight.unsqueeze(2) : weight, one_d ? 1 : drive.size(3), drive.size(drive.dim() - 1), 1, 1,
                   one_d ? 0 : padding[0], padding.back());
  }

  // Computes W s for the transmitted spikes (batch, neurons), event by event when `sparse`, and returns
  // its data. A dense recurrence writes into `projection`, and a convolution replaces it.
  template <typename scalar_t>
  const scalar_t* project(const torch::Tensor& transmitted, torch::Tensor& projection, bool sparse) const {
    const int64_t batch = transmitted.size(0), length = transmitted.size(1);
    if (padding.empty()) {
      if (!sparse) {
        at::mm_out(projection, transmitted, weight);
        return projection.template data_ptr<scalar_t>();
      }
      projection.zero_();
      const scalar_t* tr = transmitted.template data_ptr<scalar_t>();
      const scalar_t* w = weight.template data_ptr<scalar_t>();
      scalar_t* proj = projection.template data_ptr<scalar_t>();
      for (int64_t b = 0; b < batch; ++b) {
        const scalar_t* tr_row = tr + b * length;
        scalar_t* out = proj + b * length;
        for (int64_t k = 0; k < length; ++k) {
          const scalar_t value = tr_row[k];
          if (value == scalar_t(0)) continue;
          const scalar_t* w_row = w + k * length;
_Pragma("GCC ivdep")
          for (int64_t n = 0; n < length; ++n) out[n] += value * w_row[n];
        }
      }
      return proj;
    }

    const auto spikes = transmitted.view(population);
    if (sparse) {
      projection = events->forward(samples(spikes), std::nullopt);
    } else {
      projection = padding.size() == 1 ? at::conv1d(spikes, weight, {}, 1, padding)
                                       : at::conv2d(spikes, weight, {}, 1, padding);
      projection = projection.contiguous();
    }
    return projection.template data_ptr<scalar_t>();
  }

  // Returns one step's (batch, channels, *spatial) maps as the (1, batch, channels, height, width)
  // samples of the event-driven convolution.
  torch::Tensor samples(const torch::Tensor& maps) const {
    return padding.size() == 1 ? maps.unsqueeze(2).unsqueeze(0) : maps.unsqueeze(0);
  }

  // Returns W^T g for a drive gradient g (batch, neurons) that may be strided across the batch.
  torch::Tensor transpose(const torch::Tensor& grad) const {
    if (padding.empty()) return at::mm(grad, weight);
    const auto grad_maps = grad.reshape(population);
    const auto result = padding.size() == 1 ? at::conv_transpose1d(grad_maps, weight, {}, 1, padding)
                                            : at::conv_transpose2d(grad_maps, weight, {}, 1, padding);
    return result.reshape({grad.size(0), grad.size(1)}).contiguous();
  }
};

// One batch row of one step of backward_sequence_superspike, with the clip mask and the
// membrane-input output as template flags so that the loop has no branch and vectorises.
template <typename scalar_t, bool kClamp, bool kMembraneInput, bool kSpikeGrad>
void superspike_row(const scalar_t* u, const scalar_t* g_s, const scalar_t* nc, const scalar_t* g_i_next,
                    const scalar_t* lambda_mem, const scalar_t* leak, const scalar_t* lambda_syn, scalar_t threshold,
                    scalar_t beta, scalar_t scale, scalar_t* g_u, scalar_t* g_i_out, scalar_t* g_v_out,
                    const scalar_t* recurrent_grad, int64_t length) {
#pragma GCC ivdep
  for (int64_t n = 0; n < length; ++n) {
    const scalar_t x = u[n] - threshold;
    const scalar_t denominator = beta * (x < scalar_t(0) ? -x : x) + scalar_t(1);
    const scalar_t pseudo_derivative = scale / (denominator * denominator);
    scalar_t keep = u[n] <= threshold ? scalar_t(1) : scalar_t(0);
    if constexpr (kClamp) keep *= nc[n];
    const scalar_t g_v = g_u[n] * keep;
    if constexpr (kMembraneInput) g_v_out[n] = g_v;
    // A recurrence adds the gradient that the spike receives through the next step's drive.
    scalar_t spike_grad = g_s[n];
    if constexpr (kSpikeGrad) spike_grad += recurrent_grad[n];
    g_u[n] = spike_grad * pseudo_derivative + g_v * lambda_mem[n];
    g_i_out[n] = g_i_next[n] * lambda_syn[n] + g_v * leak[n];
  }
}

// Calls the superspike_row variant for the optional inputs that are present (non-null).
template <typename scalar_t>
void superspike_row_any(const scalar_t* u, const scalar_t* g_s, const scalar_t* nc, const scalar_t* g_i_next,
                        const scalar_t* lambda_mem, const scalar_t* leak, const scalar_t* lambda_syn,
                        scalar_t threshold, scalar_t beta, scalar_t scale, scalar_t* g_u, scalar_t* g_i_out,
                        scalar_t* g_v_out, const scalar_t* recurrent_grad, int64_t length) {
  const int variant = (nc != nullptr ? 1 : 0) + (g_v_out != nullptr ? 2 : 0) + (recurrent_grad != nullptr ? 4 : 0);
#define LIGHTNING_SNN_ROW(CLAMP, INPUT, SPIKE)                                                                \
  superspike_row<scalar_t, CLAMP, INPUT, SPIKE>(u, g_s, nc, g_i_next, lambda_mem, leak, lambda_syn, threshold, \
                                                beta, scale, g_u, g_i_out, g_v_out, recurrent_grad, length)
  switch (variant) {
    case 0: LIGHTNING_SNN_ROW(false, false, false); break;
    case 1: LIGHTNING_SNN_ROW(true, false, false); break;
    case 2: LIGHTNING_SNN_ROW(false, true, false); break;
    case 3: LIGHTNING_SNN_ROW(true, true, false); break;
    case 4: LIGHTNING_SNN_ROW(false, false, true); break;
    case 5: LIGHTNING_SNN_ROW(true, false, true); break;
    case 6: LIGHTNING_SNN_ROW(false, true, true); break;
    default: LIGHTNING_SNN_ROW(true, true, true); break;
  }
#undef LIGHTNING_SNN_ROW
}

// The whole backward pass of a population whose surrogate derivative is
// scale / (beta * |U - threshold| + 1)^2 (the SuperSpike family), optionally with a recurrence (weight
// and conv_padding as for RecurrentProjection; the backward pass takes W, not W^T). It computes the surrogate
// derivative, the direct spike gradient and the reset mask on the fly, so that the membrane sequence
// is read once. grad_spikes and grad_drive are (batch, time, neurons); mem_sequence, not_clamped and
// grad_membrane_input are (time, batch, neurons). The adjoint of the current has time + 2 slots: slot
// s >= 2 is grad_drive[:, s - 2] (dL/dX_{s-2} = dL/dI_s), and slots 0 and 1 are edge[0] and edge[1]
// (dL/dI_0 and dL/dP_0). Slots T and T + 1 contain dL/dI_T and dL/dP_T on entry. The drive gradient
// is written batch-major, so the connection before needs no copy to reshape it.
void backward_sequence_superspike(torch::Tensor adjoint_mem, const torch::Tensor& mem_sequence,
                                  const torch::Tensor& grad_spikes, std::optional<torch::Tensor> not_clamped,
                                  torch::Tensor grad_drive, torch::Tensor edge, const torch::Tensor& decay_mem,
                                  const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn,
                                  double threshold_value, double beta_value, double scale_value,
                                  std::optional<torch::Tensor> grad_membrane_input,
                                  std::optional<torch::Tensor> weight, std::optional<torch::Tensor> mask,
                                  std::vector<int64_t> conv_padding) {
  const int64_t steps = mem_sequence.size(0), batch = mem_sequence.size(1);
  const int64_t length = mem_sequence.numel() / std::max<int64_t>(1, steps * batch);
  const auto dtype = mem_sequence.scalar_type();
  check_contiguous(mem_sequence, mem_sequence.sizes(), dtype, "mem_sequence");
  TORCH_CHECK(grad_spikes.is_contiguous() && grad_spikes.numel() == mem_sequence.numel() &&
                  grad_spikes.scalar_type() == dtype && grad_spikes.size(0) == batch,
              "grad_spikes must be a contiguous (batch, time, neurons) tensor");
  if (not_clamped) check_contiguous(*not_clamped, mem_sequence.sizes(), dtype, "not_clamped");
  if (grad_membrane_input) check_contiguous(*grad_membrane_input, mem_sequence.sizes(), dtype, "grad_membrane_input");
  TORCH_CHECK(grad_drive.is_contiguous() && grad_drive.numel() == steps * batch * length &&
                  grad_drive.scalar_type() == dtype,
              "grad_drive must be a contiguous (batch, time, neurons) tensor");
  TORCH_CHECK(edge.is_contiguous() && edge.numel() == 2 * batch * length && edge.scalar_type() == dtype,
              "edge must be a contiguous (2, batch, neurons) tensor");
  TORCH_CHECK(adjoint_mem.is_contiguous() && adjoint_mem.numel() == batch * length,
              "adjoint_mem must be a contiguous (batch, neurons) state");

  AT_DISPATCH_FLOATING_TYPES(dtype, "lif_backward_superspike", [&] {
    const scalar_t* lambda_mem = per_neuron<scalar_t>(decay_mem, length, "decay_mem");
    const scalar_t* leak = per_neuron<scalar_t>(one_minus_decay_mem, length, "one_minus_decay_mem");
    const scalar_t* lambda_syn = per_neuron<scalar_t>(decay_syn, length, "decay_syn");
    const scalar_t threshold = static_cast<scalar_t>(threshold_value);
    const scalar_t beta = static_cast<scalar_t>(beta_value);
    const scalar_t scale = static_cast<scalar_t>(scale_value);
    const scalar_t* u_seq = mem_sequence.data_ptr<scalar_t>();
    const scalar_t* g_s_seq = grad_spikes.data_ptr<scalar_t>();
    const scalar_t* nc_seq = data_or_null<scalar_t>(not_clamped);
    scalar_t* g_u_all = adjoint_mem.data_ptr<scalar_t>();
    scalar_t* g_x = grad_drive.data_ptr<scalar_t>();
    scalar_t* g_edge = edge.data_ptr<scalar_t>();
    scalar_t* g_v_seq = data_or_null<scalar_t>(grad_membrane_input);
    // Row of batch entry b in slot s of the current's adjoint.
    const auto slot = [&](int64_t s, int64_t b) {
      return s >= 2 ? g_x + (b * steps + s - 2) * length : g_edge + (s * batch + b) * length;
    };

    if (weight) {
      // With a recurrence, W^T dL/dP_{t+1} enters each step, so time is the outer loop.
      const RecurrentProjection recurrence(grad_drive, *weight, conv_padding, /*forward=*/false);
      const auto slot_tensor = [&](int64_t s) {
        return (s >= 2 ? grad_drive.select(1, s - 2) : edge.select(0, s)).reshape({batch, length});
      };
      // A convolution reads contiguous input. It gets slot s from ring[s % 3], a copy made right after
      // the slot is written, while its rows are still in cache.
      const bool use_ring = !conv_padding.empty();
      auto ring = use_ring ? torch::empty({3, batch, length}, grad_drive.options()) : torch::Tensor();
      const auto keep_in_ring = [&](int64_t s) {
        scalar_t* target = ring.data_ptr<scalar_t>() + (s % 3) * batch * length;
        for (int64_t b = 0; b < batch; ++b) std::memcpy(target + b * length, slot(s, b), sizeof(scalar_t) * length);
      };
      if (use_ring) {
        keep_in_ring(steps);
        keep_in_ring(steps + 1);
      }
      for (int64_t t = steps - 1; t >= 0; --t) {
        torch::Tensor recurrent = recurrence.transpose(use_ring ? ring.select(0, (t + 2) % 3) : slot_tensor(t + 2));
        if (mask) recurrent.mul_(mask->select(1, t).reshape({batch, length}));
        const scalar_t* r = recurrent.data_ptr<scalar_t>();
        at::parallel_for(0, batch, grain_rows({batch, length}), [&](int64_t first, int64_t last) {
          for (int64_t b = first; b < last; ++b) {
            const int64_t row = (t * batch + b) * length;
            superspike_row_any<scalar_t>(u_seq + row, g_s_seq + (b * steps + t) * length,
                                         nc_seq != nullptr ? nc_seq + row : nullptr, slot(t + 1, b), lambda_mem, leak,
                                         lambda_syn, threshold, beta, scale, g_u_all + b * length, slot(t, b),
                                         g_v_seq != nullptr ? g_v_seq + row : nullptr, r + b * length, length);
          }
        });
        if (use_ring) keep_in_ring(t);
      }
      return;
    }

    at::parallel_for(0, batch, std::max<int64_t>(1, grain_rows({batch, length * steps})), [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        scalar_t* g_u = g_u_all + b * length;
        for (int64_t t = steps - 1; t >= 0; --t) {
          const int64_t row = (t * batch + b) * length;
          const scalar_t* u = u_seq + row;
          const scalar_t* g_s = g_s_seq + (b * steps + t) * length;
          const scalar_t* nc = nc_seq != nullptr ? nc_seq + row : nullptr;
          const scalar_t* g_i_next = slot(t + 1, b);
          scalar_t* g_i_out = slot(t, b);
          scalar_t* g_v_out = g_v_seq != nullptr ? g_v_seq + row : nullptr;
          superspike_row_any<scalar_t>(u, g_s, nc, g_i_next, lambda_mem, leak, lambda_syn, threshold, beta, scale,
                                       g_u, g_i_out, g_v_out, nullptr, length);
        }
      }
    });
  });
}

// The whole forward pass of a population with a recurrence: dense when conv_padding is empty
// (weight = W^T, (neurons, neurons)), else a stride-1 convolution with that zero padding (weight
// (channels, channels, *kernel); drive (batch, time, channels, *spatial)). Layouts as for
// forward_sequence; pending_work contains the initial pending drive on entry and the drive pending after
// the last step on exit. Steps whose transmitted spikes have at most event_density nonzero entries are
// projected event by event: a dense recurrence adds one row of W^T per spike, and a convolution adds
// the kernel taps that each spike reaches. The other steps use a matmul or a dense convolution. Both
// compute drive_t + W s_t as a sum of the projection and the drive, like the plain loop.
void forward_sequence_recurrent(const torch::Tensor& drive, torch::Tensor pending_work, const torch::Tensor& decay_mem,
                                const torch::Tensor& one_minus_decay_mem, const torch::Tensor& decay_syn,
                                double threshold_value, std::optional<double> clamp, torch::Tensor spikes,
                                torch::Tensor mem_sequence, std::optional<torch::Tensor> syn_sequence,
                                std::optional<torch::Tensor> not_clamped, torch::Tensor final_mem,
                                torch::Tensor final_syn, const torch::Tensor& weight,
                                std::optional<torch::Tensor> mask, double event_density,
                                std::vector<int64_t> conv_padding) {
  check_forward_buffers(drive, spikes, mem_sequence, syn_sequence, not_clamped, clamp,
                        {&pending_work, &final_mem, &final_syn});
  const int64_t batch = drive.size(0), steps = drive.size(1);
  const int64_t length = drive.numel() / std::max<int64_t>(1, batch * steps);
  if (mask) check_contiguous(*mask, drive.sizes(), drive.scalar_type(), "mask");
  const RecurrentProjection recurrence(drive, weight, conv_padding, /*forward=*/true);

  AT_DISPATCH_FLOATING_TYPES(drive.scalar_type(), "lif_forward_sequence_recurrent", [&] {
    const ForwardSequence<scalar_t> run(drive, decay_mem, one_minus_decay_mem, decay_syn, threshold_value, clamp,
                                        spikes, mem_sequence, syn_sequence, not_clamped, final_mem, final_syn);
    const scalar_t* x = drive.data_ptr<scalar_t>();
    const scalar_t* m = data_or_null<scalar_t>(mask);
    scalar_t* p = pending_work.data_ptr<scalar_t>();
    auto transmitted = torch::empty({batch, length}, drive.options());
    auto projection = torch::empty({batch, length}, drive.options());
    scalar_t* tr = transmitted.data_ptr<scalar_t>();

    // A convolution without dropout reads the spikes in place, strided across the batch, and adds the
    // drive itself when it runs by events. Its output then becomes the pending drive.
    const bool in_place = recurrence.events.has_value() && m == nullptr;
    torch::Tensor pending_now;
    scalar_t* const p_final = p;

    for (int64_t t = 0; t < steps; ++t) {
      // The neuron update of every row, then the transmitted spikes of this step.
      int64_t events = 0;
      for (int64_t b = 0; b < batch; ++b) {
        const scalar_t* s_out = run.step(t, b, p + b * length);
        if (in_place) {
          for (int64_t n = 0; n < length; ++n) events += s_out[n] != scalar_t(0);
          continue;
        }
        scalar_t* tr_row = tr + b * length;
        const scalar_t* m_row = m != nullptr ? m + (b * steps + t) * length : nullptr;
        for (int64_t n = 0; n < length; ++n) {
          tr_row[n] = m_row != nullptr ? s_out[n] * m_row[n] : s_out[n];
          events += tr_row[n] != scalar_t(0);
        }
      }

      // W s_t, event by event when the step is sparse.
      const bool sparse = events <= static_cast<int64_t>(event_density * static_cast<double>(batch * length));
      if (in_place && sparse) {
        pending_now = recurrence.events->forward(recurrence.samples(spikes.select(1, t)),
                                                 recurrence.samples(drive.select(1, t)));
        p = pending_now.data_ptr<scalar_t>();
        continue;
      }
      if (in_place) transmitted.view(spikes.select(1, t).sizes()).copy_(spikes.select(1, t));
      const scalar_t* proj = recurrence.project<scalar_t>(transmitted, projection, sparse);
      p = p_final;

      // The drive produced now arrives at the next step.
      for (int64_t b = 0; b < batch; ++b) {
        const scalar_t* x_row = x + (b * steps + t) * length;
        const scalar_t* proj_row = proj + b * length;
        scalar_t* p_row = p + b * length;
_Pragma("GCC ivdep")
        for (int64_t n = 0; n < length; ++n) p_row[n] = x_row[n] + proj_row[n];
      }
    }
    if (p != p_final) std::memcpy(p_final, p, sizeof(scalar_t) * batch * length);
  });
}

}  // namespace lightning_snn
