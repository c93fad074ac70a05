#include <gtest/gtest.h>

#include <cmath>

#include "worker/cluster.h"
#include "worker/sampler.h"
#include "worker/step_codec.h"

namespace dshpc {
namespace {

SequenceStep make_seq(int64_t id, int tokens, int start) {
  SequenceStep s;
  s.sequence_id = id;
  for (int i = 0; i < tokens; ++i) s.tokens.push_back(100 + i);
  s.start_position = start;
  s.block_table = {7, 3, static_cast<int32_t>(id)};
  return s;
}

TEST(StepCodec, RoundTripsEveryField) {
  ControlMessage m;
  m.command = ControlCommand::kStep;
  m.step_id = 42;
  m.replica_plans.resize(2);
  SequenceStep s = make_seq(9, 3, 5);
  s.all_logits = true;
  s.sample = false;
  s.sampling.temperature = 0.7f;
  s.sampling.top_k = 40;
  s.sampling.top_p = 0.9f;
  s.sampling.seed = 1234567890123ull;
  s.presence_penalty = 0.5f;
  s.frequency_penalty = -0.25f;
  s.repetition_penalty = 1.1f;
  s.top_logprobs = 5;
  s.prompt_len = 4;
  s.sample_counter = 17;
  m.replica_plans[1].sequences.push_back(s);
  m.replica_plans[1].sequences.push_back(make_seq(10, 1, 0));
  m.replica_plans[1].released_sequences = {3, 4};
  m.replica_plans[1].return_logits = true;

  m.report_figures = true;
  m.next_message_within_s = 12.5;

  ControlMessage d = decode_control(encode_control(m));
  EXPECT_EQ(d.command, ControlCommand::kStep);
  EXPECT_EQ(d.step_id, 42u);
  EXPECT_TRUE(d.report_figures);
  EXPECT_EQ(d.next_message_within_s, 12.5);
  m.report_figures = false;
  EXPECT_FALSE(decode_control(encode_control(m)).report_figures);
  ASSERT_EQ(d.replica_plans.size(), 2u);
  EXPECT_TRUE(d.replica_plans[0].sequences.empty());
  const StepPlan& p = d.replica_plans[1];
  EXPECT_TRUE(p.return_logits);
  EXPECT_EQ(p.released_sequences, (std::vector<int64_t>{3, 4}));
  ASSERT_EQ(p.sequences.size(), 2u);
  const SequenceStep& r = p.sequences[0];
  EXPECT_EQ(r.sequence_id, 9);
  EXPECT_EQ(r.tokens, s.tokens);
  EXPECT_EQ(r.start_position, 5);
  EXPECT_EQ(r.block_table, s.block_table);
  EXPECT_TRUE(r.all_logits);
  EXPECT_FALSE(r.sample);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.7f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.seed, 1234567890123ull);
  EXPECT_FLOAT_EQ(r.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.frequency_penalty, -0.25f);
  EXPECT_FLOAT_EQ(r.repetition_penalty, 1.1f);
  EXPECT_EQ(r.top_logprobs, 5);
  EXPECT_EQ(r.prompt_len, 4);
  EXPECT_EQ(r.sample_counter, 17u);
  EXPECT_TRUE(p.sequences[1].sample);
}

TEST(StepCodec, SamplesRoundTrip) {
  std::vector<SampledToken> samples(2);
  samples[0].token = 5;
  samples[0].logprob = -0.5f;
  samples[0].top = {{5, -0.5f}, {6, -1.5f}};
  samples[1].token = 9;
  auto decoded = decode_samples(encode_samples(samples));
  ASSERT_EQ(decoded.size(), 2u);
  EXPECT_EQ(decoded[0].token, 5);
  EXPECT_EQ(decoded[0].top.size(), 2u);
  EXPECT_EQ(decoded[0].top[1].first, 6);
  EXPECT_FLOAT_EQ(decoded[0].top[1].second, -1.5f);
  EXPECT_EQ(decoded[1].token, 9);
}

TEST(MicroBatches, ContiguousBalancedAndComplete) {
  StepPlan plan;
  plan.return_logits = true;
  plan.released_sequences = {77};
  for (int i = 0; i < 5; ++i) plan.sequences.push_back(make_seq(i, i == 0 ? 20 : 1, 0));
  auto parts = split_micro_batches(plan, 2);
  ASSERT_EQ(parts.size(), 2u);
  // The 20-token prefill fills the first micro-batch's share; the four decodes go to the second.
  EXPECT_EQ(parts[0].sequences.size(), 1u);
  EXPECT_EQ(parts[1].sequences.size(), 4u);
  EXPECT_EQ(parts[0].released_sequences, (std::vector<int64_t>{77}));
  EXPECT_TRUE(parts[1].released_sequences.empty());
  EXPECT_TRUE(parts[1].return_logits);
  // More micro-batches than sequences: one sequence each.
  auto many = split_micro_batches(plan, 8);
  ASSERT_EQ(many.size(), 5u);
  for (size_t i = 0; i < many.size(); ++i) EXPECT_EQ(many[i].sequences[0].sequence_id, (int64_t)i);
  // Equal sizes split evenly.
  StepPlan even;
  for (int i = 0; i < 6; ++i) even.sequences.push_back(make_seq(i, 4, 0));
  auto thirds = split_micro_batches(even, 3);
  ASSERT_EQ(thirds.size(), 3u);
  for (const auto& part : thirds) EXPECT_EQ(part.sequences.size(), 2u);
}

TEST(Sampler, PenaltiesFollowOpenAiAndHf) {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 0.5f};
  std::unordered_map<int32_t, int32_t> output = {{0, 2}, {1, 1}};
  std::unordered_map<int32_t, int32_t> all = {{0, 2}, {1, 1}, {3, 1}};
  apply_penalties(logits.data(), 4, 0.5f, 0.25f, 2.0f, output, all);
  // token 0: 2/2 = 1, then − 0.5 − 0.25·2 = 0
  EXPECT_FLOAT_EQ(logits[0], 0.0f);
  // token 1: −2·2 = −4, then − 0.5 − 0.25 = −4.75
  EXPECT_FLOAT_EQ(logits[1], -4.75f);
  EXPECT_FLOAT_EQ(logits[2], 1.0f);   // unseen
  EXPECT_FLOAT_EQ(logits[3], 0.25f);  // prompt only: repetition penalty, no presence
}

TEST(Sampler, GreedyWithLogprobs) {
  Sampler sampler;
  StepPlan plan;
  plan.sequences.push_back(make_seq(1, 2, 0));
  plan.sequences[0].sampling.temperature = 0.0f;
  plan.sequences[0].top_logprobs = 2;
  sampler.observe(plan);
  std::vector<float> logits = {0.0f, 3.0f, 1.0f};
  SampledToken t = sampler.sample(plan.sequences[0], logits.data(), 3, 0);
  EXPECT_EQ(t.token, 1);
  const double z = std::log(std::exp(0.0) + std::exp(3.0) + std::exp(1.0));
  EXPECT_NEAR(t.logprob, 3.0 - z, 1e-5);
  ASSERT_EQ(t.top.size(), 2u);
  EXPECT_EQ(t.top[0].first, 1);
  EXPECT_EQ(t.top[1].first, 2);
  EXPECT_NEAR(t.top[1].second, 1.0 - z, 1e-5);
}

}  // namespace
}  // namespace dshpc
