#include "worker/chunk_layout.h"

#include <algorithm>

namespace dshpc {
namespace {

// The largest divisor of n that is at most limit (1 when limit < 1).
int64_t largest_divisor_at_most(int64_t n, int64_t limit) {
  int64_t best = 1;
  for (int64_t d = 1; d * d <= n; ++d) {
    if (n % d != 0) continue;
    if (d <= limit) best = std::max(best, d);
    if (n / d <= limit) best = std::max(best, n / d);
  }
  return best;
}

int64_t product_except(const std::vector<int64_t>& dims, size_t skip) {
  int64_t p = 1;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (d != skip) p *= dims[d];
  }
  return p;
}

}  // namespace

std::vector<int64_t> choose_chunk_shape(const std::vector<int64_t>& shape, TensorSplit split,
                                        int64_t units, size_t element_bytes) {
  if (shape.empty()) return {1};  // a scalar is stored as one element
  for (int64_t d : shape) {
    if (d <= 0) return {};
  }
  std::vector<int64_t> chunk = shape;
  int split_dim = -1;
  if (split == TensorSplit::kRows) split_dim = 0;
  if (split == TensorSplit::kCols && shape.size() >= 2) split_dim = 1;
  if (split_dim >= 0 && units > 0 && shape[split_dim] % units == 0) {
    chunk[split_dim] = shape[split_dim] / largest_divisor_at_most(units, kMaxSplitChunks);
  } else {
    split_dim = -1;
  }
  const int64_t element = static_cast<int64_t>(element_bytes);
  const int64_t target_elements = std::max<int64_t>(1, kTargetChunkBytes / element);

  // Fewer rows per chunk until it fits (a divisor of the split extent when dim 0 is split).
  const int64_t row_elements = product_except(chunk, 0);
  const int64_t rows_that_fit = std::max<int64_t>(1, target_elements / row_elements);
  chunk[0] = split_dim == 0 ? largest_divisor_at_most(chunk[0], rows_that_fit)
                            : std::min(chunk[0], rows_that_fit);
  // Rows wider than the target: fewer columns too.
  if (chunk.size() >= 2 && product_except(chunk, 1) * chunk[1] > target_elements) {
    const int64_t cols_that_fit =
        std::max<int64_t>(1, target_elements / std::max<int64_t>(1, product_except(chunk, 1)));
    chunk[1] = split_dim == 1 ? largest_divisor_at_most(chunk[1], cols_that_fit)
                              : std::min(chunk[1], cols_that_fit);
  }
  return chunk;
}

int64_t chunk_bytes_touched(const std::vector<int64_t>& shape, const std::vector<int64_t>& chunk,
                            const std::vector<int64_t>& start, const std::vector<int64_t>& count,
                            size_t element_bytes) {
  int64_t elements = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (count[d] <= 0) return 0;
    const int64_t first = start[d] / chunk[d];
    const int64_t last = (start[d] + count[d] - 1) / chunk[d];
    // Every touched chunk is whole except the edge chunk, which ends at the tensor's edge.
    const int64_t extent = std::min(shape[d], (last + 1) * chunk[d]) - first * chunk[d];
    elements *= extent;
  }
  return elements * static_cast<int64_t>(element_bytes);
}

}  // namespace dshpc
