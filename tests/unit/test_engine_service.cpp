// EngineService: the scheduler loop with a fake cluster (a StepRunner that returns scripted
// tokens), driven from test threads the way the gateway's I/O threads drive it.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "coordinator/engine_service.h"

namespace dshpc {
namespace {

class CollectingSink : public GenerationSink {
 public:
  void on_event(GenerationEvent event) override {
    std::lock_guard<std::mutex> lock(mutex);
    for (const GeneratedToken& t : event.tokens) tokens.push_back(t.token);
    if (event.finish != FinishReason::kNone) {
      finish = event.finish;
      completion_tokens = event.completion_tokens;
      error = event.error;
      done = true;
      cv.notify_all();
    }
  }
  bool wait(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex);
    return cv.wait_for(lock, timeout, [&] { return done; });
  }
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::kNone;
  int64_t completion_tokens = 0;
  Status error;
  bool done = false;
};

EngineServiceOptions options() {
  EngineServiceOptions o;
  o.scheduler.kv_blocks = 64;
  o.scheduler.kv_block_size = 4;
  o.scheduler.max_model_len = 128;
  o.scheduler.max_batch_size = 8;
  o.scheduler.max_num_batched_tokens = 64;
  o.eos_token_ids = {1};
  o.vocab_size = 100;
  o.keepalive_interval = std::chrono::milliseconds(20);
  return o;
}

// Each sampling sequence gets token 10 + (number of tokens it has generated so far).
std::vector<StepOutput> fake_step(const std::vector<StepPlan>& plans) {
  std::vector<StepOutput> out(plans.size());
  for (size_t r = 0; r < plans.size(); ++r) {
    for (const SequenceStep& s : plans[r].sequences) {
      SampledToken t;
      t.token = 10 + static_cast<int32_t>(s.sample_counter);
      out[r].samples.push_back(t);
    }
  }
  return out;
}

GenerationRequest request(const std::string& id, int max_tokens) {
  GenerationRequest r;
  r.request_id = id;
  r.prompt_ids = {5, 6, 7};
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0.0f;
  return r;
}

// The other ranks hold rank 0 to their long start-up bound until its first control message, so
// the loop sends one as soon as it starts, not one keepalive interval later.
TEST(EngineService, FirstKeepaliveGoesOutAtOnce) {
  EngineServiceOptions o = options();
  o.keepalive_interval = std::chrono::seconds(30);
  EngineService service(o);
  std::atomic<int> keepalives{0};
  service.set_ready(fake_step, [&] { keepalives++; });
  std::thread loop([&] { service.run(); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (keepalives.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(keepalives.load(), 1);
  service.stop();
  loop.join();
}

TEST(EngineService, LoadingRejectsThenServes) {
  EngineService service(options());
  auto sink = std::make_shared<CollectingSink>();
  EXPECT_EQ(service.submit(request("a", 3), sink).code(), StatusCode::kUnavailable);
  EXPECT_EQ(service.status().state, ServiceState::kLoading);

  std::atomic<int> keepalives{0};
  service.set_ready(fake_step, [&] { keepalives++; });
  std::thread loop([&] { service.run(); });
  auto a = std::make_shared<CollectingSink>();
  auto b = std::make_shared<CollectingSink>();
  ASSERT_TRUE(service.submit(request("a", 3), a).ok());
  ASSERT_TRUE(service.submit(request("b", 5), b).ok());
  ASSERT_TRUE(a->wait(std::chrono::seconds(5)));
  ASSERT_TRUE(b->wait(std::chrono::seconds(5)));
  EXPECT_EQ(a->tokens, (std::vector<int32_t>{10, 11, 12}));
  EXPECT_EQ(a->finish, FinishReason::kLength);
  EXPECT_EQ(b->completion_tokens, 5);
  // Idle: the loop proves it is alive to the workers.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_GE(keepalives.load(), 1);
  EXPECT_EQ(service.status().running, 0);
  EXPECT_EQ(service.status().kv_blocks_used, 0);
  service.stop();
  loop.join();
  EXPECT_EQ(service.status().state, ServiceState::kStopped);
}

TEST(EngineService, RejectsTokensOutsideTheVocabulary) {
  EngineService service(options());
  service.set_ready(fake_step, [] {});
  GenerationRequest r = request("x", 2);
  r.prompt_ids.push_back(100);
  Status s = service.submit(r, std::make_shared<CollectingSink>());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("100"), std::string::npos);
}

TEST(EngineService, CancelAndDrainAndStop) {
  EngineService service(options());
  std::mutex gate;
  gate.lock();  // the first step blocks until the test lets it go
  std::atomic<int> steps{0};
  service.set_ready(
      [&](const std::vector<StepPlan>& plans) {
        if (steps++ == 0) {
          gate.lock();
          gate.unlock();
        }
        return fake_step(plans);
      },
      [] {});
  std::thread loop([&] { service.run(); });
  auto slow = std::make_shared<CollectingSink>();
  auto cancelled = std::make_shared<CollectingSink>();
  ASSERT_TRUE(service.submit(request("slow", 4), slow).ok());
  ASSERT_TRUE(service.submit(request("gone", 50), cancelled).ok());
  service.cancel("gone");
  ASSERT_TRUE(cancelled->wait(std::chrono::seconds(5)));
  EXPECT_EQ(cancelled->finish, FinishReason::kCancelled);
  // Draining: new requests are refused, the one in flight completes, then run() returns.
  service.begin_drain();
  EXPECT_EQ(service.submit(request("late", 2), std::make_shared<CollectingSink>()).code(),
            StatusCode::kUnavailable);
  gate.unlock();
  ASSERT_TRUE(slow->wait(std::chrono::seconds(5)));
  EXPECT_EQ(slow->finish, FinishReason::kLength);
  loop.join();
  EXPECT_EQ(service.status().state, ServiceState::kStopped);
}

TEST(EngineService, StopEndsOpenRequestsWithTheError) {
  EngineService service(options());
  std::atomic<bool> release{false};
  service.set_ready(
      [&](const std::vector<StepPlan>& plans) {
        while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return fake_step(plans);
      },
      [] {});
  std::thread loop([&] { service.run(); });
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(service.submit(request("long", 100), sink).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  service.stop(unavailable("rank 3 died"));
  release = true;
  ASSERT_TRUE(sink->wait(std::chrono::seconds(5)));
  loop.join();
  EXPECT_EQ(sink->finish, FinishReason::kError);
  EXPECT_NE(sink->error.message().find("rank 3 died"), std::string::npos);
}

// A cluster whose workspace holds at most 4 tokens per step: the loop shrinks the batch and
// every request completes with the tokens it would have had.
TEST(EngineService, OutOfMemoryStepsShrinkTheBatchAndLoseNothing) {
  struct Observer : StepObserver {
    void on_memory_failure(const MemoryFailureReport& report) override {
      failures.push_back(report);
    }
    std::vector<MemoryFailureReport> failures;  // the loop thread only, read after join
  } observer;
  EngineService service(options());
  service.set_observer(&observer);
  std::atomic<int64_t> largest_run{0};
  service.set_ready(
      [&](const std::vector<StepPlan>& plans) -> StatusOr<std::vector<StepOutput>> {
        for (const StepPlan& plan : plans) {
          if (plan.num_tokens() > 4) return resource_exhausted("rank 1: workspace too small");
          largest_run = std::max<int64_t>(largest_run, plan.num_tokens());
        }
        return fake_step(plans);
      },
      [] {});
  // Every request is queued before the loop starts, so that its first step holds more than 4
  // tokens whatever the timing (submitted one by one to a running loop, each could be stepped
  // alone and no step would ever fail).
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (int i = 0; i < 6; ++i) {
    sinks.push_back(std::make_shared<CollectingSink>());
    ASSERT_TRUE(service.submit(request("r" + std::to_string(i), 5), sinks.back()).ok());
  }
  std::thread loop([&] { service.run(); });
  for (const auto& sink : sinks) {
    ASSERT_TRUE(sink->wait(std::chrono::seconds(10)));
    EXPECT_EQ(sink->finish, FinishReason::kLength);
    EXPECT_EQ(sink->tokens, (std::vector<int32_t>{10, 11, 12, 13, 14}));
  }
  const ServiceStatus status = service.status();
  EXPECT_GE(status.memory_failures, 1);
  EXPECT_LE(status.step_token_cap, 4);
  EXPECT_EQ(status.step_token_limit, 64);
  EXPECT_EQ(status.kv_blocks_used, 0);
  service.stop();
  loop.join();
  EXPECT_EQ(largest_run.load(), 4);
  ASSERT_FALSE(observer.failures.empty());
  EXPECT_GT(observer.failures[0].failed_tokens, 4);
  EXPECT_EQ(observer.failures[0].requests_failed, 0);
  EXPECT_NE(observer.failures[0].message.find("rank 1"), std::string::npos);
}

// Not even one token fits: the request ends with an error that says so; the service goes on.
TEST(EngineService, RequestThatNeverFitsEndsWithAnError) {
  EngineService service(options());
  std::atomic<bool> memory_back{false};
  service.set_ready(
      [&](const std::vector<StepPlan>& plans) -> StatusOr<std::vector<StepOutput>> {
        if (!memory_back) return resource_exhausted("device out of memory");
        return fake_step(plans);
      },
      [] {});
  std::thread loop([&] { service.run(); });
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(service.submit(request("huge", 3), sink).ok());
  ASSERT_TRUE(sink->wait(std::chrono::seconds(10)));
  EXPECT_EQ(sink->finish, FinishReason::kError);
  EXPECT_EQ(sink->error.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(sink->error.message().find("does not fit in device memory"), std::string::npos);
  EXPECT_EQ(service.status().step_token_cap, 1);
  memory_back = true;
  auto next = std::make_shared<CollectingSink>();
  ASSERT_TRUE(service.submit(request("next", 2), next).ok());
  ASSERT_TRUE(next->wait(std::chrono::seconds(10)));
  EXPECT_EQ(next->tokens, (std::vector<int32_t>{10, 11}));
  service.stop();
  loop.join();
}

}  // namespace
}  // namespace dshpc
