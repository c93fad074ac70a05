#include <cblas.h>

#include "kernels/matmul.h"

namespace dshpc {

void matmul_cpu(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k,
                bool accumulate) {
  if (m == 0 || n == 0) return;
  // Row-major y[m,n] = x[m,k] · w[n,k]^T.
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, x, static_cast<int>(k), w, static_cast<int>(k),
              accumulate ? 1.0f : 0.0f, y, static_cast<int>(n));
}

}  // namespace dshpc
