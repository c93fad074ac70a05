// RMSNorm on the CPU, matching Hugging Face's LlamaRMSNorm / DeepseekV3RMSNorm in float32:
// out = weight · (x · rsqrt(mean(x²) + eps)). The sum of squares is accumulated in double so that
// the reference does not depend on the summation order of a row of thousands of elements.
#include <cmath>

#include "kernels/rmsnorm.h"

namespace dshpc {
namespace {

// 1 / sqrt(mean(x²) + eps) for one row.
float inverse_rms(const float* x, int64_t dim, float eps) {
  double sum_squares = 0.0;
  for (int64_t i = 0; i < dim; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
  const double mean = sum_squares / static_cast<double>(dim);
  return static_cast<float>(1.0 / std::sqrt(mean + static_cast<double>(eps)));
}

// Reads all of x before writing, so `out` may alias `x`.
void normalize_row(const float* x, const float* weight, float* out, int64_t dim, float eps) {
  const float inv = inverse_rms(x, dim, eps);
  for (int64_t i = 0; i < dim; ++i) out[i] = weight[i] * (x[i] * inv);
}

}  // namespace

void rmsnorm_cpu(const float* x, int64_t x_stride, const float* weight, float* out,
                 int64_t out_stride, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    normalize_row(x + r * x_stride, weight, out + r * out_stride, dim, eps);
  }
}

void add_rmsnorm_cpu(float* residual, const float* delta, const float* weight, float* out,
                     int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = residual + r * dim;
    const float* d = delta + r * dim;
    for (int64_t i = 0; i < dim; ++i) row[i] += d[i];
    normalize_row(row, weight, out + r * dim, dim, eps);
  }
}

}  // namespace dshpc
