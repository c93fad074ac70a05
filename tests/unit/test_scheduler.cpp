// Scheduler steps as tables of expected states per iteration. Each row is one schedule() call,
// rendered by the harness as `name:tokens@start_position[block_table]` (`*`: samples), then the
// sequences the plan releases. Rows were written out by hand from the rules in scheduler.h.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "coordinator/scheduler.h"
#include "tests/unit/scheduler_harness.h"

namespace dshpc {
namespace {

using testing::at_us;
using testing::Harness;
using ::testing::HasSubstr;
using testing::kEos;
using testing::kT0;
using testing::make_request;
using testing::small_config;
using Rows = std::vector<std::string>;

// Runs one iteration per expected row (plan, then answer it) and compares the whole table.
Rows run_rows(Harness& h, size_t count) {
  Rows rows;
  for (size_t i = 0; i < count; ++i) rows.push_back(h.step());
  return rows;
}

void expect_empty(const Scheduler& s) {
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.waiting, 0);
  EXPECT_EQ(st.kv_blocks_used, 0);
  for (int r = 0; r < s.num_replicas(); ++r) {
    EXPECT_EQ(s.block_manager(r).usage(), 0.0) << "replica " << r;
    s.block_manager(r).check_invariants();
  }
}

// Three prompts of 10, 3 and 6 tokens under a budget of 8 tokens per step (blocks of 4): the
// 10-token prompt is split 8 + 2, only its last chunk samples; the others join as the budget
// allows, and decodes go first once they exist.
TEST(SchedulerSteps, ChunkedPrefillWithinTheTokenBudget) {
  Harness h(small_config());
  h.submit("a", 10, 3);
  h.submit("b", 3, 2);
  h.submit("c", 6, 2);
  const Rows expected = {
      "a:8@0[0,1]",
      "a:2@8[0,1,2]* b:3@0[3]* c:3@0[4]",
      "a:1@10[0,1,2]* b:1@3[3]* c:3@3[4,5]*",   // b ends here (max_tokens 2)
      "a:1@11[0,1,2]* c:1@6[4,5]* released:b",  // a and c end here
      "idle",
  };
  EXPECT_EQ(run_rows(h, expected.size()), expected);

  // b: the first token flagged, usage on every event, the finish reason on the last.
  const auto& b = h.events_of("b");
  ASSERT_EQ(b.size(), 2u);
  EXPECT_TRUE(b[0].first_token);
  EXPECT_EQ(b[0].finish, FinishReason::kNone);
  EXPECT_EQ(b[0].prompt_tokens, 3);
  EXPECT_EQ(b[0].completion_tokens, 1);
  EXPECT_FALSE(b[1].first_token);
  EXPECT_EQ(b[1].finish, FinishReason::kLength);
  EXPECT_EQ(b[1].completion_tokens, 2);
  EXPECT_EQ(h.tokens_of("a"), (std::vector<int32_t>{500, 501, 502}));
  EXPECT_EQ(h.final_event("a").finish, FinishReason::kLength);
  EXPECT_EQ(h.final_event("c").completion_tokens, 2);
  expect_empty(h.scheduler);
  EXPECT_TRUE(h.scheduler.idle());
}

// Two sequences decode while a 9-token prompt arrives under a budget of 4: every step gives the
// decodes their token first and the prompt the 2 tokens left, until its last chunk samples.
TEST(SchedulerSteps, DecodesArePrioritisedOverPrefill) {
  SchedulerConfig c = small_config();
  c.max_num_batched_tokens = 4;
  Harness h(c);
  h.submit("a", 2, 8);
  h.submit("b", 2, 8);
  EXPECT_EQ(h.step(), "a:2@0[0]* b:2@0[1]*");
  h.submit("c", 9, 2);
  const Rows expected = {
      "a:1@2[0]* b:1@2[1]* c:2@0[2]",          "a:1@3[0]* b:1@3[1]* c:2@2[2]",
      "a:1@4[0,3]* b:1@4[1,4]* c:2@4[2,5]",    "a:1@5[0,3]* b:1@5[1,4]* c:2@6[2,5]",
      "a:1@6[0,3]* b:1@6[1,4]* c:1@8[2,5,6]*",
  };
  EXPECT_EQ(run_rows(h, expected.size()), expected);
  ASSERT_EQ(h.events_of("c").size(), 1u);
  EXPECT_TRUE(h.events_of("c")[0].first_token);
  EXPECT_EQ(h.scheduler.stats().preemptions, 0);
}

// A cache of 4 blocks of 2 tokens for two requests of 3 + 4 tokens: when a needs a fifth block,
// the newer b is preempted (released, back to the queue), and resumes after a ends by
// recomputing its prompt and its two output tokens from position 0.
TEST(SchedulerSteps, PreemptionByRecomputation) {
  SchedulerConfig c = small_config();
  c.kv_block_size = 2;
  c.kv_blocks = 4;
  c.max_model_len = 16;
  Harness h(c);
  h.submit("a", 3, 4);
  h.submit("b", 3, 4);
  EXPECT_EQ(h.step(), "a:3@0[0,1]* b:3@0[2,3]*");
  EXPECT_EQ(h.step(), "a:1@3[0,1]* b:1@3[2,3]*");
  EXPECT_EQ(h.step(), "a:1@4[0,1,3]* released:b");
  EXPECT_EQ(h.last.preempted, (std::vector<std::string>{"b"}));
  EXPECT_EQ(h.scheduler.stats().preemptions, 1);
  EXPECT_EQ(h.scheduler.stats().waiting, 1);
  // b needs 3 blocks to restart and only block 2 is free: it waits; a ends in this step.
  EXPECT_EQ(h.step(), "a:1@5[0,1,3]*");
  EXPECT_EQ(h.final_event("a").finish, FinishReason::kLength);

  EXPECT_EQ(h.plan(), "b:5@0[2,3,1]* released:a");
  const SequenceStep* b = h.last_step_of("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->tokens, (std::vector<int32_t>{100, 101, 102, 500, 501}));  // prompt + output
  EXPECT_EQ(b->prompt_len, 3);
  EXPECT_EQ(b->sample_counter, 2u);  // it generates its third token
  h.answer();
  EXPECT_EQ(h.step(), "b:1@5[2,3,1]*");

  EXPECT_EQ(h.tokens_of("b"), (std::vector<int32_t>{500, 501, 502, 503}));
  const auto& events = h.events_of("b");
  ASSERT_EQ(events.size(), 4u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].first_token, i == 0) << i;
  EXPECT_EQ(events.back().finish, FinishReason::kLength);
  EXPECT_EQ(events.back().prompt_tokens, 3);
  EXPECT_EQ(events.back().completion_tokens, 4);
  expect_empty(h.scheduler);
}

// The victim of a preemption goes to the front of the queue (ahead of c) but does not come back
// in the step that preempted it, even where its first chunk would fit the blocks it left; when it
// does come back it can be preempted again. Budget 2 tokens, 4 blocks of 2.
TEST(SchedulerSteps, PreemptedSequenceWaitsAtTheFrontForTheNextStep) {
  SchedulerConfig c = small_config();
  c.kv_block_size = 2;
  c.kv_blocks = 4;
  c.max_batch_size = 2;
  c.max_num_batched_tokens = 2;
  c.max_model_len = 16;
  Harness h(c);
  h.submit("a", 1, 7);
  h.submit("b", 2, 4);
  h.submit("c", 1, 1);
  const Rows expected = {
      "a:1@0[0]* b:1@0[1]",         "a:1@1[0]* b:1@1[1]*",
      "a:1@2[0,2]* b:1@2[1,3]*",    "a:1@3[0,2]* b:1@3[1,3]*",
      "a:1@4[0,2,3]* released:b",    // b's blocks 3, 1 freed; a takes 3; block 1 stays free
      "a:1@5[0,2,3]* b:1@0[1]",      // b (not c) restarts its 5 tokens, one per step
      "a:1@6[0,2,3,1]* released:b",  // and is preempted again; a ends
      "b:2@0[1] released:a",        "b:2@2[1,3]",
      "b:1@4[1,3,2]* c:1@0[0]*",    "idle",
  };
  EXPECT_EQ(run_rows(h, expected.size()), expected);
  EXPECT_EQ(h.scheduler.stats().preemptions, 2);
  EXPECT_EQ(h.tokens_of("b"), (std::vector<int32_t>{500, 501, 502, 503}));
  EXPECT_EQ(h.final_event("c").finish, FinishReason::kLength);
  expect_empty(h.scheduler);
}

// With no free block and no younger sequence to preempt, a prefill chunk shrinks to the room
// left, or the sequence sits out the step; an older sequence is never preempted for a newer one.
TEST(SchedulerSteps, PrefillShrinksOrWaitsWhenNothingYoungerCanBePreempted) {
  SchedulerConfig c = small_config();
  c.kv_blocks = 4;
  c.max_model_len = 32;
  Harness h(c);
  h.submit("a", 4, 4);
  h.submit("b", 12, 2);
  const Rows expected = {
      "a:4@0[0]* b:4@0[1]",
      "a:1@4[0,2]* b:4@4[1,3]",  // b wanted 7 tokens; one free block holds 4
      "a:1@5[0,2]*",             // b needs a block, none is free
      "a:1@6[0,2]*",             // a ends
      "b:4@8[1,3,2]* released:a",
  };
  EXPECT_EQ(run_rows(h, expected.size()), expected);
  EXPECT_EQ(h.scheduler.stats().preemptions, 0);
}

// A decode that needs a block and finds only older sequences holding them waits for them.
TEST(SchedulerSteps, YoungerDecodeWaitsForOlderOne) {
  SchedulerConfig c = small_config();
  c.kv_blocks = 4;
  c.max_num_batched_tokens = 16;
  Harness h(c);
  h.submit("a", 10, 2);
  h.submit("b", 4, 3);
  const Rows expected = {
      "a:10@0[0,1,2]* b:4@0[3]*",
      "a:1@10[0,1,2]*",  // b sits out: the only block holder it could preempt is older
      "b:1@4[3,2]* released:a",
      "b:1@5[3,2]*",
  };
  EXPECT_EQ(run_rows(h, expected.size()), expected);
  EXPECT_EQ(h.scheduler.stats().preemptions, 0);
  expect_empty(h.scheduler);
}

TEST(SchedulerSteps, MaxBatchSizeBoundsTheRunningSequences) {
  SchedulerConfig c = small_config();
  c.max_batch_size = 2;
  Harness h(c);
  h.submit("a", 2, 1);
  h.submit("b", 2, 3);
  h.submit("c", 2, 1);
  const Rows expected = {
      "a:2@0[0]* b:2@0[1]*",  // a ends
      "b:1@2[1]* c:2@0[2]* released:a",
      "b:1@3[1]* released:c",
      "idle",
  };
  EXPECT_EQ(run_rows(h, expected.size()), expected);
}

TEST(SchedulerCancel, WaitingAndRunningRequestsFreeTheirBlocks) {
  SchedulerConfig c = small_config();
  c.max_batch_size = 2;
  c.max_num_batched_tokens = 16;
  Harness h(c);
  h.submit("a", 5, 10);
  h.submit("b", 3, 10);
  h.submit("c", 3, 10);
  EXPECT_EQ(h.step(), "a:5@0[0,1]* b:3@0[2]*");
  EXPECT_EQ(h.scheduler.block_manager(0).num_used_blocks(), 3);

  // c waits: cancelling it frees nothing and ends it with no tokens.
  std::optional<RequestEvent> ev = h.scheduler.cancel("c");
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->request_id, "c");
  EXPECT_EQ(ev->event.finish, FinishReason::kCancelled);
  EXPECT_EQ(ev->event.prompt_tokens, 3);
  EXPECT_EQ(ev->event.completion_tokens, 0);
  EXPECT_EQ(h.scheduler.stats().waiting, 0);

  // a runs (not in flight): its two blocks return at once.
  ev = h.scheduler.cancel("a");
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->event.finish, FinishReason::kCancelled);
  EXPECT_EQ(ev->event.completion_tokens, 1);
  EXPECT_EQ(h.scheduler.block_manager(0).num_used_blocks(), 1);
  EXPECT_FALSE(h.scheduler.cancel("a").has_value());  // already gone
  EXPECT_FALSE(h.scheduler.cancel("never").has_value());

  // b is cancelled while its step is in flight; the step's result for it is dropped.
  EXPECT_EQ(h.plan(), "b:1@3[2]* released:a");  // c never ran, so it is not released
  ev = h.scheduler.cancel("b");
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->event.completion_tokens, 1);
  expect_empty(h.scheduler);
  h.answer();
  EXPECT_EQ(h.events_of("b").size(), 1u);  // only the first token's event
  EXPECT_TRUE(h.scheduler.idle());
  EXPECT_EQ(h.scheduler.schedule(kT0).step_id, -1);
}

TEST(SchedulerSubmit, QueueBeyondMaxQueueLenIsResourceExhausted) {
  SchedulerConfig c = small_config();
  c.max_queue_len = 2;
  c.max_batch_size = 1;
  Harness h(c);
  h.submit("a", 2, 4);
  h.submit("b", 2, 4);
  Status s = h.scheduler.submit(make_request("c", 2, 4));
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "the queue is full: 2 requests are waiting (max_queue_len 2)");
  EXPECT_EQ(h.scheduler.sequence_id_of("c"), -1);
  EXPECT_EQ(h.step(), "a:2@0[0]*");  // a leaves the queue
  h.submit("c", 2, 4);
  EXPECT_EQ(h.scheduler.submit(make_request("d", 2, 4)).code(), StatusCode::kResourceExhausted);
}

TEST(SchedulerSubmit, RequestsThatCanNeverFitAreInvalid) {
  SchedulerConfig c = small_config();
  c.kv_block_size = 4;
  c.kv_blocks = 2;  // 8 slots
  c.max_model_len = 16;
  Scheduler s(c, 1, {kEos});
  // The cache holds prompt + max_tokens − 1 tokens (the last one is never fed back).
  EXPECT_TRUE(s.submit(make_request("fits", 5, 4)).ok());
  Status st = s.submit(make_request("big", 5, 5));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(),
            "the prompt (5 tokens) plus max_tokens (5) needs 3 KV cache blocks of 4 tokens; a "
            "replica's cache holds 2 blocks");

  c.kv_blocks = 8;
  Scheduler t(c, 1, {kEos});
  EXPECT_TRUE(t.submit(make_request("context", 10, 6)).ok());  // exactly the context
  st = t.submit(make_request("long", 10, 7));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(),
            "the prompt (10 tokens) plus max_tokens (7) is 17 tokens, more than the model's "
            "context of 16 tokens");
  EXPECT_THAT(t.submit(make_request("empty", 0, 4)).message(), HasSubstr("prompt is empty"));
  EXPECT_THAT(t.submit(make_request("zero", 2, 0)).message(),
              HasSubstr("max_tokens (0) must be at least 1"));
  EXPECT_THAT(t.submit(make_request("context", 2, 2)).message(), HasSubstr("already in use"));
  EXPECT_THAT(t.submit(make_request("", 2, 2)).message(), HasSubstr("request_id is empty"));
  EXPECT_EQ(t.stats().waiting, 1);
}

// A request of exactly the model's context runs to the end of it.
TEST(SchedulerStop, ContextLengthEndsWithLength) {
  SchedulerConfig c = small_config();
  c.max_model_len = 8;
  c.max_num_batched_tokens = 16;
  Harness h(c);
  h.submit("a", 5, 3);
  h.script("a", {kEos, kEos, kEos});
  GenerationRequest r = make_request("x", 5, 3);
  r.sampling.ignore_eos = true;
  h.submit(std::move(r));
  h.script("x", {kEos, kEos, kEos});
  for (int i = 0; i < 3; ++i) h.step();
  EXPECT_EQ(h.final_event("a").finish, FinishReason::kStop);  // EOS at once
  EXPECT_EQ(h.final_event("a").completion_tokens, 1);
  EXPECT_EQ(h.final_event("x").finish, FinishReason::kLength);
  EXPECT_EQ(h.final_event("x").prompt_tokens + h.final_event("x").completion_tokens, 8);
  EXPECT_EQ(h.plan(), "idle");
}

TEST(SchedulerStop, EosStopTokensMaxTokensAndDeadlines) {
  SchedulerConfig c = small_config();
  c.max_num_batched_tokens = 32;
  c.max_batch_size = 8;
  Harness h(c);
  h.submit("eos", 2, 5);
  h.script("eos", {9, kEos});
  GenerationRequest ignore = make_request("ignore", 2, 3);
  ignore.sampling.ignore_eos = true;
  h.submit(std::move(ignore));
  h.script("ignore", {kEos, kEos, kEos});
  GenerationRequest stop = make_request("stop", 2, 5);
  stop.sampling.stop_token_ids = {42};
  stop.sampling.ignore_eos = true;  // stop ids still apply
  h.submit(std::move(stop));
  h.script("stop", {kEos, 42});
  h.submit("length", 2, 2);
  GenerationRequest late = make_request("deadline", 2, 5);
  late.deadline = at_us(300);
  h.submit(std::move(late));

  h.step(at_us(100));
  h.step(at_us(200));
  for (const char* id : {"eos", "stop", "length"}) {
    EXPECT_EQ(h.events_of(id).size(), 2u) << id;
    EXPECT_EQ(h.final_event(id).completion_tokens, 2) << id;
  }
  EXPECT_EQ(h.final_event("eos").finish, FinishReason::kStop);
  EXPECT_EQ(h.final_event("eos").tokens[0].token, kEos);  // the ending token is reported
  EXPECT_EQ(h.final_event("stop").finish, FinishReason::kStop);
  EXPECT_EQ(h.final_event("length").finish, FinishReason::kLength);
  EXPECT_EQ(h.final_event("ignore").finish, FinishReason::kNone);
  EXPECT_EQ(h.final_event("deadline").finish, FinishReason::kNone);

  // The deadline passes while the step runs: the request ends with the token it got.
  EXPECT_EQ(h.plan(at_us(250)), "ignore:1@3[1]* deadline:1@3[4]* released:eos,stop,length");
  h.answer(at_us(300));
  EXPECT_EQ(h.final_event("ignore").finish, FinishReason::kLength);
  EXPECT_EQ(h.final_event("ignore").completion_tokens, 3);
  EXPECT_EQ(h.final_event("deadline").finish, FinishReason::kTimeout);
  EXPECT_EQ(h.final_event("deadline").tokens.size(), 1u);  // the token sampled in time
  EXPECT_EQ(h.final_event("deadline").completion_tokens, 3);
  expect_empty(h.scheduler);
}

TEST(SchedulerStop, DeadlineWhileWaitingEndsBeforeRunning) {
  SchedulerConfig c = small_config();
  c.max_batch_size = 1;
  Harness h(c);
  h.submit("a", 2, 8);
  GenerationRequest w = make_request("w", 2, 8);
  w.deadline = at_us(50);
  h.submit(std::move(w));
  EXPECT_EQ(h.step(at_us(10)), "a:2@0[0]*");
  EXPECT_EQ(h.last.wake_at, at_us(50));
  EXPECT_TRUE(h.events_of("w").empty());
  EXPECT_EQ(h.step(at_us(50)), "a:1@2[0]*");
  ASSERT_EQ(h.last.events.size(), 1u);
  EXPECT_EQ(h.last.events[0].request_id, "w");
  EXPECT_EQ(h.final_event("w").finish, FinishReason::kTimeout);
  EXPECT_EQ(h.final_event("w").completion_tokens, 0);
  EXPECT_EQ(h.scheduler.stats().waiting, 0);
}

// The deployment guide's dynamic batching: an idle replica starts when a preferred size is
// reached or the oldest request has waited max_queue_delay_us; a busy one admits every step.
TEST(SchedulerDynamicBatching, IdleReplicaWaitsForPreferredSizeOrQueueDelay) {
  SchedulerConfig c = small_config();
  c.max_batch_size = 8;
  c.max_num_batched_tokens = 64;
  c.preferred_batch_sizes = {2, 4};
  c.max_queue_delay_us = 1000;
  {
    Harness h(c);
    h.submit("a", 2, 4, at_us(0));
    EXPECT_EQ(h.plan(at_us(0)), "idle");
    EXPECT_EQ(h.last.wake_at, at_us(1000));
    EXPECT_EQ(h.plan(at_us(999)), "idle");
    EXPECT_EQ(h.plan(at_us(1000)), "a:2@0[0]*");  // the delay ran out
  }
  {
    Harness h(c);
    h.submit("a", 2, 4, at_us(0));
    EXPECT_EQ(h.plan(at_us(500)), "idle");
    h.submit("b", 2, 4, at_us(600));
    EXPECT_EQ(h.step(at_us(600)), "a:2@0[0]* b:2@0[1]*");  // preferred size 2 reached
    h.submit("c", 2, 4, at_us(700));
    EXPECT_EQ(h.step(at_us(700)), "a:1@2[0]* b:1@2[1]* c:2@0[2]*");  // joins a busy replica
  }
  {
    Harness h(c);
    for (const char* id : {"a", "b", "c"}) h.submit(id, 2, 4, at_us(0));
    EXPECT_EQ(h.step(at_us(10)), "a:2@0[0]* b:2@0[1]*");  // the largest preferred size ≤ 3
    EXPECT_EQ(h.step(at_us(20)), "a:1@2[0]* b:1@2[1]* c:2@0[2]*");
  }
  {
    c.preferred_batch_sizes = {};
    c.max_batch_size = 2;
    c.max_num_batched_tokens = 8;
    Harness h(c);
    h.submit("a", 2, 4, at_us(0));
    EXPECT_EQ(h.plan(at_us(10)), "idle");
    h.submit("b", 2, 4, at_us(20));
    EXPECT_EQ(h.plan(at_us(20)), "a:2@0[0]* b:2@0[1]*");  // a full batch never waits
  }
}

// Requests go to the replica with the least load, Σ (prompt + max_tokens); each replica has its
// own blocks, so both start at block 0.
TEST(SchedulerDataParallel, LeastLoadedReplicaTakesTheRequest) {
  SchedulerConfig c = small_config();
  c.max_num_batched_tokens = 16;
  Harness h(c, /*replicas=*/2);
  h.submit("a", 10, 10);  // tie → replica 0; loads 20, 0
  h.submit("b", 2, 2);    // → 1; 20, 4
  h.submit("c", 4, 4);    // → 1; 20, 12
  h.submit("d", 5, 5);    // → 1; 20, 22
  h.submit("e", 1, 1);    // → 0; 22, 22
  EXPECT_EQ(h.scheduler.replica_of("a"), 0);
  EXPECT_EQ(h.scheduler.replica_of("b"), 1);
  EXPECT_EQ(h.scheduler.replica_of("c"), 1);
  EXPECT_EQ(h.scheduler.replica_of("d"), 1);
  EXPECT_EQ(h.scheduler.replica_of("e"), 0);
  EXPECT_EQ(h.step(), "r0: a:10@0[0,1,2]* e:1@0[3]* | r1: b:2@0[0]* c:4@0[1]* d:5@0[2,3]*");
  // e ended (max_tokens 1): replica 0's load is back to 20, below replica 1's 22.
  EXPECT_EQ(h.scheduler.stats().replicas[0].load, 20);
  EXPECT_EQ(h.scheduler.stats().replicas[1].load, 22);
  h.submit("f", 3, 3);
  EXPECT_EQ(h.scheduler.replica_of("f"), 0);
  EXPECT_EQ(h.step(),
            "r0: a:1@10[0,1,2]* f:3@0[4]* released:e | r1: b:1@2[0]* c:1@4[1,4]* d:1@5[2,3]*");
  EXPECT_EQ(h.step(), "r0: a:1@11[0,1,2]* f:1@3[4]* | r1: c:1@5[1,4]* d:1@6[2,3]* released:b");
}

TEST(SchedulerDataParallel, OnlyOneReplicaBusyGivesAnEmptyPlanForTheOther) {
  Harness h(small_config(), 2);
  h.submit("a", 2, 2);
  EXPECT_EQ(h.step(), "r0: a:2@0[0]* | r1: -");
  EXPECT_EQ(h.last.plans.size(), 2u);
  EXPECT_TRUE(h.last.plans[1].sequences.empty());
}

TEST(SchedulerSampling, ParametersSeedAndCounterAreCopiedIntoEachStep) {
  Harness h(small_config());
  GenerationRequest r = make_request("seeded", 3, 4);
  r.sampling.temperature = 0.7f;
  r.sampling.top_k = 40;
  r.sampling.top_p = 0.9f;
  r.sampling.seed = 42;
  r.sampling.presence_penalty = 0.5f;
  r.sampling.frequency_penalty = 0.25f;
  r.sampling.repetition_penalty = 1.1f;
  r.sampling.top_logprobs = 3;
  h.submit(std::move(r));
  h.submit("unseeded", 2, 4);

  for (uint64_t counter = 0; counter < 3; ++counter) {
    h.plan();
    const SequenceStep* s = h.last_step_of("seeded");
    ASSERT_NE(s, nullptr);
    EXPECT_FLOAT_EQ(s->sampling.temperature, 0.7f);
    EXPECT_EQ(s->sampling.top_k, 40);
    EXPECT_FLOAT_EQ(s->sampling.top_p, 0.9f);
    EXPECT_EQ(s->sampling.seed, 42u);
    EXPECT_FLOAT_EQ(s->presence_penalty, 0.5f);
    EXPECT_FLOAT_EQ(s->frequency_penalty, 0.25f);
    EXPECT_FLOAT_EQ(s->repetition_penalty, 1.1f);
    EXPECT_EQ(s->top_logprobs, 3);
    EXPECT_EQ(s->prompt_len, 3);
    EXPECT_EQ(s->sample_counter, counter);
    EXPECT_FALSE(s->all_logits);
    const SequenceStep* u = h.last_step_of("unseeded");
    ASSERT_NE(u, nullptr);
    EXPECT_EQ(u->sampling.seed, derive_seed("unseeded"));
    EXPECT_EQ(u->top_logprobs, -1);
    h.answer();
  }
  EXPECT_EQ(derive_seed("unseeded"), derive_seed(std::string("unseeded")));
  EXPECT_NE(derive_seed("req-1"), derive_seed("req-2"));
}

TEST(SchedulerResults, LogprobsTravelIntoTheEvent) {
  Scheduler s(small_config(), 1, {kEos});
  ASSERT_TRUE(s.submit(make_request("a", 2, 4)).ok());
  ScheduledStep step = s.schedule(kT0);
  ASSERT_EQ(step.plans[0].sequences.size(), 1u);
  SampledToken t;
  t.token = 77;
  t.logprob = -0.5f;
  t.top = {{77, -0.5f}, {78, -1.5f}};
  // The StepOutput overload: the cluster's results as they come.
  std::vector<StepOutput> outputs(1);
  outputs[0].samples = {t};
  std::vector<RequestEvent> events = s.on_step_result(step.step_id, outputs, kT0);
  ASSERT_EQ(events.size(), 1u);
  ASSERT_EQ(events[0].event.tokens.size(), 1u);
  const GeneratedToken& g = events[0].event.tokens[0];
  EXPECT_EQ(g.token, 77);
  EXPECT_FLOAT_EQ(g.logprob, -0.5f);
  ASSERT_EQ(g.top_logprobs.size(), 2u);
  EXPECT_EQ(g.top_logprobs[1].token, 78);
  EXPECT_FLOAT_EQ(g.top_logprobs[1].logprob, -1.5f);
}

// Several steps may be outstanding: a sequence in flight is left out of the next step, and
// results may come back in any order.
TEST(SchedulerInFlight, SequencesInFlightAreNotScheduledAgain) {
  Harness h(small_config());
  h.submit("a", 2, 4);
  EXPECT_EQ(h.plan(), "a:2@0[0]*");
  const ScheduledStep first = h.last;
  EXPECT_EQ(h.plan(), "idle");  // a is in flight
  EXPECT_EQ(h.scheduler.stats().steps_in_flight, 1);
  h.submit("b", 2, 4);
  EXPECT_EQ(h.plan(), "b:2@0[1]*");
  h.answer();  // the second step's result first
  h.last = first;
  h.answer();
  EXPECT_EQ(h.scheduler.stats().steps_in_flight, 0);
  EXPECT_EQ(h.step(), "a:1@2[0]* b:1@2[1]*");
}

// A step that failed to run gives back what it reserved; its sequences are planned again from
// where the cache really is.
TEST(SchedulerInFlight, AbortedStepIsPlannedAgain) {
  SchedulerConfig c = small_config();
  c.max_num_batched_tokens = 4;
  Harness h(c);
  h.submit("a", 6, 3);
  EXPECT_EQ(h.plan(), "a:4@0[0]");
  h.scheduler.abort_step(h.last.step_id);
  EXPECT_EQ(h.scheduler.block_manager(0).num_used_blocks(), 0);
  EXPECT_EQ(h.step(), "a:4@0[1]");  // block 0 went to the back of the free list
  EXPECT_EQ(h.plan(), "a:2@4[1,2]*");
  h.scheduler.abort_step(h.last.step_id);
  EXPECT_EQ(h.scheduler.block_manager(0).num_slots(h.scheduler.sequence_id_of("a")), 4);
  EXPECT_EQ(h.step(), "a:2@4[1,3]*");
  EXPECT_TRUE(h.events_of("a")[0].first_token);
}

TEST(SchedulerCancel, AbortAllEndsEveryRequestWithTheError) {
  SchedulerConfig c = small_config();
  c.max_batch_size = 1;
  Harness h(c);
  h.submit("a", 2, 8);
  h.submit("b", 2, 8);
  EXPECT_EQ(h.step(), "a:2@0[0]*");
  EXPECT_EQ(h.plan(), "a:1@2[0]*");  // in flight when the job goes down
  const std::vector<RequestEvent> events = h.scheduler.abort_all(unavailable("rank 3 died"));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].request_id, "a");
  EXPECT_EQ(events[1].request_id, "b");
  for (const RequestEvent& e : events) {
    EXPECT_EQ(e.event.finish, FinishReason::kError);
    EXPECT_EQ(e.event.error.code(), StatusCode::kUnavailable);
    EXPECT_EQ(e.event.error.message(), "rank 3 died");
  }
  EXPECT_EQ(events[0].event.completion_tokens, 1);
  expect_empty(h.scheduler);
  EXPECT_TRUE(h.scheduler.idle());
}

using SchedulerDeathTest = ::testing::Test;

TEST_F(SchedulerDeathTest, ResultOfAStepNotInFlightStops) {
  Harness h(small_config());
  h.submit("a", 2, 4);
  h.step();
  std::vector<std::vector<SampledToken>> samples(1);
  samples[0].resize(1);
  EXPECT_DEATH(h.scheduler.on_step_result(h.last.step_id, samples, kT0), "not in flight");
}

TEST_F(SchedulerDeathTest, ResultWithTheWrongNumberOfSamplesStops) {
  Harness h(small_config());
  h.submit("a", 2, 4);
  h.plan();
  std::vector<std::vector<SampledToken>> samples(1);
  EXPECT_DEATH(h.scheduler.on_step_result(h.last.step_id, samples, kT0), "samples of replica 0");
}

}  // namespace
}  // namespace dshpc
