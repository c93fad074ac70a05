// The InferenceService of a running job: the scheduler (pure logic) driven by one loop thread
// that also makes every MPI call (through `StepRunner`), and the sinks of the gateway's requests.
//
//   I/O threads:  submit / cancel / status  — take the mutex, touch the scheduler, return at once
//   loop thread:  schedule → run the step (mutex released; the long part) → results → events
//
// Sinks are called with the mutex held; GenerationSink::on_event must only post and return.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "coordinator/inference_service.h"
#include "coordinator/scheduler.h"
#include "worker/engine.h"

namespace dshpc {

struct EngineServiceOptions {
  SchedulerConfig scheduler;
  int replicas = 1;
  std::vector<int64_t> eos_token_ids;
  int64_t vocab_size = 0;
  // Idle workers wait for the next control message with a timeout; the loop proves it is alive
  // at least this often, and once as soon as run() starts (CoordinatorLiveness).
  std::chrono::milliseconds keepalive_interval{2000};
};

// Runs one step on the cluster (rank 0's Cluster::try_step) — or a fake in tests.
// RESOURCE_EXHAUSTED: the step's workspace did not fit on some rank and nothing of it ran; the
// loop retries with a smaller batch (Scheduler::on_step_out_of_memory). Any other error is a
// broken invariant.
using StepRunner = std::function<StatusOr<std::vector<StepOutput>>(const std::vector<StepPlan>&)>;
using Keepalive = std::function<void()>;

// What one step of the loop did, for metrics.
struct StepReport {
  int64_t sequences = 0;  // the batch size, over every replica
  int64_t tokens = 0;
  double schedule_seconds = 0.0;      // Scheduler::schedule
  double step_seconds = 0.0;          // the StepRunner: plans out → sampled tokens back
  std::vector<double> queue_seconds;  // requests that ran for the first time (ScheduledStep)
  int64_t preemptions = 0;
};

// A step that did not get its workspace, and what the scheduler did about it.
struct MemoryFailureReport {
  int64_t failed_tokens = 0;    // the step's largest replica plan
  int64_t token_cap = 0;        // tokens per replica step from now on
  int64_t requests_failed = 0;  // ended because even one token does not fit
  std::string message;
};

// Per-step observations for metrics and logs, called on the loop thread (on_events with the
// service's mutex held: it must only record and return).
struct StepObserver {
  virtual ~StepObserver() = default;
  virtual void on_step(const StepReport& report) {}
  virtual void on_events(const std::vector<RequestEvent>& events) {}
  virtual void on_memory_failure(const MemoryFailureReport& report) {}
};

class EngineService final : public InferenceService {
 public:
  explicit EngineService(EngineServiceOptions options);
  ~EngineService() override;

  // While loading: replaces the options (the scheduler is rebuilt; nothing is queued yet).
  void reconfigure(EngineServiceOptions options);
  // The model finished loading: from now on requests are accepted.
  void set_ready(StepRunner runner, Keepalive keepalive);
  // Rank 0 has read `bytes_done` of its `bytes_total` weight bytes (/health reports it).
  void set_load_progress(int64_t bytes_done, int64_t bytes_total);
  void set_observer(StepObserver* observer) { observer_ = observer; }

  // The loop, on the calling thread, until stop(); returns when every request has ended.
  void run();
  // Draining: new requests get UNAVAILABLE; run() returns once nothing is left (or stop()).
  void begin_drain();
  // Ends the loop: requests still open end with `error` (UNAVAILABLE by default).
  void stop(Status error = unavailable("the server is shutting down"));

  Status submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) override;
  void cancel(const std::string& request_id) override;
  ServiceStatus status() const override;

  SchedulerStats scheduler_stats() const;

 private:
  void deliver(std::vector<RequestEvent>& events);  // mutex held
  // A step that did not get its workspace: the scheduler retries smaller (mutex held).
  void on_out_of_memory(int64_t step_id, int64_t tokens, const Status& error);

  EngineServiceOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::unique_ptr<Scheduler> scheduler_;
  std::map<std::string, std::shared_ptr<GenerationSink>> sinks_;
  StepRunner runner_;
  Keepalive keepalive_;
  int64_t logged_token_cap_ = 0;  // the cap last logged (a rise is logged once it happens)
  ServiceState state_ = ServiceState::kLoading;
  int64_t load_bytes_done_ = 0;
  int64_t load_bytes_total_ = 0;
  bool loaded_ = false;
  bool stop_requested_ = false;
  Status stop_error_;
  StepObserver* observer_ = nullptr;
};

}  // namespace dshpc
