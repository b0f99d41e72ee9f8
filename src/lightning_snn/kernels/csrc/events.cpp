// The nonzero entries of a 2-D tensor as event lists, in one pass over the data after a counting pass.
//
// torch.nonzero returns 64-bit flat indices, which need a division into rows and columns, a gather of
// the values and a search for the row offsets afterwards. On the spike inputs of a training step
// those steps together took longer than the projection itself.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "kernels.h"

#include <cstdint>
#include <vector>

namespace lightning_snn {

// x (rows, columns) contiguous. Returns the row and column of every nonzero entry (int32, row-major
// order), their values, the offset of each row's first event (int32, rows + 1 entries) and whether all
// values equal 1.
std::vector<torch::Tensor> find_events(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), "x must be a contiguous 2-D CPU tensor");
  const int64_t num_rows = x.size(0), num_columns = x.size(1);
  TORCH_CHECK(x.numel() < (int64_t{1} << 31), "find_events needs fewer than 2^31 entries");
  auto offsets = torch::empty({num_rows + 1}, x.options().dtype(torch::kInt32));
  int32_t* offset = offsets.data_ptr<int32_t>();
  torch::Tensor rows, columns, values;
  bool binary = true;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "find_events", [&] {
    const scalar_t* data = x.data_ptr<scalar_t>();
    // Count the events of every row, then turn the counts into offsets.
    at::parallel_for(0, num_rows, 64, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const scalar_t* row = data + r * num_columns;
        int32_t count = 0;
        for (int64_t c = 0; c < num_columns; ++c) count += row[c] != scalar_t(0);
        offset[r + 1] = count;
      }
    });
    offset[0] = 0;
    for (int64_t r = 0; r < num_rows; ++r) offset[r + 1] += offset[r];

    const int64_t count = offset[num_rows];
    rows = torch::empty({count}, x.options().dtype(torch::kInt32));
    columns = torch::empty({count}, x.options().dtype(torch::kInt32));
    values = torch::empty({count}, x.options());
    int32_t* row_index = rows.data_ptr<int32_t>();
    int32_t* column_index = columns.data_ptr<int32_t>();
    scalar_t* value = values.data_ptr<scalar_t>();
    std::vector<char> row_binary(num_rows, 1);
    at::parallel_for(0, num_rows, 64, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const scalar_t* row = data + r * num_columns;
        int64_t at = offset[r];
        for (int64_t c = 0; c < num_columns; ++c) {
          if (row[c] == scalar_t(0)) continue;
          row_index[at] = static_cast<int32_t>(r);
          column_index[at] = static_cast<int32_t>(c);
          value[at] = row[c];
          if (row[c] != scalar_t(1)) row_binary[r] = 0;
          ++at;
        }
      }
    });
    for (char flag : row_binary) binary = binary && flag;
  });
  return {rows, columns, values, offsets, torch::tensor(binary)};
}

}  // namespace lightning_snn
