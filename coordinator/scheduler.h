// The continuous-batching scheduler of rank 0: pure logic (no MPI, no threads, no clock; every
// time is passed in), driven by one thread:
//
//   submit(request)        → queued on the least-loaded replica, or a Status (429 / 400)
//   schedule(now)          → one step: a StepPlan per data-parallel replica, or nothing to do
//                            and when to call again
//   on_step_result(step)   → tokens appended, stop conditions checked, GenerationEvents
//   cancel(request_id)     → blocks freed, a final kCancelled event
//
// Per replica: a FIFO of waiting sequences, the running ones (in arrival order), a BlockManager.
// A sequence's tokens are its prompt followed by its output; num_computed of them are in the KV
// cache. Every step gives a sequence the next run of uncomputed tokens, so prefill, chunked
// prefill, decode and recomputation after preemption are one rule; only the chunk that reaches
// the last token samples.
//
// One step per replica, in these named parts (schedule_replica):
//   1. running decodes, oldest first, one token each;
//   2. running prefills, oldest first, chunks within what is left of max_num_batched_tokens;
//   3. waiting requests, FIFO, while max_batch_size, the token budget and free blocks allow —
//      on an idle replica only once the dynamic-batching gate opens (preferred_batch_sizes,
//      max_queue_delay_us), and never in a step that had to preempt.
// When a running sequence needs a block and none is free, the newest running sequence younger
// than it (not in flight, not yet in this step) is preempted: its blocks are freed, it goes back
// to the front of the waiting queue and later recomputes prompt and output from position 0. With
// no such victim a prefill chunk shrinks to the room left, or the sequence sits out the step.
//
// A scheduled sequence is in flight until its step's result comes back (several steps may be
// outstanding; each holds different sequences). Blocks freed by cancel() while a sequence is in
// flight are reused by later steps only: the plans of one replica must run in the order they were
// made (the pipeline does).
//
// Memory pressure (the deployment guide's dynamic batch adjustment). A step whose device
// workspace could not be reserved ran nowhere (worker/cluster.h); on_step_out_of_memory aborts it
// (its sequences are planned again, nothing is lost) and lowers a cap on the tokens of one
// replica's step to half the failed step's largest replica plan. Decodes then also count against
// the cap (oldest first; the others sit the step out), and prefill chunks shrink to what is left.
// After kCapRaiseAfterSteps successful steps in a row the cap rises by a quarter (at least one
// token) until it reaches max_num_batched_tokens again: additive increase after multiplicative
// decrease, so that a batch size that does not fit is tried again only now and then. A failed step
// of one token is the smallest there is: its requests end with INVALID_ARGUMENT saying that they
// do not fit in device memory even alone.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "coordinator/block_manager.h"
#include "coordinator/inference_service.h"
#include "coordinator/scheduler_config.h"
#include "worker/engine.h"

namespace dshpc {

using SchedulerClock = std::chrono::steady_clock;
using TimePoint = SchedulerClock::time_point;

// An event for the sink of `request_id`.
struct RequestEvent {
  std::string request_id;
  GenerationEvent event;
};

struct ScheduledStep {
  int64_t step_id = -1;                // -1: no sequence to run (plans then hold nothing either)
  std::vector<StepPlan> plans;         // one per replica, in replica order; some may be empty
  std::vector<RequestEvent> events;    // requests that ended before running (deadline)
  std::vector<std::string> preempted;  // requests preempted while making this step
  // Per request that runs for the first time in this step: seconds since it arrived (its queue
  // time; a preempted request's later runs are not counted).
  std::vector<double> queue_seconds;
  // The earliest time at which schedule() could do more without a submit, result or cancel (an
  // idle replica's queue delay running out, a deadline); nullopt: only such an event helps.
  std::optional<TimePoint> wake_at;

  bool has_work() const { return step_id >= 0; }
};

struct ReplicaStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t load = 0;  // Σ (prompt + max_tokens) of its requests: the balancing measure
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  double kv_usage = 0.0;
  double kv_fragmentation = 0.0;
};

struct SchedulerStats {
  std::vector<ReplicaStats> replicas;
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t steps_in_flight = 0;
  int64_t preemptions = 0;  // since start
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int64_t step_token_cap = 0;   // tokens per replica step now (see "memory pressure")
  int64_t memory_failures = 0;  // steps that did not get their workspace, since start
};

// What on_step_out_of_memory did.
struct MemoryPressure {
  int64_t failed_tokens = 0;         // the failed step's largest replica plan
  int64_t token_cap = 0;             // the cap from now on
  std::vector<RequestEvent> events;  // requests ended because even one token does not fit
};

// The sampler seed of a request without one: FNV-1a of its id, so a request is reproducible
// whichever replica, batch or step it runs in.
uint64_t derive_seed(const std::string& request_id);

class Scheduler {
 public:
  // `config` must pass validate_scheduler_config; `eos_token_ids` are the model's (stop unless
  // the request sets ignore_eos).
  Scheduler(const SchedulerConfig& config, int num_replicas, std::vector<int64_t> eos_token_ids);

  // Queues a request. INVALID_ARGUMENT when it can never run: empty prompt or id, an id in use,
  // max_tokens < 1, prompt + max_tokens over max_model_len, or more KV blocks than one replica
  // holds; RESOURCE_EXHAUSTED when max_queue_len requests are already waiting.
  Status submit(GenerationRequest request);

  // Ends a waiting or running request now: frees its blocks and returns its final kCancelled
  // event. Unknown ids (finished already, never submitted) return nothing.
  std::optional<RequestEvent> cancel(const std::string& request_id);

  // Makes the next step. Requests whose deadline passed (waiting, or running and not in flight)
  // end first with kTimeout.
  ScheduledStep schedule(TimePoint now);

  // The result of step `step_id`: per replica, one SampledToken per sequence of its plan, in plan
  // order (StepOutput::samples; entries of sequences with sample = false are ignored). Returns
  // one event per request that sampled (the token, usage, a finish reason when it ended).
  // After appending a token, in this order: an EOS id of the model (unless ignore_eos) or one of
  // stop_token_ids → kStop; max_tokens reached or prompt + output = max_model_len → kLength; the
  // deadline at or before `now` → kTimeout. The token that ended a request is in its final event
  // and counted in completion_tokens (the gateway decides whether to render it). Ended sequences
  // are listed in released_sequences of the next step that runs anything.
  std::vector<RequestEvent> on_step_result(int64_t step_id,
                                           const std::vector<std::vector<SampledToken>>& samples,
                                           TimePoint now);
  std::vector<RequestEvent> on_step_result(int64_t step_id, const std::vector<StepOutput>& outputs,
                                           TimePoint now);

  // Ends every request now with kError and `error` (the job is going down: a rank died, the
  // watchdog fired) and forgets the steps in flight; returns the final events.
  std::vector<RequestEvent> abort_all(const Status& error);

  // A step that did not run (e.g. the device ran out of memory): its sequences leave flight with
  // nothing computed and the blocks reserved for it are returned; they are scheduled again, and
  // the sequences it released are released by the next step instead.
  void abort_step(int64_t step_id);
  // A step whose workspace the device could not hold (`error` says where): abort_step, then the
  // cap on tokens per replica step is lowered (see "memory pressure" above) — or, for a step of
  // one token, its requests end with an error event.
  MemoryPressure on_step_out_of_memory(int64_t step_id, const Status& error);
  int64_t step_token_cap() const { return token_cap_; }
  // Successful steps in a row after which a lowered cap rises.
  static constexpr int64_t kCapRaiseAfterSteps = 32;

  SchedulerStats stats() const;
  bool idle() const;  // nothing waiting, running or in flight
  const SchedulerConfig& config() const { return config_; }
  int num_replicas() const { return static_cast<int>(replicas_.size()); }
  const BlockManager& block_manager(int replica) const { return replicas_.at(replica).blocks; }
  // Where a request was placed (-1: unknown), for tests and logs.
  int replica_of(const std::string& request_id) const;
  int64_t sequence_id_of(const std::string& request_id) const;  // -1: unknown

 private:
  struct Sequence {
    int64_t id = 0;  // also the arrival order: lower is older
    int replica = 0;
    std::string request_id;
    std::vector<int32_t> tokens;  // prompt, then output
    int64_t prompt_len = 0;
    int64_t max_tokens = 0;
    SamplingOptions sampling;
    uint64_t seed = 0;
    TimePoint arrival;
    std::optional<TimePoint> deadline;
    int64_t num_computed = 0;     // tokens whose KV is in the cache
    int64_t in_flight_step = -1;  // the step it is in, -1: none
    bool workers_know = false;    // scheduled since its last release
    bool started = false;         // admitted at least once (queue time observed)

    int64_t num_output() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
    int64_t uncomputed() const { return static_cast<int64_t>(tokens.size()) - num_computed; }
    bool is_decode() const { return uncomputed() == 1 && num_output() > 0; }
    int64_t load() const { return prompt_len + max_tokens; }
  };

  struct Replica {
    explicit Replica(const SchedulerConfig& c) : blocks(c.kv_blocks, c.kv_block_size) {}
    BlockManager blocks;
    std::deque<int64_t> waiting;    // front first
    std::vector<int64_t> running;   // ascending id
    std::vector<int64_t> released;  // for the next plan's released_sequences
    int64_t load = 0;
  };

  // One scheduled sequence of a recorded step.
  struct StepEntry {
    int64_t sequence_id = 0;
    int64_t num_tokens = 0;
    bool sample = false;
  };
  using StepRecord = std::vector<std::vector<StepEntry>>;  // [replica][position in plan]
  struct InFlightStep {
    StepRecord record;
    std::vector<std::vector<int64_t>> released;  // [replica]: the plan's released_sequences
  };

  // What schedule_replica builds for one replica.
  struct PlanBuilder {
    StepPlan plan;
    std::vector<StepEntry> entries;
    int64_t tokens_left = 0;
    bool preempted = false;
    std::optional<TimePoint> gate_opens;  // the idle replica's queue delay runs out then
    std::vector<double> queue_seconds;    // see ScheduledStep::queue_seconds
  };

  Status check_fits(const GenerationRequest& request) const;
  int choose_replica() const;
  void expire_deadlines(TimePoint now, std::vector<RequestEvent>& events);
  void schedule_replica(int r, TimePoint now, PlanBuilder& b, std::vector<std::string>& preempted);
  void schedule_running(int r, bool decodes, PlanBuilder& b, std::vector<std::string>& preempted);
  // The number of waiting requests an idle replica may start now (0: wait), per the gate.
  int64_t admission_limit(const Replica& rep, TimePoint now, PlanBuilder& b) const;
  void admit_waiting(int r, TimePoint now, PlanBuilder& b);
  bool is_victim(const Sequence& candidate, const Sequence& needy) const;
  void add_to_plan(Sequence& seq, int64_t num_tokens, PlanBuilder& b);
  void preempt(Sequence& seq);
  // Removes a sequence everywhere, frees its blocks and returns its final event.
  RequestEvent finish(Sequence& seq, FinishReason reason, GenerationEvent event);
  FinishReason stop_reason(const Sequence& seq, int32_t token, TimePoint now) const;
  std::vector<RequestEvent> apply_results(
      int64_t step_id, const std::vector<const std::vector<SampledToken>*>& samples, TimePoint now);
  std::optional<TimePoint> next_wake(const std::vector<PlanBuilder>& builders) const;

  SchedulerConfig config_;
  std::vector<int64_t> eos_token_ids_;
  std::vector<Replica> replicas_;
  std::unordered_map<int64_t, Sequence> sequences_;
  std::unordered_map<std::string, int64_t> by_request_;
  std::map<int64_t, InFlightStep> in_flight_;
  int64_t next_sequence_id_ = 0;
  int64_t next_step_id_ = 0;
  int64_t waiting_count_ = 0;
  int64_t preemptions_ = 0;
  // Memory pressure.
  int64_t token_cap_ = 0;  // ≤ max_num_batched_tokens
  int64_t successes_since_cap_change_ = 0;
  int64_t memory_failures_ = 0;
};

}  // namespace dshpc
