// RMSNorm against a naive double-precision loop: out = x / sqrt(mean(x²) + eps) · weight.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/rmsnorm.h"

namespace dshpc {
namespace {

std::vector<float> random_vector(size_t n, uint32_t seed, float lo = -2.0f, float hi = 2.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Reference in double, written independently of the kernel.
std::vector<double> naive_rmsnorm_row(const float* x, const float* w, int64_t dim, double eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double rms = std::sqrt(ss / dim + eps);
  std::vector<double> out(dim);
  for (int64_t i = 0; i < dim; ++i) out[i] = x[i] / rms * w[i];
  return out;
}

TEST(KernelRmsNorm, MatchesNaiveOnStridedRows) {
  // A leading sub-range of wider rows (as MLA's latent before k_pe): dim 48 of rows of 56,
  // written into rows of 50; the tail of every row must stay untouched.
  const int64_t rows = 5, dim = 48, x_stride = 56, out_stride = 50;
  const float eps = 1e-6f;
  const auto x = random_vector(rows * x_stride, 1);
  const auto w = random_vector(dim, 2, 0.5f, 1.5f);
  std::vector<float> out(rows * out_stride, 123.0f);
  rmsnorm_cpu(x.data(), x_stride, w.data(), out.data(), out_stride, rows, dim, eps);
  for (int64_t r = 0; r < rows; ++r) {
    const auto ref = naive_rmsnorm_row(x.data() + r * x_stride, w.data(), dim, eps);
    for (int64_t i = 0; i < dim; ++i) {
      EXPECT_NEAR(out[r * out_stride + i], ref[i], 1e-5 * (1.0 + std::fabs(ref[i])));
    }
    for (int64_t i = dim; i < out_stride; ++i) EXPECT_EQ(out[r * out_stride + i], 123.0f);
  }
}

TEST(KernelRmsNorm, EpsMattersForSmallRows) {
  // mean(x²) = 1e-6 and eps = 1e-6: the result is x / sqrt(2e-6), not x / sqrt(1e-6).
  const int64_t dim = 4;
  std::vector<float> x(dim, 1e-3f), w(dim, 1.0f), out(dim);
  rmsnorm_cpu(x.data(), dim, w.data(), out.data(), dim, 1, dim, 1e-6f);
  for (float v : out) EXPECT_NEAR(v, 1e-3 / std::sqrt(2e-6), 1e-5);
}

TEST(KernelRmsNorm, InPlace) {
  const int64_t rows = 3, dim = 64;
  auto x = random_vector(rows * dim, 3);
  const auto original = x;
  const auto w = random_vector(dim, 4);
  rmsnorm_cpu(x.data(), dim, w.data(), x.data(), dim, rows, dim, 1e-5f);
  for (int64_t r = 0; r < rows; ++r) {
    const auto ref = naive_rmsnorm_row(original.data() + r * dim, w.data(), dim, 1e-5);
    for (int64_t i = 0; i < dim; ++i) EXPECT_NEAR(x[r * dim + i], ref[i], 1e-5);
  }
}

TEST(KernelRmsNorm, FusedResidualAdd) {
  const int64_t rows = 4, dim = 32;
  auto residual = random_vector(rows * dim, 5);
  const auto before = residual;
  const auto delta = random_vector(rows * dim, 6);
  const auto w = random_vector(dim, 7);
  std::vector<float> out(rows * dim);
  add_rmsnorm_cpu(residual.data(), delta.data(), w.data(), out.data(), rows, dim, 1e-6f);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> sum(dim);
    for (int64_t i = 0; i < dim; ++i) {
      sum[i] = before[r * dim + i] + delta[r * dim + i];
      EXPECT_EQ(residual[r * dim + i], sum[i]);
    }
    const auto ref = naive_rmsnorm_row(sum.data(), w.data(), dim, 1e-6);
    for (int64_t i = 0; i < dim; ++i) EXPECT_NEAR(out[r * dim + i], ref[i], 1e-5);
  }
}

}  // namespace
}  // namespace dshpc
