// One model replica set spread over an MPI job: data-parallel replicas, each a pipeline of stages,
// each stage tensor-parallel. Rank 0 drives it (Cluster::step); every other rank runs
// Cluster::serve until rank 0 stops it.
//
// Control plane: each step rank 0 broadcasts one ControlMessage holding one StepPlan per replica.
// Data plane per replica, with its plan cut into micro-batches (contiguous runs of sequences with
// about equal tokens):
//
//   stage 0:      for m in micro-batches: embed m → layers → send hidden(m) to stage 1
//   stage s:      for m in micro-batches: recv hidden(m) → layers → send hidden(m) to stage s+1
//   last stage:   for m in micro-batches: recv hidden(m) → layers → logits(m) → rank 0
//
// Every stage walks the micro-batches in the same order, so while stage s computes micro-batch m,
// stage s+1 computes m−1: after a fill of pp−1 micro-batches all stages are busy at once
// (forward-only GPipe schedule; there is no backward pass). Within a stage, tensor-parallel ranks
// all-reduce after attention and after the MLP, and all-gather the vocabulary-parallel logits.
//
// Metrics of every rank (RankFigures: collective and step-phase histograms, GPU) reach rank 0
// without stalling a step. Only the last stage's tp rank 0 sends anything to rank 0 in a step, so
// piggy-backing on the token message would miss every other rank; instead rank 0 sets
// `report_figures` on a control message it broadcasts anyway (a step or a keepalive) at most once
// per interval, and only when every answer to the previous request has arrived. Each other rank,
// after handling that message, posts its cumulative figures with MPI_Isend (tag kRankFigures) and
// goes on; rank 0 picks them up with MPI_Improbe between steps and never waits for one. So a rank
// has at most one report in flight, a slow rank delays only its own figures, and no step waits
// for metrics. On stop, rank 0 receives what is still on its way (bounded wait) so that no send
// is left unmatched when MPI finalizes. Commands that never enable reports (eval-golden, bench)
// send none.
//
// Memory: a step's workspace (activations, scratch, the backend's step buffers) is reserved
// before anything of the step runs, so that running out of device memory is an answer, not a
// crash. Rank 0 marks a step `reserve_workspace` when it is larger than any step all ranks have
// reserved for (in tokens, sequences or logits rows: rare once the batch has reached its usual
// size); then every rank reserves (Engine::reserve), and one all-reduce over the world tells every
// rank which ranks could not. If any could not, no rank runs the step — none is left inside a
// collective — every rank gives its workspace back, and try_step returns RESOURCE_EXHAUSTED so
// that the scheduler can retry with a smaller batch (coordinator/scheduler.h, "memory pressure").
//
// Fault injection for tests: DSHPC_FAULT_ALLOC_FAIL_TOKENS=N makes the reservation of every step
// whose largest replica plan has more than N tokens fail on rank DSHPC_FAULT_ALLOC_FAIL_RANK
// (default: every rank), as if the device were out of memory. Rank 0 reads N too (to mark such
// steps for reservation), so set it for the whole job (mpirun passes the environment on).
#pragma once

#include <mpi.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parallel/collectives.h"
#include "parallel/process_groups.h"
#include "worker/engine.h"
#include "worker/model_runtime.h"
#include "worker/rank_figures.h"
#include "worker/sampler.h"
#include "worker/step_codec.h"

namespace dshpc {

// How the other ranks learn that rank 0 is gone (hung, stopped by SIGSTOP, dead): they wait for
// its next control message only as long as rank 0 promised in the previous one
// (ControlMessage::next_message_within_s), then abort the job with a message naming rank 0 as
// unresponsive. Rank 0 promises:
//   - with keepalives (serve and batch: an idle loop sends one every keepalive_interval_s):
//     control_timeout_s after a keepalive; after a step the step's own bound (the collective
//     timeout, which bounds every wait inside it) plus control_timeout_s;
//   - without (eval-golden, generate, bench: steps back to back): twice the collective timeout
//     after a step.
// Until the first message (model loading, rank 0's preparation) the bound is startup_timeout_s.
// Set by environment variables on rank 0 (the promise travels in the messages, so the other
// ranks need not see the same environment): DSHPC_KEEPALIVE_INTERVAL_S (2),
// DSHPC_CONTROL_TIMEOUT_S (5 keepalive intervals; at least 2), DSHPC_STARTUP_TIMEOUT_S (the
// larger of 3600 and the collective timeout; read on every rank).
struct CoordinatorLiveness {
  double keepalive_interval_s = 2.0;
  double control_timeout_s = 10.0;
  double startup_timeout_s = 3600.0;
};
// From the environment; a malformed value, or a control timeout shorter than two keepalive
// intervals, is an error naming the variable.
StatusOr<CoordinatorLiveness> coordinator_liveness_from_env(double collective_timeout_s);

// What one rank holds, gathered on rank 0 at start-up for the report.
struct RankReport {
  int rank = 0;
  RankCoords coords;
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  int64_t weight_bytes = 0;
  int64_t kv_cache_bytes = 0;
  int64_t kv_blocks = 0;
};

class Cluster {
 public:
  // Collective over the world: agrees on the KV cache size (the smallest any rank can hold, so
  // block ids mean the same on every rank of a replica) and gathers the rank reports.
  Cluster(ProcessGroups& groups, ModelRuntime& runtime, int micro_batches,
          CoordinatorLiveness liveness = {});
  ~Cluster();

  bool is_coordinator() const { return groups_.rank == 0; }
  int replicas() const { return groups_.layout.dp(); }
  int64_t kv_blocks() const { return kv_blocks_; }
  int64_t kv_block_size() const { return runtime_.cache().spec().block_size; }
  const std::vector<RankReport>& reports() const { return reports_; }  // rank 0 only
  const ModelConfig& config() const { return runtime_.config(); }

  // Rank 0: runs one step, plans[r] on replica r (empty plans allowed), and returns each
  // replica's results in plan order: logits rows for plans with return_logits, else the tokens
  // sampled on the last stage. RESOURCE_EXHAUSTED, with nothing run on any rank, when a rank
  // could not reserve the step's workspace (see the top of this file).
  StatusOr<std::vector<StepOutput>> try_step(const std::vector<StepPlan>& plans);
  // try_step for callers that cannot retry smaller (eval-golden, bench): a failed reservation
  // stops the job with its message.
  std::vector<StepOutput> step(const std::vector<StepPlan>& plans);
  // Rank 0: tells the workers to leave serve(). Also done by the destructor.
  void stop();
  // Rank 0: proves to idle workers that the coordinator is alive (they time out otherwise).
  void keepalive();
  // Rank 0: from now on an idle rank 0 sends a keepalive at least every
  // liveness().keepalive_interval_s (the serving loop does); the other ranks then expect the next
  // control message within liveness().control_timeout_s of a keepalive (see CoordinatorLiveness).
  void promise_keepalives();
  const CoordinatorLiveness& liveness() const { return liveness_; }
  // Ranks other than 0: execute steps until rank 0 stops.
  void serve();

  // --- Metrics (see the top of this file) ---
  // Rank 0: ask every rank for its figures at most once per `interval`, on the control messages
  // of steps and keepalives. Off (the default) until called.
  void enable_rank_figures(std::chrono::milliseconds interval);
  // Rank 0: the reports that have arrived (rank 0's own included), oldest first. Never waits.
  std::vector<RankFigures> take_rank_figures();
  // Every rank: how this rank samples its GPU for its reports (unset: no GPU figures).
  void set_gpu_sampler(std::function<GpuFigures()> sampler) { gpu_sampler_ = std::move(sampler); }
  // This rank's figures now.
  RankFigures local_figures() const;
  // Where this rank's memory goes now (part of its figures).
  MemoryFigures memory_figures() const;

 private:
  // This rank's part of a step; on the coordinator also returns replica 0's outputs when rank 0
  // is its last stage. RESOURCE_EXHAUSTED when the world did not get the step's workspace.
  StatusOr<std::vector<StepOutput>> execute(const ControlMessage& message);
  // Every rank: reserves the workspace of `message`'s step and agrees with the world on the
  // outcome (one all-reduce); on failure every rank has released its workspace.
  Status reserve_workspace(const ControlMessage& message);
  // The largest micro-batch of any replica's plan in `message` (the same on every rank).
  StepCapacity step_capacity_of(const ControlMessage& message) const;
  // The largest replica plan's tokens (what the fault injection compares with).
  static int64_t largest_plan_tokens(const ControlMessage& message);
  // Last stage, tp rank 0: the sampled tokens of one micro-batch (one per sequence).
  std::vector<SampledToken> sample(const StepPlan& part, StepOutput& out);
  std::vector<StepPlan> micro_batches(const StepPlan& plan) const;
  int last_stage_rank(int replica) const;
  void broadcast(ControlMessage& message);
  // Rank 0: the promise a message of this command carries (CoordinatorLiveness).
  double next_message_within_s(ControlCommand command) const;
  // Rank 0: whether the next control message asks for reports (and then expects them).
  bool request_figures();
  // Rank 0: receives the reports that have arrived; with a timeout, waits for all expected.
  void poll_figures(double wait_s = 0.0);
  // Other ranks: posts this rank's figures to rank 0 (after the previous post completed).
  void post_figures();
  void finish_posted_figures();

  ProcessGroups& groups_;
  ModelRuntime& runtime_;
  int micro_batches_;
  std::unique_ptr<Collectives> world_;
  int64_t kv_blocks_ = 0;
  std::vector<RankReport> reports_;
  Sampler sampler_;  // last stage, tp rank 0: per-sequence penalty history
  uint64_t step_id_ = 0;
  bool stopped_ = false;
  CoordinatorLiveness liveness_;
  bool keepalives_promised_ = false;  // rank 0
  double control_wait_s_ = 0.0;       // other ranks: the bound of the next control message

  // Memory (see the top of this file).
  StepCapacity reserved_capacity_;        // rank 0: what every rank holds a workspace for
  int64_t fault_alloc_fail_tokens_ = -1;  // DSHPC_FAULT_ALLOC_FAIL_TOKENS; -1: off
  int fault_alloc_fail_rank_ = -1;        // DSHPC_FAULT_ALLOC_FAIL_RANK; -1: every rank
  int64_t workspace_failures_ = 0;        // this rank's failed reservations
  std::string host_;

  // Metrics.
  std::array<DurationHistogram, kNumStepPhases> phases_{};  // this rank's, cumulative
  std::function<GpuFigures()> gpu_sampler_;
  std::chrono::milliseconds figures_interval_{0};  // rank 0; 0: reports off
  std::chrono::steady_clock::time_point next_figures_{};
  int figures_expected_ = 0;             // rank 0: reports asked for and not yet received
  std::vector<RankFigures> figures_;     // rank 0: received, not yet taken
  std::vector<uint8_t> posted_figures_;  // other ranks: the buffer of the send in flight
  MPI_Request posted_request_ = MPI_REQUEST_NULL;
};

// Splits `plan` into at most `count` contiguous runs of sequences with about equal token counts.
std::vector<StepPlan> split_micro_batches(const StepPlan& plan, int count);

}  // namespace dshpc
