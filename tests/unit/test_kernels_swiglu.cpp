// SwiGLU against silu(g) · u written out in double.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/swiglu.h"

namespace dshpc {
namespace {

TEST(KernelSwiglu, MatchesNaiveAndReadsGateThenUp) {
  const int64_t rows = 3, dim = 40;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-6.0f, 6.0f);
  std::vector<float> gate_up(rows * 2 * dim);
  for (float& v : gate_up) v = dist(rng);
  std::vector<float> out(rows * dim);
  swiglu_cpu(gate_up.data(), out.data(), rows, dim);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < dim; ++i) {
      const double g = gate_up[r * 2 * dim + i];
      const double u = gate_up[r * 2 * dim + dim + i];
      const double ref = g / (1.0 + std::exp(-g)) * u;
      EXPECT_NEAR(out[r * dim + i], ref, 1e-6 * (1.0 + std::fabs(ref)));
    }
  }
}

TEST(KernelSwiglu, SaturatesWithoutNan) {
  // silu(−200) → −0 (exp overflows to inf), silu(200) → 200.
  std::vector<float> gate_up = {-200.0f, 200.0f, 0.0f, 3.0f, 5.0f, 7.0f};
  std::vector<float> out(3);
  swiglu_cpu(gate_up.data(), out.data(), 1, 3);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_FLOAT_EQ(out[1], 1000.0f);
  EXPECT_EQ(out[2], 0.0f);
}

}  // namespace
}  // namespace dshpc
