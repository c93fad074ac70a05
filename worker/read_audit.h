// Checks what a rank read while loading against the split table: every rank reads at most its
// slice of each tensor (worker/model.h owned_slice), and never a tensor it owns none of, or the
// whole of one it owns only part of. `dshpc bench-load` reports it per rank; the mpi tests assert
// on it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "worker/model.h"
#include "worker/weight_source.h"

namespace dshpc {

struct ReadAudit {
  int64_t owned_bytes = 0;   // the table's slices of the tensors this rank read, as stored
  int64_t read_bytes = 0;    // what it read of the table's tensors
  int64_t excess_bytes = 0;  // read beyond its slices (0 when the chunks align with them)
  // "tensor \"…\": …" for each tensor read that the rank owns none of, or read whole though it
  // owns only part of, or owns but never read.
  std::vector<std::string> violations;
};

// Tensors outside the table (FP8 *_scale_inv, extra tensors) are not audited.
ReadAudit audit_weight_reads(const ModelConfig& config, const ModelShard& shard,
                             const WeightReadStats& stats);

}  // namespace dshpc
