// MoE routing on hand-worked examples. Expected weights are computed here from the written-out
// formulas (softmax / sigmoid in double), never read back from the kernel.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/moe_routing.h"

namespace dshpc {
namespace {

double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

std::vector<double> softmax(const std::vector<float>& logits) {
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l));
  std::vector<double> p;
  for (float l : logits) p.push_back(std::exp(static_cast<double>(l)) / sum);
  return p;
}

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed route(const std::vector<float>& logits, const std::vector<float>& bias,
             const MoeRoutingParams& p) {
  Routed r{std::vector<int32_t>(p.top_k), std::vector<float>(p.top_k)};
  moe_route_cpu(logits.data(), bias.empty() ? nullptr : bias.data(), 1, p, r.ids.data(),
                r.weights.data());
  return r;
}

MoeRoutingParams v2_params(int64_t experts, int64_t top_k) {
  MoeRoutingParams p;
  p.num_experts = experts;
  p.top_k = top_k;
  p.scoring = MoeScoring::kSoftmax;
  p.method = MoeTopkMethod::kGreedy;
  return p;
}

TEST(MoeRoutingV2, GreedyTopKDescendingTiesToLowerIndex) {
  // Experts 1 and 4 tie at logit 3; expert 2 (logit 2.5) comes next.
  const std::vector<float> logits = {1.0f, 3.0f, 2.5f, 0.0f, 3.0f, -1.0f};
  const auto prob = softmax(logits);
  MoeRoutingParams p = v2_params(6, 3);
  p.routed_scaling_factor = 16.0f;  // applied: norm_topk_prob is off
  const Routed r = route(logits, {}, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 4, 2}));
  EXPECT_NEAR(r.weights[0], 16.0 * prob[1], 1e-6);
  EXPECT_NEAR(r.weights[1], 16.0 * prob[4], 1e-6);
  EXPECT_NEAR(r.weights[2], 16.0 * prob[2], 1e-6);
}

TEST(MoeRoutingV2, NormTopkProbReplacesScaling) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.5f, 0.0f, 3.0f, -1.0f};
  const auto prob = softmax(logits);
  MoeRoutingParams p = v2_params(6, 3);
  p.norm_topk_prob = true;
  p.routed_scaling_factor = 16.0f;  // V2: not applied when the weights are normalised
  const Routed r = route(logits, {}, p);
  const double sum = prob[1] + prob[4] + prob[2];
  EXPECT_NEAR(r.weights[0], prob[1] / sum, 1e-6);
  EXPECT_NEAR(r.weights[2], prob[2] / sum, 1e-6);

  // top_k = 1: V2 does not normalise (it would give 1.0) but scales.
  p.top_k = 1;
  const Routed one = route(logits, {}, p);
  EXPECT_EQ(one.ids[0], 1);
  EXPECT_NEAR(one.weights[0], 16.0 * prob[1], 1e-5);
}

TEST(MoeRoutingV2, GroupLimitedGreedyUsesGroupMax) {
  // 4 groups of 2: g0 = {5, −5}, g1 = {4, 4}, g2 = {4.5, −5}, g3 = {0, 0}. Group max keeps g0
  // (5) and g2 (4.5); the top 3 inside them are e0, e4, then e1 / e5 tied at −5 → e1.
  // (Plain greedy would take e2 or e3 from g1; a sum-of-top-2 group score would keep g1.)
  const std::vector<float> logits = {5, -5, 4, 4, 4.5f, -5, 0, 0};
  const auto prob = softmax(logits);
  MoeRoutingParams p = v2_params(8, 3);
  p.method = MoeTopkMethod::kGroupLimitedGreedy;
  p.num_groups = 4;
  p.topk_groups = 2;
  const Routed r = route(logits, {}, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 4, 1}));
  EXPECT_NEAR(r.weights[0], prob[0], 1e-6);
  EXPECT_NEAR(r.weights[1], prob[4], 1e-6);
  EXPECT_NEAR(r.weights[2], prob[1], 1e-9);
}

MoeRoutingParams v3_params(int64_t top_k, int64_t topk_groups) {
  MoeRoutingParams p;
  p.num_experts = 8;
  p.top_k = top_k;
  p.num_groups = 4;
  p.topk_groups = topk_groups;
  p.scoring = MoeScoring::kSigmoid;
  p.method = MoeTopkMethod::kNoauxTc;
  p.norm_topk_prob = true;
  p.routed_scaling_factor = 2.5f;
  return p;
}

// Bias that makes sigmoid(logit) + bias equal `choice` for each expert.
std::vector<float> bias_for(const std::vector<float>& logits, const std::vector<double>& choice) {
  std::vector<float> bias;
  for (size_t e = 0; e < logits.size(); ++e) {
    bias.push_back(static_cast<float>(choice[e] - sigmoid(logits[e])));
  }
  return bias;
}

TEST(MoeRoutingV3, BiasPicksUnbiasedScoresWeigh) {
  // sigmoid: e0 .881 e1 .269 e2 .622 e3 .5 e4 .731 e5 .731 e6 .119 e7 .953.
  // bias moves e2 to 1.222 and e3 to 1.1 and e7 down to .053. Group sums of the top 2:
  // g0 1.150, g1 2.322, g2 1.462, g3 .172 → keep g1, g2; top 2 by choice: e2, e3 — although
  // the unbiased scores alone would have picked e7 and e0.
  const std::vector<float> logits = {2, -1, 0.5f, 0, 1, 1, -2, 3};
  const std::vector<float> bias = {0, 0, 0.6f, 0.6f, 0, 0, 0, -0.9f};
  const double s2 = sigmoid(0.5), s3 = sigmoid(0.0);
  MoeRoutingParams p = v3_params(2, 2);
  const Routed r = route(logits, bias, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 3}));
  EXPECT_NEAR(r.weights[0], 2.5 * s2 / (s2 + s3), 1e-6);
  EXPECT_NEAR(r.weights[1], 2.5 * s3 / (s2 + s3), 1e-6);

  p.norm_topk_prob = false;  // unnormalised, but still × routed_scaling_factor
  const Routed raw = route(logits, bias, p);
  EXPECT_EQ(raw.ids, (std::vector<int32_t>{2, 3}));
  EXPECT_NEAR(raw.weights[0], 2.5 * s2, 1e-6);
  EXPECT_NEAR(raw.weights[1], 2.5 * s3, 1e-6);
}

TEST(MoeRoutingV3, GroupScoreIsSumOfTopTwo) {
  // Choice values g0 = {0.9, 0.0}, g1 = {0.65, 0.6}, g2 = {0.1, 0.1}, g3 = {0.2, 0.0}; keep
  // one group. Sum of top 2 keeps g1 (1.25 > 0.9); the group max would keep g0.
  const std::vector<float> logits = {0.3f, -0.4f, 0.1f, 1.2f, 0, 0, -1, 0.5f};
  const auto bias = bias_for(logits, {0.9, 0.0, 0.65, 0.6, 0.1, 0.1, 0.2, 0.0});
  const MoeRoutingParams p = v3_params(2, 1);
  const Routed r = route(logits, bias, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 3}));
  const double s2 = sigmoid(0.1), s3 = sigmoid(1.2);
  EXPECT_NEAR(r.weights[0], 2.5 * s2 / (s2 + s3), 1e-6);
  EXPECT_NEAR(r.weights[1], 2.5 * s3 / (s2 + s3), 1e-6);
}

TEST(MoeRoutingV3, DroppedGroupsAreMaskedWithMinusInfinityNotZero) {
  // Biased choice values (bias chosen per expert so that sigmoid(logit) + bias is exactly this):
  //   g0 = {0.3, −0.2}  sum  0.1   kept
  //   g1 = {0.2, −0.4}  sum −0.2   kept
  //   g2 = {−0.1, −0.3} sum −0.4   dropped
  //   g3 = {−0.5, −0.6} sum −1.1   dropped
  // With top_k = 3 the kept groups hold e0 (0.3), e2 (0.2) and then e1 (−0.2). Masking the
  // dropped groups with 0 instead of −inf would give e4..e7 a choice of 0 > −0.2, and the third
  // pick would come from a dropped group (e4). A biased score can be negative, so only −inf
  // keeps dropped groups out.
  const std::vector<float> logits = {1.5f, -0.5f, 0.8f, 0.2f, -1.0f, 0.4f, 2.0f, -0.3f};
  const auto bias = bias_for(logits, {0.3, -0.2, 0.2, -0.4, -0.1, -0.3, -0.5, -0.6});
  MoeRoutingParams p = v3_params(3, 2);
  const Routed r = route(logits, bias, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 2, 1}));
  for (int32_t id : r.ids) EXPECT_LT(id, 4) << "expert from a dropped group";
  const double s0 = sigmoid(1.5), s2 = sigmoid(0.8), s1 = sigmoid(-0.5);
  const double sum = s0 + s1 + s2 + 1e-20;
  EXPECT_NEAR(r.weights[0], 2.5 * s0 / sum, 1e-6);
  EXPECT_NEAR(r.weights[1], 2.5 * s2 / sum, 1e-6);
  EXPECT_NEAR(r.weights[2], 2.5 * s1 / sum, 1e-6);
}

TEST(MoeRouting, RowsAreIndependent) {
  // Two tokens in one call route as they do one at a time (no state carried across rows).
  const std::vector<float> a = {1.0f, 3.0f, 2.5f, 0.0f, 3.0f, -1.0f};
  const std::vector<float> b = {0.0f, -2.0f, 4.0f, 1.0f, 0.5f, 3.5f};
  std::vector<float> both(a);
  both.insert(both.end(), b.begin(), b.end());
  const MoeRoutingParams p = v2_params(6, 2);
  std::vector<int32_t> ids(4);
  std::vector<float> weights(4);
  moe_route_cpu(both.data(), nullptr, 2, p, ids.data(), weights.data());
  const Routed ra = route(a, {}, p), rb = route(b, {}, p);
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + 2), ra.ids);
  EXPECT_EQ(std::vector<int32_t>(ids.begin() + 2, ids.end()), rb.ids);
  EXPECT_EQ(rb.ids, (std::vector<int32_t>{2, 5}));
  EXPECT_EQ(weights[3], rb.weights[1]);
}

}  // namespace
}  // namespace dshpc
