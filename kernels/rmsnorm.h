// RMSNorm: out = x / sqrt(mean(x²) + eps) · weight, computed in float32 per row.
#pragma once

#include <cstdint>

namespace dshpc {

// Rows of `dim` elements; consecutive rows are `x_stride` / `out_stride` elements apart (so a
// leading sub-range of a wider row, such as MLA's latent before k_pe, can be normalised).
// `out` may alias `x`.
void rmsnorm_cpu(const float* x, int64_t x_stride, const float* weight, float* out,
                 int64_t out_stride, int64_t rows, int64_t dim, float eps);

// Fused residual add: residual[r] += delta[r]; out[r] = rmsnorm(residual[r]). Contiguous rows.
void add_rmsnorm_cpu(float* residual, const float* delta, const float* weight, float* out,
                     int64_t rows, int64_t dim, float eps);

}  // namespace dshpc
