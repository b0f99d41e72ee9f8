// Event-driven 2-D convolution (a 1-D one is the case height 1) for sparse spike inputs: the output
// and the weight gradient, both summed over the nonzero inputs only.
//
// A dense convolution spends its work on zeros when a few percent of the inputs spike. Here every
// nonzero input x[ci, iy, ix] adds v * w[:, ci, ky, kx] to the outputs it reaches, and adds
// v * g[:, oy, ox] to the weight gradient w.r.t. w[:, ci, ky, kx]. Both loops run over output channels,
// so these are made contiguous first. The weight is transposed once per prepared convolution. Each
// sample's output accumulator and output gradient are kept channels-last in a small per-thread buffer,
// which stays in the L1 or L2 cache. Dilation 1 and one group only.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <type_traits>
#include <utility>
#include <vector>

namespace lightning_snn {
namespace {

// Geometry of one convolution: input (channels, height, width), output (channels, height, width),
// kernel, stride and zero padding.
struct ConvGeometry {
  int64_t in_channels, height, width;
  int64_t out_channels, out_height, out_width;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;

  int64_t in_size() const { return in_channels * height * width; }
  int64_t out_positions() const { return out_height * out_width; }
};

// Kernel taps and output positions that each input position (iy, ix) reaches. Every position gets the
// same number of entries, so that the event loops run a fixed number of iterations without branches.
// A padding entry points at the extra output position out_positions(). The forward pass accumulates
// it into a scratch row that is never read, and the weight gradient reads a zero row there.
struct Targets {
  int64_t count;                 // entries per input position
  std::vector<int32_t> tap;      // ky * kernel_w + kx
  std::vector<int32_t> position; // oy * out_width + ox, or out_positions() for padding
  std::vector<int32_t> channel;  // channel of every entry of one input sample, so that events need no division

  Targets(const ConvGeometry& g) {
    // The outputs o along one axis that coordinate x reaches: o * stride + k = x + pad with 0 <= k < kernel.
    const auto axis = [](int64_t x, int64_t kernel, int64_t stride, int64_t pad, int64_t out_size) {
      std::vector<std::pair<int64_t, int64_t>> reached;  // (output, kernel offset)
      for (int64_t o = 0; o < out_size; ++o) {
        const int64_t k = x + pad - o * stride;
        if (k >= 0 && k < kernel) reached.emplace_back(o, k);
      }
      return reached;
    };
    std::vector<std::vector<std::pair<int64_t, int64_t>>> rows(g.height), columns(g.width);
    int64_t max_rows = 1, max_columns = 1;
    for (int64_t y = 0; y < g.height; ++y) {
      rows[y] = axis(y, g.kernel_h, g.stride_h, g.pad_h, g.out_height);
      max_rows = std::max<int64_t>(max_rows, rows[y].size());
    }
    for (int64_t x = 0; x < g.width; ++x) {
      columns[x] = axis(x, g.kernel_w, g.stride_w, g.pad_w, g.out_width);
      max_columns = std::max<int64_t>(max_columns, columns[x].size());
    }
    count = max_rows * max_columns;
    const int64_t plane = g.height * g.width;
    channel.resize(g.in_size());
    for (int64_t index = 0; index < g.in_size(); ++index) channel[index] = static_cast<int32_t>(index / plane);
    tap.assign(plane * count, 0);
    position.assign(plane * count, static_cast<int32_t>(g.out_positions()));
    for (int64_t y = 0; y < g.height; ++y) {
      for (int64_t x = 0; x < g.width; ++x) {
        int64_t j = (y * g.width + x) * count;
        for (const auto& [oy, ky] : rows[y]) {
          for (const auto& [ox, kx] : columns[x]) {
            tap[j] = static_cast<int32_t>(ky * g.kernel_w + kx);
            position[j] = static_cast<int32_t>(oy * g.out_width + ox);
            ++j;
          }
        }
      }
    }
  }
};

// Writes the index of every nonzero entry of data[0 .. size) to events and returns their count. Spike
// maps are mostly zero, so blocks of 16 entries are tested together through their bit patterns, and
// the entries of a nonzero block are appended without branches. A -0.0 entry counts as an event of
// value -0.0, which adds nothing. events needs room for size + 16 entries.
template <typename scalar_t>
int64_t find_nonzero(const scalar_t* data, int64_t size, int32_t* events) {
  constexpr int64_t kBlock = 16;
  constexpr size_t kWords = kBlock * sizeof(scalar_t) / sizeof(uint64_t);
  int64_t count = 0, i = 0;
  for (; i + kBlock <= size; i += kBlock) {
    uint64_t words[kWords];
    std::memcpy(words, data + i, sizeof(words));
    uint64_t any = 0;
    for (size_t w = 0; w < kWords; ++w) any |= words[w];
    if (any == 0) continue;
    for (int64_t j = i; j < i + kBlock; ++j) {
      events[count] = static_cast<int32_t>(j);
      count += data[j] != scalar_t(0);
    }
  }
  for (; i < size; ++i) {
    events[count] = static_cast<int32_t>(i);
    count += data[i] != scalar_t(0);
  }
  return count;
}

#if defined(__AVX512F__)
// The float32 version on AVX-512 has no branch per block. Each block's nonzero indices are compressed
// into one register and stored whole, and the count advances by their number. It listed the events
// of 6,400 spike maps of 1,088 entries at 4 % density in 1.0 ms instead of 3.8 ms (AMD EPYC, one
// thread). The compress runs in a register because storing it compressed straight to memory was
// slower than the portable loop on that CPU.
template <>
int64_t find_nonzero<float>(const float* data, int64_t size, int32_t* events) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t count = 0, i = 0;
  for (; i + 16 <= size; i += 16) {
    const __m512i bits = _mm512_loadu_si512(data + i);
    const __mmask16 nonzero = _mm512_test_epi32_mask(bits, bits);
    const __m512i indices = _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(i)));
    _mm512_storeu_si512(events + count, _mm512_maskz_compress_epi32(nonzero, indices));
    count += __builtin_popcount(nonzero);
  }
  for (; i < size; ++i) {
    events[count] = static_cast<int32_t>(i);
    count += data[i] != 0.0f;
  }
  return count;
}
#endif

// Adds value * source[c] to target[c] for the channels of one row. The channel count is a template
// argument for the common widths, so that the loop unrolls. GCC 12 vectorised the plain loop well for
// 32 or more constant channels. It left the loop scalar for a runtime count and ran 16 constant
// channels slower than GCC vector types, so narrower rows use those types when their width is a
// multiple of 32 bytes.
template <typename scalar_t, int64_t kChannels>
inline void add_scaled(scalar_t* target, const scalar_t* source, scalar_t value, int64_t channels) {
  constexpr int64_t kLanes = 32 / sizeof(scalar_t);
  typedef scalar_t Vector __attribute__((vector_size(32)));
  const int64_t n = kChannels > 0 ? kChannels : channels;
  if (kChannels >= 32 || n % kLanes != 0) {
    for (int64_t c = 0; c < n; ++c) target[c] += value * source[c];
    return;
  }
  Vector scale;
  for (int64_t lane = 0; lane < kLanes; ++lane) scale[lane] = value;
  for (int64_t c = 0; c < n; c += kLanes) {
    Vector sum, addend;
    std::memcpy(&sum, target + c, sizeof(Vector));
    std::memcpy(&addend, source + c, sizeof(Vector));
    sum += scale * addend;
    std::memcpy(target + c, &sum, sizeof(Vector));
  }
}

// Calls body with std::integral_constant<int64_t, channels>, or with 0 for an uncommon channel count.
template <typename Body>
void with_channels(int64_t channels, Body body) {
  switch (channels) {
    case 8: body(std::integral_constant<int64_t, 8>()); break;
    case 16: body(std::integral_constant<int64_t, 16>()); break;
    case 32: body(std::integral_constant<int64_t, 32>()); break;
    case 64: body(std::integral_constant<int64_t, 64>()); break;
    case 128: body(std::integral_constant<int64_t, 128>()); break;
    default: body(std::integral_constant<int64_t, 0>()); break;
  }
}

ConvGeometry geometry_of(const torch::Tensor& input, int64_t out_channels, int64_t out_height, int64_t out_width,
                         int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                         int64_t pad_w) {
  const int64_t dims = input.dim();
  TORCH_CHECK(stride_h >= 1 && stride_w >= 1 && pad_h >= 0 && pad_w >= 0 && kernel_h >= 1 && kernel_w >= 1,
              "invalid convolution geometry");
  return {input.size(dims - 3), input.size(dims - 2), input.size(dims - 1), out_channels, out_height,
          out_width,            kernel_h,             kernel_w,             stride_h,     stride_w,
          pad_h,                pad_w};
}

// Returns sample (a, b) of an (A, B, C, H, W) tensor whose last three dimensions are contiguous.
template <typename scalar_t>
scalar_t* sample(const torch::Tensor& x, int64_t a, int64_t b) {
  return x.data_ptr<scalar_t>() + a * x.stride(0) + b * x.stride(1);
}

void check_samples(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 5, name, " must be a 5-D CPU tensor (A, B, C, H, W)");
  TORCH_CHECK(x.stride(4) == 1 && x.stride(3) == x.size(4) && x.stride(2) == x.size(3) * x.size(4), name,
              " must be contiguous within each sample");
}

}  // namespace

// The tables of one event-driven convolution: its geometry, the targets of every input position and the
// weight with the output channels of each tap contiguous (weight_t[ci][ky][kx][co]).
struct SparseConvolution::Plan {
  ConvGeometry geometry;
  Targets targets;
  torch::Tensor weight_t;
};

SparseConvolution::SparseConvolution(const torch::Tensor& weight, int64_t height, int64_t width, int64_t stride_h,
                                     int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  TORCH_CHECK(weight.dim() == 4 && weight.device().is_cpu(),
              "weight must be an (out_channels, in_channels, kernel_h, kernel_w) CPU tensor");
  TORCH_CHECK(stride_h >= 1 && stride_w >= 1 && pad_h >= 0 && pad_w >= 0, "invalid convolution geometry");
  const int64_t kernel_h = weight.size(2), kernel_w = weight.size(3);
  const int64_t out_height = (height + 2 * pad_h - kernel_h) / stride_h + 1;
  const int64_t out_width = (width + 2 * pad_w - kernel_w) / stride_w + 1;
  TORCH_CHECK(out_height >= 1 && out_width >= 1, "the input is smaller than the kernel");
  const ConvGeometry g{weight.size(1), height,   width,    weight.size(0), out_height, out_width,
                       kernel_h,       kernel_w, stride_h, stride_w,       pad_h,      pad_w};
  plan_ = std::make_shared<const Plan>(Plan{g, Targets(g), weight.permute({1, 2, 3, 0}).contiguous()});
}

torch::Tensor SparseConvolution::forward(const torch::Tensor& input, const std::optional<torch::Tensor>& base) const {
  const ConvGeometry& g = plan_->geometry;
  const Targets& targets = plan_->targets;
  check_samples(input, "input");
  TORCH_CHECK(input.size(2) == g.in_channels && input.size(3) == g.height && input.size(4) == g.width,
              "input must have the shape that the convolution was prepared for");
  TORCH_CHECK(plan_->weight_t.scalar_type() == input.scalar_type(), "input and weight must have the same dtype");
  const int64_t count_a = input.size(0), count_b = input.size(1);
  if (base) {
    check_samples(*base, "base");
    TORCH_CHECK(base->size(0) == count_a && base->size(1) == count_b && base->size(2) == g.out_channels &&
                    base->size(3) == g.out_height && base->size(4) == g.out_width,
                "base must have the output's shape");
    TORCH_CHECK(base->scalar_type() == input.scalar_type(), "base must have the input's dtype");
  }
  auto output = torch::empty({count_a, count_b, g.out_channels, g.out_height, g.out_width}, input.options());

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_forward_events", [&] {
    with_channels(g.out_channels, [&](auto width) {
      constexpr int64_t kChannels = decltype(width)::value;
      const scalar_t* taps = plan_->weight_t.data_ptr<scalar_t>();
      const int64_t channels = g.out_channels, positions = g.out_positions();
      const int64_t plane = g.height * g.width, kernel_size = g.kernel_h * g.kernel_w;
      at::parallel_for(0, count_a * count_b, 1, [&](int64_t first, int64_t last) {
        // Channels-last sums of one sample, plus the scratch row of the padding targets.
        std::vector<scalar_t> accumulator((positions + 1) * channels);
        std::vector<int32_t> events(g.in_size() + 16);
        for (int64_t s = first; s < last; ++s) {
          const int64_t a = s / count_b, b = s % count_b;
          const scalar_t* x = sample<scalar_t>(input, a, b);
          std::fill(accumulator.begin(), accumulator.end(), scalar_t(0));

          // Scatter: each input event adds its weight taps to the outputs it reaches.
          const int64_t count = find_nonzero(x, g.in_size(), events.data());
          for (int64_t e = 0; e < count; ++e) {
            const int64_t index = events[e];
            const int64_t ci = targets.channel[index], spatial = index - ci * plane;
            const scalar_t value = x[index];
            const scalar_t* ci_taps = taps + ci * kernel_size * channels;
            const int32_t* tap = targets.tap.data() + spatial * targets.count;
            const int32_t* position = targets.position.data() + spatial * targets.count;
            for (int64_t j = 0; j < targets.count; ++j) {
              add_scaled<scalar_t, kChannels>(accumulator.data() + position[j] * channels,
                                              ci_taps + tap[j] * channels, value, channels);
            }
          }

          // Back to channels-first, adding the base.
          scalar_t* out = output.data_ptr<scalar_t>() + s * channels * positions;
          const scalar_t* base_sample = base ? sample<scalar_t>(*base, a, b) : nullptr;
          for (int64_t co = 0; co < channels; ++co) {
            for (int64_t p = 0; p < positions; ++p) {
              const scalar_t sum = accumulator[p * channels + co];
              out[co * positions + p] = base_sample ? base_sample[co * positions + p] + sum : sum;
            }
          }
        }
      });
    });
  });
  return output;
}

torch::Tensor conv_forward_events(const torch::Tensor& input, const torch::Tensor& weight,
                                  std::optional<torch::Tensor> base, int64_t out_height, int64_t out_width,
                                  int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  check_samples(input, "input");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == input.size(2),
              "weight must be an (out_channels, in_channels, kernel_h, kernel_w) tensor");
  const SparseConvolution convolution(weight, input.size(3), input.size(4), stride_h, stride_w, pad_h, pad_w);
  auto output = convolution.forward(input, base);
  TORCH_CHECK(output.size(3) == out_height && output.size(4) == out_width,
              "out_height and out_width do not match the convolution's output size");
  return output;
}

// input (A, B, Ci, H, W) and grad_output (A, B, Co, Ho, Wo), both contiguous within each sample. Returns
// dL/dW (Co, Ci, kH, kW) = sum over samples and output positions of grad_output * input window.
torch::Tensor conv_weight_gradient_events(const torch::Tensor& input, const torch::Tensor& grad_output,
                                          int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                                          int64_t pad_h, int64_t pad_w) {
  check_samples(input, "input");
  check_samples(grad_output, "grad_output");
  TORCH_CHECK(grad_output.size(0) == input.size(0) && grad_output.size(1) == input.size(1),
              "input and grad_output must have the same samples");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "input and grad_output must have the same dtype");
  const ConvGeometry g = geometry_of(input, grad_output.size(2), grad_output.size(3), grad_output.size(4), kernel_h,
                                     kernel_w, stride_h, stride_w, pad_h, pad_w);
  const int64_t count_a = input.size(0), count_b = input.size(1);
  const int64_t channels = g.out_channels, positions = g.out_positions();
  const int64_t kernel_size = g.kernel_h * g.kernel_w;
  const int64_t weight_size = g.in_channels * kernel_size * channels;
  // One channels-last gradient accumulator per thread, summed at the end.
  const int64_t threads = at::get_num_threads();
  auto partial = torch::zeros({threads, g.in_channels, kernel_h, kernel_w, channels}, input.options());
  const Targets targets(g);

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_weight_gradient_events", [&] {
    with_channels(channels, [&](auto width) {
      constexpr int64_t kChannels = decltype(width)::value;
      const int64_t plane = g.height * g.width;
      at::parallel_for(0, count_a * count_b, 1, [&](int64_t first, int64_t last) {
        scalar_t* gradient = partial.data_ptr<scalar_t>() + at::get_thread_num() * weight_size;
        // The output gradient of one sample, channels-last, with a zero row for the padding targets.
        std::vector<scalar_t> grad_t((positions + 1) * channels, scalar_t(0));
        std::vector<int32_t> events(g.in_size() + 16);
        for (int64_t s = first; s < last; ++s) {
          const int64_t a = s / count_b, b = s % count_b;
          const scalar_t* x = sample<scalar_t>(input, a, b);
          const int64_t count = find_nonzero(x, g.in_size(), events.data());
          if (count == 0) continue;
          const scalar_t* grad = sample<scalar_t>(grad_output, a, b);
          // The loops read in memory order, so that the hardware prefetcher streams the sample in. The
          // strided writes stay in the L1 cache.
          for (int64_t co = 0; co < channels; ++co) {
            for (int64_t p = 0; p < positions; ++p) grad_t[p * channels + co] = grad[co * positions + p];
          }

          for (int64_t e = 0; e < count; ++e) {
            const int64_t index = events[e];
            const int64_t ci = targets.channel[index], spatial = index - ci * plane;
            const scalar_t value = x[index];
            scalar_t* ci_gradient = gradient + ci * kernel_size * channels;
            const int32_t* tap = targets.tap.data() + spatial * targets.count;
            const int32_t* position = targets.position.data() + spatial * targets.count;
            for (int64_t j = 0; j < targets.count; ++j) {
              add_scaled<scalar_t, kChannels>(ci_gradient + tap[j] * channels, grad_t.data() + position[j] * channels,
                                              value, channels);
            }
          }
        }
      });
    });
  });
  // (threads, Ci, kH, kW, Co) -> (Co, Ci, kH, kW).
  return partial.sum(0).permute({3, 0, 1, 2}).contiguous();
}

}  // namespace lightning_snn
