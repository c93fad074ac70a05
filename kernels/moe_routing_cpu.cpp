// Mixture-of-experts routing on the CPU (semantics in moe_routing.h).
//
// Selection order: experts are ranked by the value they are picked by (the softmax / sigmoid
// score, or for noaux_tc the biased choice value), descending, ties to the lower expert index;
// groups likewise by their group score, ties to the lower group index. The top_k outputs of a
// token are written in that rank order, so the result is deterministic.
//
// The normalisation rule follows the scoring function: softmax (V2) normalises only when
// norm_topk_prob and top_k > 1 and otherwise scales by routed_scaling_factor; sigmoid (V3)
// normalises when norm_topk_prob and then always scales.
//
// Dropped groups are masked with −inf as DeepSeek's inference/model.py, vLLM and SGLang do.
// transformers 5.x (DeepseekV3MoE.route_tokens_to_experts) masks them with 0.0; the two agree
// whenever the kept groups hold at least top_k experts with a non-negative choice value, which is
// the usual case (sigmoid ∈ (0, 1), small biases) but not guaranteed.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/check.h"
#include "kernels/moe_routing.h"

namespace dshpc {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Moves the `k` indices with the largest key[index] to the front of `order`, sorted descending,
// ties to the lower index.
void top_indices(const float* key, std::vector<int32_t>& order, int64_t k) {
  auto better = [key](int32_t a, int32_t b) {
    return key[a] > key[b] || (key[a] == key[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
}

void softmax(const float* logits, int64_t n, float* out) {
  const float max_logit = *std::max_element(logits, logits + n);
  double sum = 0.0;
  for (int64_t e = 0; e < n; ++e) {
    out[e] = std::exp(logits[e] - max_logit);
    sum += out[e];
  }
  for (int64_t e = 0; e < n; ++e) out[e] = static_cast<float>(out[e] / sum);
}

void check_params(const MoeRoutingParams& p, const float* bias) {
  DSHPC_CHECK(p.num_experts > 0 && p.top_k > 0 && p.top_k <= p.num_experts)
      << "num_experts " << p.num_experts << ", top_k " << p.top_k;
  if (p.method == MoeTopkMethod::kGreedy) return;
  DSHPC_CHECK(p.num_groups > 0 && p.num_experts % p.num_groups == 0)
      << "num_experts " << p.num_experts << " is not a multiple of num_groups " << p.num_groups;
  DSHPC_CHECK(p.topk_groups > 0 && p.topk_groups <= p.num_groups)
      << "topk_groups " << p.topk_groups << ", num_groups " << p.num_groups;
  DSHPC_CHECK(p.top_k <= p.topk_groups * (p.num_experts / p.num_groups))
      << "top_k " << p.top_k << " exceeds the experts of the kept groups";
  if (p.method == MoeTopkMethod::kNoauxTc) {
    DSHPC_CHECK(bias != nullptr) << "noaux_tc needs e_score_correction_bias";
  }
}

}  // namespace

void moe_route_cpu(const float* logits, const float* bias, int64_t tokens,
                   const MoeRoutingParams& params, int32_t* expert_ids, float* weights) {
  check_params(params, bias);
  const int64_t n = params.num_experts;
  const int64_t top_k = params.top_k;
  const int64_t per_group = n / std::max<int64_t>(params.num_groups, 1);

  std::vector<float> scores(static_cast<size_t>(n));  // unbiased: they weight the experts
  std::vector<float> choice(static_cast<size_t>(n));  // what experts are ranked by
  std::vector<float> group_score(static_cast<size_t>(params.num_groups));
  std::vector<int32_t> expert_order(static_cast<size_t>(n));
  std::vector<int32_t> group_order(static_cast<size_t>(params.num_groups));

  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * n;
    if (params.scoring == MoeScoring::kSoftmax) {
      softmax(row, n, scores.data());
    } else {
      for (int64_t e = 0; e < n; ++e) scores[e] = 1.0f / (1.0f + std::exp(-row[e]));
    }
    for (int64_t e = 0; e < n; ++e) {
      choice[e] = params.method == MoeTopkMethod::kNoauxTc ? scores[e] + bias[e] : scores[e];
    }

    if (params.method != MoeTopkMethod::kGreedy) {
      for (int64_t grp = 0; grp < params.num_groups; ++grp) {
        const float* c = choice.data() + grp * per_group;
        if (params.method == MoeTopkMethod::kGroupLimitedGreedy) {
          group_score[grp] = *std::max_element(c, c + per_group);
        } else {  // noaux_tc: sum of the two largest (the only one if a group has one expert)
          float first = kNegInf, second = kNegInf;
          for (int64_t e = 0; e < per_group; ++e) {
            if (c[e] > first) {
              second = first;
              first = c[e];
            } else if (c[e] > second) {
              second = c[e];
            }
          }
          group_score[grp] = per_group >= 2 ? first + second : first;
        }
      }
      for (int64_t grp = 0; grp < params.num_groups; ++grp) group_order[grp] = grp;
      top_indices(group_score.data(), group_order, params.topk_groups);
      // Dropped groups get −inf, never 0: biased choice values can be negative, and a 0 would
      // then outrank experts of the kept groups.
      for (int64_t r = params.topk_groups; r < params.num_groups; ++r) {
        float* c = choice.data() + group_order[r] * per_group;
        std::fill(c, c + per_group, kNegInf);
      }
    }

    for (int64_t e = 0; e < n; ++e) expert_order[e] = static_cast<int32_t>(e);
    top_indices(choice.data(), expert_order, top_k);

    int32_t* ids = expert_ids + t * top_k;
    float* w = weights + t * top_k;
    double sum = 0.0;
    for (int64_t r = 0; r < top_k; ++r) {
      ids[r] = expert_order[r];
      w[r] = scores[expert_order[r]];
      sum += w[r];
    }
    const bool softmax_scoring = params.scoring == MoeScoring::kSoftmax;
    const bool normalise = params.norm_topk_prob && (!softmax_scoring || top_k > 1);
    const double factor = normalise ? 1.0 / (sum + 1e-20) : 1.0;
    const double scaling = (normalise && softmax_scoring) ? 1.0 : params.routed_scaling_factor;
    for (int64_t r = 0; r < top_k; ++r) {
      w[r] = static_cast<float>(static_cast<double>(w[r]) * factor * scaling);
    }
  }
}

}  // namespace dshpc
