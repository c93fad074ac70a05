// Rotary position embedding: frequency tables (plain, linear, YaRN) and their application.
#pragma once

#include <cstdint>
#include <vector>

namespace dshpc {

enum class RopeScaling { kNone, kLinear, kYarn };

// Llama-family models rotate (x[i], x[i + d/2]) pairs ("rotate_half"); DeepSeek-V2/V3 rotate
// adjacent pairs (x[2i], x[2i+1]).
enum class RopeStyle { kHalfSplit, kInterleaved };

struct RopeParams {
  int64_t rot_dim = 0;  // rotated dimensions per head (even)
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::kNone;
  double factor = 1.0;                   // linear and YaRN
  int64_t original_max_position = 4096;  // YaRN
  double beta_fast = 32.0;               // YaRN
  double beta_slow = 1.0;                // YaRN
  double mscale = 1.0;                   // YaRN (0 = not given)
  double mscale_all_dim = 0.0;           // YaRN (0 = not given)
};

// YaRN's magnitude correction: 0.1 · m · ln(s) + 1 for s > 1, else 1.
double yarn_get_mscale(double scale, double m);

// inv_freq[rot_dim / 2] as Hugging Face computes it (linear divides by factor; YaRN blends
// interpolated and extrapolated frequencies with the linear ramp between the correction dims
// from beta_fast / beta_slow, floor/ceil-truncated and clamped to [0, rot_dim − 1] — rot_dim − 1,
// not rot_dim/2 − 1, as transformers' find_correction_range does; the ramp itself runs over the
// rot_dim/2 frequencies and is clamped to [0, 1]).
//
// `factor` is used as given. transformers 5.x does the same (it warns when factor differs from
// max_position_embeddings / original_max_position_embeddings and only derives it from that ratio
// when `factor` is absent); transformers 4.4x–4.5x instead always replaced factor by that ratio
// when original_max_position_embeddings was present. Filling RopeParams from config.json is the
// caller's job. transformers' optional `truncate: false` (no floor/ceil) and explicit
// `attention_factor` keys are not modelled; no DeepSeek config sets them.
std::vector<double> rope_inv_freq(const RopeParams& params);

// The factor Hugging Face multiplies cos and sin by: for YaRN mscale(factor, mscale) /
// mscale(factor, mscale_all_dim) when both are given, else mscale(factor, 1); 1 otherwise.
double rope_attention_factor(const RopeParams& params);

// DeepSeek's softmax-scale multiplier: mscale(factor, mscale_all_dim)² for YaRN with
// mscale_all_dim given, else 1. The attention scale is head_dim^-0.5 times this.
double rope_softmax_scale_multiplier(const RopeParams& params);

// cos and sin tables [positions, rot_dim / 2], already multiplied by rope_attention_factor.
void rope_tables(const RopeParams& params, int64_t positions, float* cos_table, float* sin_table);

// Rotates, in place, dims [0, rot_dim) of every head of every token: the head's first element is
// x + t · token_stride + h · head_stride. Token t is at position positions[t].
void rope_apply_cpu(float* x, int64_t tokens, int64_t heads, int64_t token_stride,
                    int64_t head_stride, int64_t rot_dim, const int32_t* positions,
                    const float* cos_table, const float* sin_table, RopeStyle style);

}  // namespace dshpc
