// Scheduler under seeded random traffic (arrivals, cancels, EOS, deadlines) with a cache small
// enough to preempt: after every step, the plans are checked against a mirror of every request
// (its tokens and how many of them the cache holds), the block managers against their
// invariants, and the events against the request's limits; at the end every request has ended
// exactly once and every block is free.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "coordinator/scheduler.h"
#include "tests/unit/scheduler_harness.h"

namespace dshpc {
namespace {

using testing::at_us;
using testing::kEos;
using testing::make_request;

struct Mirror {
  std::vector<int32_t> tokens;  // prompt, then every sampled token
  int64_t prompt_len = 0;
  int64_t max_tokens = 0;
  int64_t computed = 0;  // tokens the cache holds, as the plans imply
  int replica = -1;
  int64_t events = 0;
  bool ended = false;
};

struct Traffic {
  int replicas = 1;
  SchedulerConfig config;
  uint32_t seed = 1;
  int iterations = 400;
};

void run_traffic(const Traffic& t) {
  std::mt19937 rng(t.seed);
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

  const SchedulerConfig& c = t.config;
  Scheduler s(c, t.replicas, {kEos});
  std::map<std::string, Mirror> mirror;
  std::map<int64_t, std::string> names;
  int submitted = 0;

  auto on_events = [&](const std::vector<RequestEvent>& events) {
    for (const RequestEvent& e : events) {
      Mirror& m = mirror.at(e.request_id);
      ASSERT_FALSE(m.ended) << e.request_id << " got an event after its final one";
      for (const GeneratedToken& g : e.event.tokens) m.tokens.push_back(g.token);
      const int64_t generated = static_cast<int64_t>(m.tokens.size()) - m.prompt_len;
      EXPECT_EQ(e.event.completion_tokens, generated) << e.request_id;
      EXPECT_EQ(e.event.prompt_tokens, m.prompt_len) << e.request_id;
      EXPECT_LE(generated, m.max_tokens) << e.request_id;
      EXPECT_LE(m.prompt_len + generated, c.max_model_len) << e.request_id;
      EXPECT_EQ(e.event.first_token, !e.event.tokens.empty() && generated == 1) << e.request_id;
      ++m.events;
      m.ended = e.event.finish != FinishReason::kNone;
    }
  };

  auto check_step = [&](const ScheduledStep& step) {
    ASSERT_EQ(static_cast<int>(step.plans.size()), t.replicas);
    for (const std::string& id : step.preempted) mirror.at(id).computed = 0;
    for (int r = 0; r < t.replicas; ++r) {
      const StepPlan& plan = step.plans[r];
      EXPECT_LE(plan.num_tokens(), c.max_num_batched_tokens);
      EXPECT_LE(static_cast<int64_t>(plan.sequences.size()), c.max_batch_size);
      std::set<int32_t> blocks_in_step;
      for (const SequenceStep& seq : plan.sequences) {
        const std::string& id = names.at(seq.sequence_id);
        const Mirror& m = mirror.at(id);
        SCOPED_TRACE(id);
        EXPECT_EQ(m.replica, r);
        const int64_t n = static_cast<int64_t>(seq.tokens.size());
        const int64_t end = seq.start_position + n;
        ASSERT_GE(n, 1);
        EXPECT_EQ(seq.start_position, m.computed);
        ASSERT_LE(end, static_cast<int64_t>(m.tokens.size()));
        EXPECT_EQ(seq.tokens, std::vector<int32_t>(m.tokens.begin() + seq.start_position,
                                                   m.tokens.begin() + end));
        EXPECT_EQ(seq.sample, end == static_cast<int64_t>(m.tokens.size()));
        EXPECT_EQ(seq.sample_counter, static_cast<uint64_t>(m.tokens.size() - m.prompt_len));
        EXPECT_EQ(seq.prompt_len, m.prompt_len);
        EXPECT_LE(end, c.max_model_len);
        EXPECT_EQ(static_cast<int64_t>(seq.block_table.size()),
                  (end + c.kv_block_size - 1) / c.kv_block_size);
        for (int32_t b : seq.block_table) {
          EXPECT_TRUE(b >= 0 && b < c.kv_blocks);
          EXPECT_TRUE(blocks_in_step.insert(b).second) << "block " << b << " in two tables";
        }
      }
    }
  };

  auto answer = [&](const ScheduledStep& step, TimePoint now) {
    std::vector<std::vector<SampledToken>> samples(step.plans.size());
    for (size_t r = 0; r < step.plans.size(); ++r) {
      for (const SequenceStep& seq : step.plans[r].sequences) {
        Mirror& m = mirror.at(names.at(seq.sequence_id));
        m.computed = seq.start_position + static_cast<int64_t>(seq.tokens.size());
        SampledToken token;
        token.token = chance(0.08) ? kEos : uniform(10, 99);
        samples[r].push_back(token);
      }
    }
    on_events(s.on_step_result(step.step_id, samples, now));
  };

  auto check_state = [&] {
    for (int r = 0; r < t.replicas; ++r) s.block_manager(r).check_invariants();
    int64_t live = 0;
    for (const auto& [id, m] : mirror) live += !m.ended;
    const SchedulerStats st = s.stats();
    EXPECT_EQ(st.running + st.waiting, live);
  };

  const int drain_limit = 2000;
  for (int i = 0; i < t.iterations + drain_limit; ++i) {
    const bool arrivals = i < t.iterations;
    const TimePoint now = at_us(100 * i);
    if (arrivals) {
      for (int k = uniform(0, 2); k > 0; --k) {
        const std::string id = "q" + std::to_string(submitted++);
        const int prompt = uniform(1, 24);
        GenerationRequest r = make_request(id, prompt, uniform(1, 16), now);
        for (int32_t& tok : r.prompt_ids) tok = uniform(10, 99);
        r.sampling.ignore_eos = chance(0.2);
        if (chance(0.2)) r.sampling.stop_token_ids = {uniform(10, 99)};
        if (chance(0.1)) r.deadline = now + std::chrono::microseconds(uniform(100, 3000));
        Mirror m;
        m.tokens = r.prompt_ids;
        m.prompt_len = prompt;
        m.max_tokens = r.max_tokens;
        const Status st = s.submit(std::move(r));
        if (!st.ok()) {
          EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.to_string();
          continue;
        }
        m.replica = s.replica_of(id);
        names[s.sequence_id_of(id)] = id;
        mirror[id] = m;
      }
      if (chance(0.05) && !mirror.empty()) {
        auto it = mirror.begin();
        std::advance(it, uniform(0, static_cast<int>(mirror.size()) - 1));
        std::optional<RequestEvent> ev = s.cancel(it->first);
        EXPECT_EQ(ev.has_value(), !it->second.ended) << it->first;
        if (ev) on_events({*ev});
      }
    } else if (s.idle()) {
      break;
    }
    const ScheduledStep step = s.schedule(now);
    on_events(step.events);
    check_step(step);
    if (step.has_work() && chance(0.05)) {
      // Cancel one of the step's sequences while the step is in flight: its result is dropped.
      const auto& seqs = step.plans[uniform(0, t.replicas - 1)].sequences;
      if (!seqs.empty()) {
        const std::string& id =
            names.at(seqs[uniform(0, static_cast<int>(seqs.size()) - 1)].sequence_id);
        std::optional<RequestEvent> ev = s.cancel(id);
        ASSERT_TRUE(ev.has_value());
        on_events({*ev});
      }
    }
    if (step.has_work()) answer(step, now);
    check_state();
    if (::testing::Test::HasFailure()) return;
  }

  EXPECT_TRUE(s.idle()) << "not drained";
  for (const auto& [id, m] : mirror) EXPECT_TRUE(m.ended) << id << " never ended";
  for (int r = 0; r < t.replicas; ++r) EXPECT_EQ(s.block_manager(r).usage(), 0.0);
  EXPECT_GT(submitted, t.iterations / 2);
}

SchedulerConfig tight_cache() {
  SchedulerConfig c;
  c.max_batch_size = 6;
  c.max_num_batched_tokens = 16;
  c.max_queue_len = 12;
  c.kv_block_size = 4;
  c.kv_blocks = 12;  // 48 slots: a few requests of up to 24 + 16 tokens
  c.max_model_len = 48;
  return c;
}

TEST(SchedulerRandomTraffic, OneReplicaWithATightCache) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    run_traffic({.replicas = 1, .config = tight_cache(), .seed = seed});
  }
}

TEST(SchedulerRandomTraffic, TwoReplicasWithDynamicBatching) {
  SchedulerConfig c = tight_cache();
  c.preferred_batch_sizes = {2, 4};
  c.max_queue_delay_us = 500;
  c.kv_block_size = 2;
  c.kv_blocks = 24;
  for (uint32_t seed : {4u, 5u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    run_traffic({.replicas = 2, .config = c, .seed = seed});
  }
}

TEST(SchedulerRandomTraffic, PreemptionHappensAndEveryoneFinishes) {
  // The same traffic as above on one replica, counted: the tight cache must make it preempt,
  // or the test above would not exercise recomputation.
  SchedulerConfig c = tight_cache();
  Scheduler s(c, 1, {kEos});
  int64_t step_count = 0;
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(s.submit(make_request("p" + std::to_string(i), 20, 16)).ok());
  }
  while (!s.idle() && step_count < 500) {
    ScheduledStep step = s.schedule(at_us(step_count));
    ASSERT_TRUE(step.has_work());
    std::vector<std::vector<SampledToken>> samples(
        1, std::vector<SampledToken>(step.plans[0].sequences.size()));
    for (SampledToken& tok : samples[0]) tok.token = 50;
    s.on_step_result(step.step_id, samples, at_us(step_count));
    s.block_manager(0).check_invariants();
    ++step_count;
  }
  EXPECT_TRUE(s.idle());
  EXPECT_GT(s.stats().preemptions, 0);
}

}  // namespace
}  // namespace dshpc
