// What every rank reports to rank 0 for /metrics: time spent in collectives, per-phase step
// durations, and its GPU. Everything is CUMULATIVE since the rank started, so that rank 0 turns
// reports into increments (coordinator/metrics.cpp) and a report that is late, skipped or
// repeated does no harm. How the reports travel without stalling a step: see Cluster in
// worker/cluster.h.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/duration_histogram.h"
#include "common/status.h"
#include "parallel/collectives.h"

namespace dshpc {

// The `phase` label of dshpc_step_seconds.
enum class StepPhase : int {
  kForward,   // every rank: its part of a step (pipeline receive, its layers and their collectives,
              // send; on the last stage the head with greedy argmax or device sampling)
  kSample,    // last stage, tp rank 0: the host sampler (requests with penalties or logprobs)
  kSchedule,  // rank 0's scheduler loop: building a step plan
  kStep,      // rank 0's scheduler loop: plan broadcast → every replica's tokens back
};
inline constexpr int kNumStepPhases = 4;
const char* step_phase_name(StepPhase phase);  // "forward", "sample", "schedule", "step"

struct GpuFigures {
  bool present = false;  // false on the CPU backend or without NVML
  uint64_t memory_used_bytes = 0;
  uint64_t memory_total_bytes = 0;
  double utilization_ratio = 0.0;  // 0..1
};

// Where a rank's memory goes, for GET /debug/memory (the deployment guide's memory summary).
// Figures that are not gauges of this moment (weights, the KV cache) are repeated in every
// report so that the latest report alone describes the rank. -1: not known on this backend.
struct MemoryFigures {
  bool present = false;  // false: the rank sent no memory figures
  int32_t dp = 0, pp = 0, tp = 0;
  std::string host;
  std::string backend;  // Backend::name()
  int64_t weight_bytes = 0;
  int64_t kv_cache_bytes = 0;   // the rank's KV cache, as allocated
  int64_t kv_cache_blocks = 0;  // blocks allocated on this rank (the scheduler uses the agreed
                                // number, the smallest over the ranks)
  int64_t workspace_bytes = 0;  // activations, scratch and step buffers held now
  int64_t workspace_high_water_bytes = 0;
  int64_t workspace_failures = 0;  // step workspace reservations that failed on this rank
  int64_t device_total_bytes = -1;
  int64_t device_free_bytes = -1;
  int64_t pool_in_use_bytes = -1;
  int64_t pool_cached_bytes = -1;
  int64_t process_rss_bytes = -1;     // /proc/self/statm
  int64_t host_total_bytes = -1;      // /proc/meminfo MemTotal
  int64_t host_available_bytes = -1;  // /proc/meminfo MemAvailable
};

// This process's resident set, and the host's total and available memory (-1 where /proc does
// not say).
int64_t process_rss_bytes();
void host_memory_bytes(int64_t* total, int64_t* available);

struct RankFigures {
  int rank = 0;                 // MPI world rank
  CollectiveStats collectives;  // summed over the rank's groups (tp, pp, dp, world transfers)
  std::array<DurationHistogram, kNumStepPhases> phases{};
  GpuFigures gpu;
  MemoryFigures memory;

  DurationHistogram& phase(StepPhase p) { return phases[static_cast<int>(p)]; }
  const DurationHistogram& phase(StepPhase p) const { return phases[static_cast<int>(p)]; }
};

// A little-endian binary form for the MPI message (about 1.6 KB).
std::vector<uint8_t> encode_rank_figures(const RankFigures& figures);
// INVALID_ARGUMENT when the bytes are not exactly one encoded RankFigures.
StatusOr<RankFigures> decode_rank_figures(const uint8_t* data, size_t size);

}  // namespace dshpc
