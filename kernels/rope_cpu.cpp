// Rotary position embedding on the CPU: frequency tables as Hugging Face transformers computes
// them (default, linear, YaRN as in modeling_rope_utils._compute_yarn_parameters) and the two
// rotation layouts. Frequencies and angles are computed in double and stored as float.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "common/check.h"
#include "kernels/rope.h"

namespace dshpc {
namespace {

// Dimension index (in [0, d)) whose wavelength makes `num_rotations` turns over
// `original_max_position` positions: d · ln(L / (2π · r)) / (2 ln θ).
double yarn_correction_dim(double num_rotations, double dim, double theta,
                           double original_max_position) {
  return dim * std::log(original_max_position / (num_rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(theta));
}

}  // namespace

double yarn_get_mscale(double scale, double m) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * m * std::log(scale) + 1.0;
}

std::vector<double> rope_inv_freq(const RopeParams& params) {
  const int64_t d = params.rot_dim;
  DSHPC_CHECK(d > 0 && d % 2 == 0) << "rot_dim must be positive and even, got " << d;
  const int64_t half = d / 2;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  // pos_freq[i] = θ^(2i/d); the extrapolated (unscaled) frequency is its inverse.
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0 / std::pow(params.theta, static_cast<double>(2 * i) / static_cast<double>(d));
  }
  switch (params.scaling) {
    case RopeScaling::kNone:
      break;
    case RopeScaling::kLinear:
      for (double& f : inv_freq) f /= params.factor;
      break;
    case RopeScaling::kYarn: {
      const double orig = static_cast<double>(params.original_max_position);
      double low = std::floor(yarn_correction_dim(params.beta_fast, d, params.theta, orig));
      double high = std::ceil(yarn_correction_dim(params.beta_slow, d, params.theta, orig));
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(d - 1));
      if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
      for (int64_t i = 0; i < half; ++i) {
        // ramp = 0 below `low` (pure extrapolation), 1 above `high` (pure interpolation).
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double extrapolation_weight = 1.0 - ramp;
        const double extrapolated = inv_freq[i];
        const double interpolated = extrapolated / params.factor;
        inv_freq[i] =
            interpolated * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight;
      }
      break;
    }
  }
  return inv_freq;
}

double rope_attention_factor(const RopeParams& params) {
  if (params.scaling != RopeScaling::kYarn) return 1.0;
  if (params.mscale != 0.0 && params.mscale_all_dim != 0.0) {
    return yarn_get_mscale(params.factor, params.mscale) /
           yarn_get_mscale(params.factor, params.mscale_all_dim);
  }
  return yarn_get_mscale(params.factor, 1.0);
}

double rope_softmax_scale_multiplier(const RopeParams& params) {
  if (params.scaling != RopeScaling::kYarn || params.mscale_all_dim == 0.0) return 1.0;
  const double m = yarn_get_mscale(params.factor, params.mscale_all_dim);
  return m * m;
}

void rope_tables(const RopeParams& params, int64_t positions, float* cos_table, float* sin_table) {
  const std::vector<double> inv_freq = rope_inv_freq(params);
  const double attention_factor = rope_attention_factor(params);
  const int64_t half = params.rot_dim / 2;
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * inv_freq[i];
      cos_table[p * half + i] = static_cast<float>(std::cos(angle) * attention_factor);
      sin_table[p * half + i] = static_cast<float>(std::sin(angle) * attention_factor);
    }
  }
}

void rope_apply_cpu(float* x, int64_t tokens, int64_t heads, int64_t token_stride,
                    int64_t head_stride, int64_t rot_dim, const int32_t* positions,
                    const float* cos_table, const float* sin_table, RopeStyle style) {
  const int64_t half = rot_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* cos_row = cos_table + static_cast<int64_t>(positions[t]) * half;
    const float* sin_row = sin_table + static_cast<int64_t>(positions[t]) * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* head = x + t * token_stride + h * head_stride;
      if (style == RopeStyle::kHalfSplit) {
        // Pair i is (head[i], head[i + d/2]), as Llama's rotate_half.
        for (int64_t i = 0; i < half; ++i) {
          const float a = head[i];
          const float b = head[i + half];
          head[i] = a * cos_row[i] - b * sin_row[i];
          head[i + half] = b * cos_row[i] + a * sin_row[i];
        }
      } else {
        // Pair i is (head[2i], head[2i+1]), as DeepSeek's complex-number rotation.
        for (int64_t i = 0; i < half; ++i) {
          const float a = head[2 * i];
          const float b = head[2 * i + 1];
          head[2 * i] = a * cos_row[i] - b * sin_row[i];
          head[2 * i + 1] = b * cos_row[i] + a * sin_row[i];
        }
      }
    }
  }
}

}  // namespace dshpc
