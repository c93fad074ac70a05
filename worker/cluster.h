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
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "parallel/collectives.h"
#include "parallel/process_groups.h"
#include "worker/engine.h"
#include "worker/model_runtime.h"
#include "worker/sampler.h"
#include "worker/step_codec.h"

namespace dshpc {

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
  Cluster(ProcessGroups& groups, ModelRuntime& runtime, int micro_batches);
  ~Cluster();

  bool is_coordinator() const { return groups_.rank == 0; }
  int replicas() const { return groups_.layout.dp(); }
  int64_t kv_blocks() const { return kv_blocks_; }
  int64_t kv_block_size() const { return runtime_.cache().spec().block_size; }
  const std::vector<RankReport>& reports() const { return reports_; }  // rank 0 only
  const ModelConfig& config() const { return runtime_.config(); }

  // Rank 0: runs one step, plans[r] on replica r (empty plans allowed), and returns each
  // replica's results in plan order: logits rows for plans with return_logits, else the tokens
  // sampled on the last stage.
  std::vector<StepOutput> step(const std::vector<StepPlan>& plans);
  // Rank 0: tells the workers to leave serve(). Also done by the destructor.
  void stop();
  // Rank 0: proves to idle workers that the coordinator is alive (they time out otherwise).
  void keepalive();
  // Ranks other than 0: execute steps until rank 0 stops.
  void serve();

 private:
  // This rank's part of a step; on the coordinator also returns replica 0's outputs when rank 0
  // is its last stage.
  std::vector<StepOutput> execute(const ControlMessage& message);
  // Last stage, tp rank 0: the sampled tokens of one micro-batch (one per sequence).
  std::vector<SampledToken> sample(const StepPlan& part, StepOutput& out);
  std::vector<StepPlan> micro_batches(const StepPlan& plan) const;
  int last_stage_rank(int replica) const;
  void broadcast(ControlMessage& message);

  ProcessGroups& groups_;
  ModelRuntime& runtime_;
  int micro_batches_;
  std::unique_ptr<Collectives> world_;
  int64_t kv_blocks_ = 0;
  std::vector<RankReport> reports_;
  Sampler sampler_;  // last stage, tp rank 0: per-sequence penalty history
  uint64_t step_id_ = 0;
  bool stopped_ = false;
};

// Splits `plan` into at most `count` contiguous runs of sequences with about equal token counts.
std::vector<StepPlan> split_micro_batches(const StepPlan& plan, int count);

}  // namespace dshpc
