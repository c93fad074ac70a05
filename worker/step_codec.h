// The control-plane message rank 0 broadcasts each step: a command and one step plan per
// data-parallel replica. A compact little-endian binary form; decoding checks every length
// against the buffer (a malformed message is a broken invariant of the job, not user input).
#pragma once

#include <cstdint>
#include <vector>

#include "worker/engine.h"

namespace dshpc {

enum class ControlCommand : uint32_t {
  kStep = 1,       // run the plans
  kKeepalive = 2,  // nothing to do; proves the coordinator is alive
  kStop = 3,       // leave the worker loop
};

struct ControlMessage {
  ControlCommand command = ControlCommand::kStep;
  uint64_t step_id = 0;
  // Every rank other than 0 sends rank 0 its RankFigures once it has handled this message
  // (see Cluster::enable_rank_figures).
  bool report_figures = false;
  // Rank 0's promise: its next control message follows within this many seconds of this one
  // (the other ranks wait that long, then abort the job naming rank 0 as unresponsive).
  // 0: no promise; the receivers keep their start-up bound (Cluster, CoordinatorLiveness).
  double next_message_within_s = 0.0;
  // kStep: before running anything, every rank reserves the step's workspace (Engine::reserve)
  // and the world agrees on the outcome; when a rank could not, no rank runs the step (see
  // Cluster::try_step). Rank 0 sets it when the step is larger than any reserved before.
  bool reserve_workspace = false;
  std::vector<StepPlan> replica_plans;  // index = dp index
};

std::vector<uint8_t> encode_control(const ControlMessage& message);
ControlMessage decode_control(const std::vector<uint8_t>& bytes);

}  // namespace dshpc
