// Mixture-of-experts routing for DeepSeek-V2 and V3.
//
// V2 (softmax): scores = softmax(logits); "greedy" takes the top-k scores; "group_limited_greedy"
//   scores each group by its max, keeps the top topk_group groups and takes the top-k within them.
//   With norm_topk_prob and top_k > 1 the weights are divided by their sum (+1e-20); otherwise
//   they are multiplied by routed_scaling_factor.
// V3 (sigmoid, "noaux_tc"): scores = sigmoid(logits); choice = scores + e_score_correction_bias;
//   each group is scored by the sum of its two largest choice values; the top topk_group groups
//   are kept and the others masked with −inf (not 0: biased scores can be negative); the top-k
//   experts by choice are picked, but weighted by the unbiased scores; with norm_topk_prob the
//   weights are divided by their sum (+1e-20); then always multiplied by routed_scaling_factor.
#pragma once

#include <cstdint>

namespace dshpc {

enum class MoeScoring { kSoftmax, kSigmoid };
enum class MoeTopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };

struct MoeRoutingParams {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t num_groups = 1;
  int64_t topk_groups = 1;
  MoeScoring scoring = MoeScoring::kSoftmax;
  MoeTopkMethod method = MoeTopkMethod::kGreedy;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
};

// logits[tokens, num_experts] from the gate; bias[num_experts] (noaux_tc only, else nullptr).
// Writes expert_ids[tokens, top_k] and weights[tokens, top_k].
void moe_route_cpu(const float* logits, const float* bias, int64_t tokens,
                   const MoeRoutingParams& params, int32_t* expert_ids, float* weights);

}  // namespace dshpc
