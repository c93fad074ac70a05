#include "parallel/collectives.h"

#include <cstring>

#include "common/check.h"

namespace dshpc {

const char* collective_op_name(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::kAllReduce:
      return "all_reduce_sum";
    case CollectiveOp::kAllGather:
      return "all_gather";
    case CollectiveOp::kSend:
      return "send";
    case CollectiveOp::kRecv:
      return "recv";
    case CollectiveOp::kBroadcast:
      return "broadcast";
  }
  return "?";
}

CollectiveStats& CollectiveStats::operator+=(const CollectiveStats& other) {
  for (int i = 0; i < kNumCollectiveOps; ++i) {
    ops[i].calls += other.ops[i].calls;
    ops[i].bytes += other.ops[i].bytes;
    ops[i].seconds += other.ops[i].seconds;
    ops[i].durations += other.ops[i].durations;
  }
  return *this;
}

void CollectiveCounters::record(CollectiveOp op, size_t bytes, Clock::time_point started) {
  record_seconds(op, bytes, std::chrono::duration<double>(Clock::now() - started).count());
}

void CollectiveCounters::record_seconds(CollectiveOp op, size_t bytes, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  CollectiveStats::Op& o = stats_[op];
  o.calls += 1;
  o.bytes += bytes;
  o.durations.observe(seconds);
  o.seconds = o.durations.sum;
}

CollectiveStats CollectiveCounters::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void Collectives::all_reduce_sum_typed(void* data, size_t count, DType dtype) {
  if (dtype == DType::kF32) {
    all_reduce_sum(static_cast<float*>(data), count);
    return;
  }
  if (size() == 1) return;
  DSHPC_FATAL() << "all_reduce_sum of " << dtype_name(dtype) << " in group '" << name()
                << "': this data plane sums float32 only";
}

void Collectives::all_gather_typed(const void* send, void* recv, size_t count, DType dtype) {
  if (dtype == DType::kF32) {
    all_gather(static_cast<const float*>(send), static_cast<float*>(recv), count);
    return;
  }
  if (size() == 1 && send == recv) return;
  DSHPC_FATAL() << "all_gather of " << dtype_name(dtype) << " in group '" << name()
                << "': this data plane gathers float32 only";
}

void SoloCollectives::all_gather(const float* send, float* recv, size_t count) {
  if (send != recv) std::memmove(recv, send, count * sizeof(float));
}

void SoloCollectives::send(const void*, size_t, int peer, int) {
  DSHPC_FATAL() << "send to peer " << peer << " in the single-rank group '" << name_ << "'";
}

void SoloCollectives::recv(void*, size_t, int peer, int) {
  DSHPC_FATAL() << "recv from peer " << peer << " in the single-rank group '" << name_ << "'";
}

}  // namespace dshpc
