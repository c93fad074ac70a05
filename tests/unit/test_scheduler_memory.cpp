// The scheduler under memory pressure (scheduler.h, "memory pressure"): a step whose workspace
// did not fit is aborted and planned again under a lower cap on tokens per step, the cap rises
// again after successes, decodes count against it, the releases of an aborted step are not lost,
// and a step of one token that does not fit ends its request with an error that says why. Rows
// are rendered by the harness as in test_scheduler.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "coordinator/scheduler.h"
#include "tests/unit/scheduler_harness.h"

namespace dshpc {
namespace {

using testing::Harness;
using ::testing::HasSubstr;
using testing::small_config;
using Rows = std::vector<std::string>;

const Status kOutOfMemory = resource_exhausted("rank 1 could not reserve the workspace");

// Tokens of the last planned step (one replica).
int64_t last_tokens(const Harness& h) {
  int64_t tokens = 0;
  for (const StepPlan& plan : h.last.plans) tokens = std::max(tokens, plan.num_tokens());
  return tokens;
}

TEST(SchedulerMemory, FailedStepIsRetriedUnderHalfItsTokens) {
  Harness h(small_config());  // 8 tokens per step, blocks of 4
  h.submit("a", 4, 2);
  h.submit("b", 4, 2);
  EXPECT_EQ(h.plan(), "a:4@0[0]* b:4@0[1]*");
  const MemoryPressure pressure = h.scheduler.on_step_out_of_memory(h.last.step_id, kOutOfMemory);
  EXPECT_EQ(pressure.failed_tokens, 8);
  EXPECT_EQ(pressure.token_cap, 4);
  EXPECT_TRUE(pressure.events.empty());
  EXPECT_EQ(h.scheduler.block_manager(0).num_used_blocks(), 0);  // nothing is held for it
  EXPECT_TRUE(h.events_of("a").empty());

  // Both requests run again, never more than 4 tokens per step, and lose nothing.
  const Rows expected = {
      "a:4@0[2]*",
      "a:1@4[2,3]* b:3@0[4]",
      "b:1@3[4]* released:a",  // a ended (max_tokens 2)
      "b:1@4[4,5]*",
      "idle",
  };
  Rows rows;
  for (size_t i = 0; i < expected.size(); ++i) {
    rows.push_back(h.step());
    EXPECT_LE(last_tokens(h), 4) << rows.back();
  }
  EXPECT_EQ(rows, expected);
  EXPECT_EQ(h.tokens_of("a"), (std::vector<int32_t>{500, 501}));
  EXPECT_EQ(h.tokens_of("b"), (std::vector<int32_t>{500, 501}));
  EXPECT_EQ(h.final_event("b").finish, FinishReason::kLength);
  const SchedulerStats stats = h.scheduler.stats();
  EXPECT_EQ(stats.memory_failures, 1);
  EXPECT_EQ(stats.step_token_cap, 4);
  EXPECT_EQ(stats.kv_blocks_used, 0);
  EXPECT_TRUE(h.scheduler.idle());
}

TEST(SchedulerMemory, CapRisesByAQuarterAfterEnoughSuccesses) {
  SchedulerConfig c = small_config();
  c.max_num_batched_tokens = 16;
  c.max_model_len = 256;
  c.kv_blocks = 64;
  Harness h(c);
  h.submit("long", 16, 200);
  EXPECT_EQ(h.plan(), "long:16@0[0,1,2,3]*");
  EXPECT_EQ(h.scheduler.on_step_out_of_memory(h.last.step_id, kOutOfMemory).token_cap, 8);
  for (int64_t i = 0; i < Scheduler::kCapRaiseAfterSteps - 1; ++i) h.step();
  EXPECT_EQ(h.scheduler.step_token_cap(), 8);
  h.step();
  EXPECT_EQ(h.scheduler.step_token_cap(), 10);  // 8 + 8 / 4
  for (int64_t i = 0; i < Scheduler::kCapRaiseAfterSteps; ++i) h.step();
  EXPECT_EQ(h.scheduler.step_token_cap(), 12);
  EXPECT_EQ(h.scheduler.stats().memory_failures, 1);
}

TEST(SchedulerMemory, DecodesCountAgainstTheCapOldestFirst) {
  Harness h(small_config());
  h.submit("a", 2, 6);
  h.submit("b", 2, 6);
  h.submit("c", 2, 6);
  EXPECT_EQ(h.step(), "a:2@0[0]* b:2@0[1]* c:2@0[2]*");
  EXPECT_EQ(h.plan(), "a:1@2[0]* b:1@2[1]* c:1@2[2]*");
  EXPECT_EQ(h.scheduler.on_step_out_of_memory(h.last.step_id, kOutOfMemory).token_cap, 1);
  // One decode per step: the oldest until it ends; the others wait, holding their blocks.
  EXPECT_EQ(h.step(), "a:1@2[0]*");
  EXPECT_EQ(h.step(), "a:1@3[0]*");
  EXPECT_EQ(h.scheduler.stats().running, 3);
  for (int i = 0; i < 3; ++i) h.step();
  EXPECT_EQ(h.final_event("a").finish, FinishReason::kLength);
  EXPECT_EQ(h.step(), "b:1@2[1]* released:a");
  EXPECT_EQ(h.tokens_of("a"), (std::vector<int32_t>{500, 501, 502, 503, 504, 505}));
}

TEST(SchedulerMemory, AbortedStepsReleasesGoWithTheNextStep) {
  Harness h(small_config());
  h.submit("a", 2, 1);
  h.submit("b", 2, 3);
  h.submit("c", 2, 3);
  EXPECT_EQ(h.step(), "a:2@0[0]* b:2@0[1]* c:2@0[2]*");  // a ends
  EXPECT_EQ(h.plan(), "b:1@2[1]* c:1@2[2]* released:a");
  EXPECT_EQ(h.scheduler.on_step_out_of_memory(h.last.step_id, kOutOfMemory).token_cap, 1);
  // The workers never saw that plan: its release of a comes again, with the first step run.
  EXPECT_EQ(h.step(), "b:1@2[1]* released:a");
  EXPECT_EQ(h.step(), "b:1@3[1]*");
}

TEST(SchedulerMemory, OneTokenThatDoesNotFitEndsTheRequestWithTheReason) {
  Harness h(small_config());
  h.submit("a", 1, 4);
  EXPECT_EQ(h.plan(), "a:1@0[0]*");
  const MemoryPressure pressure = h.scheduler.on_step_out_of_memory(h.last.step_id, kOutOfMemory);
  EXPECT_EQ(pressure.token_cap, 1);
  ASSERT_EQ(pressure.events.size(), 1u);
  EXPECT_EQ(pressure.events[0].request_id, "a");
  const GenerationEvent& event = pressure.events[0].event;
  EXPECT_EQ(event.finish, FinishReason::kError);
  EXPECT_EQ(event.error.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(event.error.message(), HasSubstr("does not fit in device memory"));
  EXPECT_THAT(event.error.message(), HasSubstr("rank 1 could not reserve"));
  EXPECT_EQ(h.scheduler.stats().kv_blocks_used, 0);
  EXPECT_TRUE(h.scheduler.idle());
  // The server goes on: the next request runs, one token per step.
  h.submit("b", 2, 1);
  EXPECT_EQ(h.step(), "b:1@0[1] released:a");  // the workers had seen a
  EXPECT_EQ(h.step(), "b:1@1[1]*");
  EXPECT_EQ(h.final_event("b").finish, FinishReason::kLength);
}

}  // namespace
}  // namespace dshpc
