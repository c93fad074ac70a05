// Dense matrix product with PyTorch Linear weight layout.
#pragma once

#include <cstdint>

namespace dshpc {

// y[m, n] = x[m, k] · w[n, k]^T, or y += … when `accumulate`. Row-major, contiguous. (OpenBLAS
// sgemm)
void matmul_cpu(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k,
                bool accumulate = false);

}  // namespace dshpc
