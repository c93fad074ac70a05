#include "coordinator/engine_service.h"

#include <algorithm>

#include "common/check.h"
#include "common/log.h"

namespace dshpc {

EngineService::EngineService(EngineServiceOptions options)
    : options_(std::move(options)),
      scheduler_(std::make_unique<Scheduler>(options_.scheduler, options_.replicas,
                                             options_.eos_token_ids)) {}

void EngineService::reconfigure(EngineServiceOptions options) {
  std::lock_guard<std::mutex> lock(mutex_);
  DSHPC_CHECK(state_ == ServiceState::kLoading) << "reconfigure after the service opened";
  options_ = std::move(options);
  scheduler_ =
      std::make_unique<Scheduler>(options_.scheduler, options_.replicas, options_.eos_token_ids);
}

EngineService::~EngineService() = default;

void EngineService::set_ready(StepRunner runner, Keepalive keepalive) {
  std::lock_guard<std::mutex> lock(mutex_);
  logged_token_cap_ = scheduler_->step_token_cap();
  runner_ = std::move(runner);
  keepalive_ = std::move(keepalive);
  loaded_ = true;
  if (state_ == ServiceState::kLoading) state_ = ServiceState::kReady;
  wake_.notify_all();
}

void EngineService::set_load_progress(int64_t bytes_done, int64_t bytes_total) {
  std::lock_guard<std::mutex> lock(mutex_);
  load_bytes_done_ = std::max<int64_t>(0, bytes_done);
  load_bytes_total_ = std::max<int64_t>(0, bytes_total);
}

void EngineService::begin_drain() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_ == ServiceState::kReady || state_ == ServiceState::kLoading) {
    state_ = ServiceState::kDraining;
  }
  wake_.notify_all();
}

void EngineService::stop(Status error) {
  std::lock_guard<std::mutex> lock(mutex_);
  stop_requested_ = true;
  stop_error_ = std::move(error);
  wake_.notify_all();
}

Status EngineService::submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) {
  std::lock_guard<std::mutex> lock(mutex_);
  switch (state_) {
    case ServiceState::kLoading:
      return unavailable("the model is still loading");
    case ServiceState::kDraining:
      return unavailable("the server is draining");
    case ServiceState::kStopped:
      return unavailable("the server has stopped");
    case ServiceState::kReady:
      break;
  }
  for (int32_t id : request.prompt_ids) {
    if (id < 0 || id >= options_.vocab_size) {
      return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(options_.vocab_size) + ")");
    }
  }
  const std::string id = request.request_id;
  RETURN_IF_ERROR(scheduler_->submit(std::move(request)));
  sinks_[id] = std::move(sink);
  wake_.notify_all();
  return ok_status();
}

void EngineService::cancel(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::optional<RequestEvent> event = scheduler_->cancel(request_id);
  if (!event) return;
  std::vector<RequestEvent> events{std::move(*event)};
  deliver(events);
  wake_.notify_all();
}

ServiceStatus EngineService::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  ServiceStatus s;
  s.state = state_;
  s.load_bytes_done = load_bytes_done_;
  s.load_bytes_total = load_bytes_total_;
  if (loaded_) {
    s.load_progress = 1.0;
  } else if (load_bytes_total_ > 0) {
    s.load_progress = std::min(
        1.0, static_cast<double>(load_bytes_done_) / static_cast<double>(load_bytes_total_));
  }
  SchedulerStats stats = scheduler_->stats();
  s.running = stats.running;
  s.waiting = stats.waiting;
  s.kv_blocks_total = stats.kv_blocks_total;
  s.kv_blocks_used = stats.kv_blocks_used;
  // Fragmentation over all replicas: each replica's share weighted by its used blocks (all
  // blocks hold the same number of slots).
  double unused = 0.0;
  for (const ReplicaStats& r : stats.replicas) {
    unused += r.kv_fragmentation * static_cast<double>(r.kv_blocks_used);
  }
  s.kv_fragmentation =
      stats.kv_blocks_used > 0 ? unused / static_cast<double>(stats.kv_blocks_used) : 0.0;
  s.max_context = options_.scheduler.max_model_len;
  s.vocab_size = options_.vocab_size;
  s.step_token_cap = stats.step_token_cap;
  s.step_token_limit = options_.scheduler.max_num_batched_tokens;
  s.memory_failures = stats.memory_failures;
  s.kv_block_size = options_.scheduler.kv_block_size;
  for (const ReplicaStats& r : stats.replicas) {
    s.replica_kv_blocks_used.push_back(r.kv_blocks_used);
    s.replica_kv_blocks_total.push_back(r.kv_blocks_total);
  }
  return s;
}

SchedulerStats EngineService::scheduler_stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return scheduler_->stats();
}

void EngineService::on_out_of_memory(int64_t step_id, int64_t tokens, const Status& error) {
  MemoryPressure pressure = scheduler_->on_step_out_of_memory(step_id, error);
  logged_token_cap_ = pressure.token_cap;
  const std::string what = "step " + std::to_string(step_id) + " (" + std::to_string(tokens) +
                           " tokens) did not get its workspace: " + error.message();
  if (pressure.events.empty()) {
    process_logger().warn(what + "; batch token cap lowered to " +
                              std::to_string(pressure.token_cap) +
                              " tokens per step, its requests are scheduled again",
                          {{"event.action", "engine.batch_shrink"},
                           {"dshpc.step_tokens", pressure.failed_tokens},
                           {"dshpc.token_cap", pressure.token_cap}});
  } else {
    process_logger().error(what + "; a step of one token is the smallest there is: its " +
                               std::to_string(pressure.events.size()) +
                               " request(s) end with an error",
                           {{"event.action", "engine.request_too_large"},
                            {"dshpc.step_tokens", pressure.failed_tokens},
                            {"dshpc.token_cap", pressure.token_cap}});
  }
  if (observer_ != nullptr) {
    observer_->on_memory_failure({.failed_tokens = pressure.failed_tokens,
                                  .token_cap = pressure.token_cap,
                                  .requests_failed = static_cast<int64_t>(pressure.events.size()),
                                  .message = error.message()});
  }
  deliver(pressure.events);
}

void EngineService::deliver(std::vector<RequestEvent>& events) {
  if (observer_ != nullptr && !events.empty()) observer_->on_events(events);
  for (RequestEvent& e : events) {
    auto it = sinks_.find(e.request_id);
    if (it == sinks_.end()) continue;
    const bool last = e.event.finish != FinishReason::kNone;
    it->second->on_event(std::move(e.event));
    if (last) sinks_.erase(it);
  }
}

void EngineService::run() {
  // The first idle pass sends a keepalive at once: until the other ranks have one, they wait for
  // rank 0 with their (long) start-up bound.
  auto last_contact = std::chrono::steady_clock::now() - options_.keepalive_interval;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    if (stop_requested_) break;
    if (state_ == ServiceState::kDraining && scheduler_->idle()) break;
    if (state_ == ServiceState::kLoading) {
      wake_.wait(lock);
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    ScheduledStep step = scheduler_->schedule(now);
    const auto scheduled = std::chrono::steady_clock::now();
    deliver(step.events);
    if (!step.has_work()) {
      // Sleep until a submit/cancel, the scheduler's own wake time, or the keepalive.
      auto until = last_contact + options_.keepalive_interval;
      if (step.wake_at && *step.wake_at < until) until = *step.wake_at;
      wake_.wait_until(lock, until);
      if (std::chrono::steady_clock::now() >= last_contact + options_.keepalive_interval) {
        lock.unlock();
        if (keepalive_) keepalive_();
        lock.lock();
        last_contact = std::chrono::steady_clock::now();
      }
      continue;
    }
    int64_t sequences = 0, tokens = 0;
    for (const StepPlan& plan : step.plans) {
      sequences += static_cast<int64_t>(plan.sequences.size());
      tokens += plan.num_tokens();
    }
    lock.unlock();
    const auto started = std::chrono::steady_clock::now();
    StatusOr<std::vector<StepOutput>> outputs = runner_(step.plans);
    const auto finished = std::chrono::steady_clock::now();
    last_contact = finished;
    if (!outputs.ok()) {
      DSHPC_CHECK(outputs.status().code() == StatusCode::kResourceExhausted)
          << "step " << step.step_id << ": " << outputs.status().to_string();
      lock.lock();
      on_out_of_memory(step.step_id, tokens, outputs.status());
      continue;
    }
    if (observer_ != nullptr) {
      StepReport report;
      report.sequences = sequences;
      report.tokens = tokens;
      report.schedule_seconds = std::chrono::duration<double>(scheduled - now).count();
      report.step_seconds = std::chrono::duration<double>(finished - started).count();
      report.queue_seconds = std::move(step.queue_seconds);
      report.preemptions = static_cast<int64_t>(step.preempted.size());
      observer_->on_step(report);
    }
    lock.lock();
    std::vector<RequestEvent> events = scheduler_->on_step_result(step.step_id, *outputs, finished);
    deliver(events);
    if (scheduler_->step_token_cap() > logged_token_cap_) {
      logged_token_cap_ = scheduler_->step_token_cap();
      process_logger().info(
          "batch token cap raised to " + std::to_string(logged_token_cap_) +
              " tokens per step (max_num_batched_tokens " +
              std::to_string(options_.scheduler.max_num_batched_tokens) + ")",
          {{"event.action", "engine.batch_grow"}, {"dshpc.token_cap", logged_token_cap_}});
    }
  }
  // Whatever is still open ends with the stop error.
  std::vector<RequestEvent> events =
      scheduler_->abort_all(stop_error_.ok() ? unavailable("the server stopped") : stop_error_);
  deliver(events);
  state_ = ServiceState::kStopped;
}

}  // namespace dshpc
