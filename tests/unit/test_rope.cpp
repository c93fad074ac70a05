// RoPE tables (plain, linear, YaRN) and the two rotation layouts.
//
// The YaRN expected values were computed with python3 (math module, double precision) from the
// formula of transformers' modeling_rope_utils._compute_yarn_parameters, written out as:
//   pos = [θ^(i/d) for i in 0, 2, …, d−2]; extrap = 1/pos; interp = 1/(factor·pos)
//   corr(r) = d·ln(L_orig / (2π·r)) / (2 ln θ); low = max(floor(corr(β_fast)), 0)
//   high = min(ceil(corr(β_slow)), d − 1); ramp_i = clamp((i − low)/(high − low), 0, 1)
//   inv_freq_i = interp_i · ramp_i + extrap_i · (1 − ramp_i)
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/rope.h"

namespace dshpc {
namespace {

RopeParams yarn_params(int64_t d, double factor, int64_t original_max_position) {
  RopeParams p;
  p.rot_dim = d;
  p.theta = 10000.0;
  p.scaling = RopeScaling::kYarn;
  p.factor = factor;
  p.original_max_position = original_max_position;
  p.mscale = 1.0;
  p.mscale_all_dim = 1.0;
  return p;
}

double plain_inv_freq(double theta, int64_t i, int64_t d) {
  return 1.0 / std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(d));
}

TEST(RopeInvFreq, PlainAndLinearMatchFormula) {
  RopeParams p;
  p.rot_dim = 64;
  p.theta = 500000.0;
  const auto plain = rope_inv_freq(p);
  ASSERT_EQ(plain.size(), 32u);
  p.scaling = RopeScaling::kLinear;
  p.factor = 4.0;
  const auto linear = rope_inv_freq(p);
  for (int64_t i = 0; i < 32; ++i) {
    EXPECT_NEAR(plain[i] / plain_inv_freq(500000.0, i, 64), 1.0, 1e-12) << i;
    EXPECT_NEAR(linear[i] / (plain_inv_freq(500000.0, i, 64) / 4.0), 1.0, 1e-12) << i;
  }
  EXPECT_EQ(plain[0], 1.0);
}

TEST(RopeInvFreq, YarnFixtureConfig) {
  // deepseek-v3-tiny: qk_rope_head_dim 16, factor 4, original 128 → corr = −0.39 / 2.62, so
  // low = 0, high = 3: dim 0 extrapolates, dims 1–2 blend, dims ≥ 3 interpolate.
  const auto inv = rope_inv_freq(yarn_params(16, 4.0, 128));
  const double expected[8] = {1.0,    0.23717082451262847,   0.05,    0.007905694150420948,
                              0.0025, 0.0007905694150420947, 0.00025, 7.905694150420948e-05};
  ASSERT_EQ(inv.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(inv[i] / expected[i], 1.0, 1e-12) << i;
  EXPECT_EQ(inv[0], plain_inv_freq(10000.0, 0, 16));
  for (int i = 3; i < 8; ++i) EXPECT_NEAR(inv[i] / (plain_inv_freq(1e4, i, 16) / 4.0), 1.0, 1e-12);
}

TEST(RopeInvFreq, YarnDeepSeekV3ConfigRampBoundaries) {
  // DeepSeek-V3: rope dim 64, factor 40, original 4096 → low = 10, high = 23.
  const auto inv = rope_inv_freq(yarn_params(64, 40.0, 4096));
  ASSERT_EQ(inv.size(), 32u);
  for (int i = 0; i <= 10; ++i) {  // pure extrapolation (ramp 0 up to and including `low`)
    EXPECT_NEAR(inv[i] / plain_inv_freq(1e4, i, 64), 1.0, 1e-12) << i;
  }
  for (int i = 23; i < 32; ++i) {  // pure interpolation: inv_freq / factor
    EXPECT_NEAR(inv[i] / (plain_inv_freq(1e4, i, 64) / 40.0), 1.0, 1e-12) << i;
  }
  // Inside the ramp (python3, see the top of the file).
  EXPECT_NEAR(inv[11] / 0.03900692656714386, 1.0, 1e-12);
  EXPECT_NEAR(inv[16] / 0.0055, 1.0, 1e-12);
  EXPECT_NEAR(inv[22] / 0.0001778279410038922, 1.0, 1e-12);
}

TEST(RopeInvFreq, YarnTruncatesLowWithFloorAndHighWithCeil) {
  // d 64, factor 16, original 8192: corr = 12.88 / 24.92 → low 12, high 25 (rounding would give
  // 13 / 25, truncating both down 12 / 24).
  const auto inv = rope_inv_freq(yarn_params(64, 16.0, 8192));
  EXPECT_NEAR(inv[12] / 0.03162277660168379, 1.0, 1e-12);  // = extrapolation
  EXPECT_NEAR(inv[13] / 0.02200361178811055, 1.0, 1e-12);
  EXPECT_NEAR(inv[14] / 0.015217968028217706, 1.0, 1e-12);
  EXPECT_NEAR(inv[24] / 0.00013461538461538456, 1.0, 1e-12);
  EXPECT_NEAR(inv[25] / 4.6868388083278484e-05, 1.0, 1e-12);  // = interpolation
}

TEST(RopeInvFreq, YarnClampsHighToRotDimMinusOneNotHalf) {
  // d 16, factor 8, original 100000: corr = 5.39 / 8.40 → low 5, high 9 > d/2 − 1 = 7. With
  // transformers' clamp to d − 1 the ramp at dim 7 is 0.5; a clamp to d/2 − 1 would make it 1.
  RopeParams p = yarn_params(16, 8.0, 100000);
  const auto inv = rope_inv_freq(p);
  EXPECT_NEAR(inv[5] / 0.003162277660168379, 1.0, 1e-12);
  EXPECT_NEAR(inv[6] / 0.00078125, 1.0, 1e-12);
  EXPECT_NEAR(inv[7] / 0.00017787811838447135, 1.0, 1e-12);
}

TEST(RopeScale, AttentionFactorAndSoftmaxMultiplier) {
  RopeParams v3 = yarn_params(64, 40.0, 4096);  // mscale = mscale_all_dim = 1
  EXPECT_DOUBLE_EQ(rope_attention_factor(v3), 1.0);
  // (0.1·ln 40 + 1)² (python3: 1.8738542070926265).
  EXPECT_NEAR(rope_softmax_scale_multiplier(v3), 1.8738542070926265, 1e-14);

  RopeParams v2 = v3;  // DeepSeek-V2: mscale = mscale_all_dim = 0.707
  v2.mscale = v2.mscale_all_dim = 0.707;
  EXPECT_DOUBLE_EQ(rope_attention_factor(v2), 1.0);
  EXPECT_NEAR(rope_softmax_scale_multiplier(v2), std::pow(0.1 * 0.707 * std::log(40.0) + 1, 2),
              1e-14);

  RopeParams mixed = v3;  // mscale 0.707 over mscale_all_dim 1 (python3: 0.9210423553163399)
  mixed.mscale = 0.707;
  EXPECT_NEAR(rope_attention_factor(mixed), 0.9210423553163399, 1e-14);

  RopeParams plain_yarn = v3;  // mscale_all_dim not given: get_mscale(factor) with m = 1
  plain_yarn.mscale_all_dim = 0.0;
  EXPECT_NEAR(rope_attention_factor(plain_yarn), 0.1 * std::log(40.0) + 1.0, 1e-14);
  EXPECT_DOUBLE_EQ(rope_softmax_scale_multiplier(plain_yarn), 1.0);

  RopeParams linear = v3;
  linear.scaling = RopeScaling::kLinear;
  EXPECT_DOUBLE_EQ(rope_attention_factor(linear), 1.0);
  EXPECT_DOUBLE_EQ(rope_softmax_scale_multiplier(linear), 1.0);

  EXPECT_DOUBLE_EQ(yarn_get_mscale(1.0, 5.0), 1.0);
  EXPECT_DOUBLE_EQ(yarn_get_mscale(0.5, 5.0), 1.0);
}

TEST(RopeTables, ValuesIncludeAttentionFactor) {
  RopeParams p = yarn_params(16, 4.0, 128);
  const int64_t positions = 128;
  std::vector<float> cos_t(positions * 8), sin_t(positions * 8);
  rope_tables(p, positions, cos_t.data(), sin_t.data());
  // Position 100, frequency 3 (python3: cos/sin(100 · 0.007905694150420948)).
  EXPECT_NEAR(cos_t[100 * 8 + 3], 0.7034407157304697, 1e-7);
  EXPECT_NEAR(sin_t[100 * 8 + 3], 0.7107539373458331, 1e-7);

  p.mscale_all_dim = 0.0;  // attention factor 0.1·ln 4 + 1 multiplies both tables
  rope_tables(p, positions, cos_t.data(), sin_t.data());
  const double af = 0.1 * std::log(4.0) + 1.0;
  EXPECT_NEAR(cos_t[100 * 8 + 3], 0.7034407157304697 * af, 1e-6);
  EXPECT_NEAR(sin_t[100 * 8 + 3], 0.7107539373458331 * af, 1e-6);
  EXPECT_NEAR(cos_t[0], af, 1e-6);
  EXPECT_EQ(sin_t[5], 0.0f);
}

struct Tables {
  std::vector<float> cos_t, sin_t;
};

Tables plain_tables(int64_t d, int64_t positions) {
  RopeParams p;
  p.rot_dim = d;
  Tables t{std::vector<float>(positions * d / 2), std::vector<float>(positions * d / 2)};
  rope_tables(p, positions, t.cos_t.data(), t.sin_t.data());
  return t;
}

TEST(RopeApply, PositionZeroIsIdentityAndPairsKeepTheirNorm) {
  const int64_t d = 16, heads = 3, head_stride = 20, token_stride = 64, tokens = 4;
  const auto t = plain_tables(d, 300);
  for (RopeStyle style : {RopeStyle::kHalfSplit, RopeStyle::kInterleaved}) {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> x(tokens * token_stride);
    for (float& v : x) v = dist(rng);
    const auto before = x;
    const std::vector<int32_t> positions = {0, 7, 299, 42};
    rope_apply_cpu(x.data(), tokens, heads, token_stride, head_stride, d, positions.data(),
                   t.cos_t.data(), t.sin_t.data(), style);
    for (int64_t tok = 0; tok < tokens; ++tok) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = tok * token_stride + h * head_stride;
        for (int64_t i = 0; i < d / 2; ++i) {
          const int64_t a = base + (style == RopeStyle::kHalfSplit ? i : 2 * i);
          const int64_t b = base + (style == RopeStyle::kHalfSplit ? i + d / 2 : 2 * i + 1);
          const double n0 = std::hypot(before[a], before[b]), n1 = std::hypot(x[a], x[b]);
          EXPECT_NEAR(n1, n0, 1e-5);
          if (positions[tok] == 0) {
            EXPECT_EQ(x[a], before[a]);
            EXPECT_EQ(x[b], before[b]);
          }
        }
      }
    }
    // Dims past rot_dim and the gaps between heads are untouched.
    for (int64_t tok = 0; tok < tokens; ++tok) {
      for (int64_t c = heads * head_stride; c < token_stride; ++c) {
        EXPECT_EQ(x[tok * token_stride + c], before[tok * token_stride + c]);
      }
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t c = d; c < head_stride; ++c) {
          const int64_t idx = tok * token_stride + h * head_stride + c;
          EXPECT_EQ(x[idx], before[idx]);
        }
      }
    }
  }
}

TEST(RopeApply, RotatesUnitVectorByAngle) {
  // Pair 1 of a d = 8 head at position 5 rotates (1, 0) to (cos 5θ₁, sin 5θ₁), θ₁ = 10000^(−2/8).
  const int64_t d = 8;
  const auto t = plain_tables(d, 8);
  const int32_t pos = 5;
  const double angle = 5.0 * plain_inv_freq(10000.0, 1, d);
  std::vector<float> half(d, 0.0f), inter(d, 0.0f);
  half[1] = 1.0f;   // pair 1 = (x[1], x[5])
  inter[2] = 1.0f;  // pair 1 = (x[2], x[3])
  rope_apply_cpu(half.data(), 1, 1, d, d, d, &pos, t.cos_t.data(), t.sin_t.data(),
                 RopeStyle::kHalfSplit);
  rope_apply_cpu(inter.data(), 1, 1, d, d, d, &pos, t.cos_t.data(), t.sin_t.data(),
                 RopeStyle::kInterleaved);
  EXPECT_NEAR(half[1], std::cos(angle), 1e-6);
  EXPECT_NEAR(half[5], std::sin(angle), 1e-6);
  EXPECT_NEAR(inter[2], std::cos(angle), 1e-6);
  EXPECT_NEAR(inter[3], std::sin(angle), 1e-6);
  for (int i : {0, 2, 3, 4, 6, 7}) EXPECT_EQ(half[i], 0.0f);
  for (int i : {0, 1, 4, 5, 6, 7}) EXPECT_EQ(inter[i], 0.0f);
}

TEST(RopeApply, HalfSplitEqualsInterleavedUnderPermutation) {
  // Interleaved x[2i], x[2i+1] ↔ half-split y[i], y[i + d/2] (what transformers' DeepSeek-V3
  // apply_rotary_pos_emb_interleave does before rotate_half).
  const int64_t d = 32, tokens = 5;
  const auto t = plain_tables(d, 64);
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> inter(tokens * d), half(tokens * d);
  for (int64_t tok = 0; tok < tokens; ++tok) {
    for (int64_t i = 0; i < d / 2; ++i) {
      inter[tok * d + 2 * i] = half[tok * d + i] = dist(rng);
      inter[tok * d + 2 * i + 1] = half[tok * d + i + d / 2] = dist(rng);
    }
  }
  const std::vector<int32_t> positions = {3, 0, 63, 17, 40};
  rope_apply_cpu(inter.data(), tokens, 1, d, d, d, positions.data(), t.cos_t.data(), t.sin_t.data(),
                 RopeStyle::kInterleaved);
  rope_apply_cpu(half.data(), tokens, 1, d, d, d, positions.data(), t.cos_t.data(), t.sin_t.data(),
                 RopeStyle::kHalfSplit);
  for (int64_t tok = 0; tok < tokens; ++tok) {
    for (int64_t i = 0; i < d / 2; ++i) {
      EXPECT_EQ(inter[tok * d + 2 * i], half[tok * d + i]);
      EXPECT_EQ(inter[tok * d + 2 * i + 1], half[tok * d + i + d / 2]);
    }
  }
}

}  // namespace
}  // namespace dshpc
