// The data plane of one process group (tensor-, pipeline- or data-parallel), behind one interface:
// MPI on the CPU backend, NCCL on GPUs. Buffers live where the backend keeps activations (host
// memory for the CPU backend, device memory for CUDA). Every call either completes or, past the
// group's timeout, stops the job with a message naming the call, the group and the rank.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "common/dtype.h"
#include "common/duration_histogram.h"

namespace dshpc {

// What a group has spent its time on, for the metrics endpoint: one entry per operation.
enum class CollectiveOp : int { kAllReduce, kAllGather, kSend, kRecv, kBroadcast };
inline constexpr int kNumCollectiveOps = 5;
const char* collective_op_name(CollectiveOp op);  // "all_reduce_sum", "send", ...

struct CollectiveStats {
  struct Op {
    uint64_t calls = 0;
    uint64_t bytes = 0;           // this rank's block (all_gather), message (send/recv) or payload
    double seconds = 0.0;         // wall time from the call to its completion, waiting included
    DurationHistogram durations;  // one observation per call; durations.sum == seconds
  };
  std::array<Op, kNumCollectiveOps> ops{};

  const Op& operator[](CollectiveOp op) const { return ops[static_cast<int>(op)]; }
  Op& operator[](CollectiveOp op) { return ops[static_cast<int>(op)]; }
  double seconds(CollectiveOp op) const { return (*this)[op].seconds; }
  // Sums another group's figures into these (a rank's total over its tp, pp, … groups).
  CollectiveStats& operator+=(const CollectiveStats& other);
};

// The counters behind Collectives::stats(): record() from the thread that makes the calls,
// snapshot() from any thread. A mutex, not atomics, so that a snapshot is consistent (calls,
// seconds and the histogram of one op agree); uncontended it costs tens of nanoseconds, noise
// beside any MPI or NCCL call.
class CollectiveCounters {
 public:
  using Clock = std::chrono::steady_clock;
  // One call of `op` that moved `bytes` and began at `started` (ends now).
  void record(CollectiveOp op, size_t bytes, Clock::time_point started);
  void record_seconds(CollectiveOp op, size_t bytes, double seconds);
  CollectiveStats snapshot() const;

 private:
  mutable std::mutex mutex_;
  CollectiveStats stats_;
};

class Collectives {
 public:
  virtual ~Collectives() = default;

  virtual int rank() const = 0;  // rank within the group
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "tp", "pp", "dp" for messages

  // In place, float32, sum over the group.
  virtual void all_reduce_sum(float* data, size_t count) = 0;
  // recv holds size() × count elements; rank r's send block lands at recv + r × count.
  virtual void all_gather(const float* send, float* recv, size_t count) = 0;
  // The same for activations of any element type (bf16 on GPUs): `count` elements of `dtype`.
  // The defaults take kF32 to the float versions above and refuse other types, except that a
  // group of one needs no data movement for an in-place call.
  virtual void all_reduce_sum_typed(void* data, size_t count, DType dtype);
  virtual void all_gather_typed(const void* send, void* recv, size_t count, DType dtype);
  // Point-to-point within the group (pipeline stages); `peer` is a rank of this group.
  virtual void send(const void* data, size_t bytes, int peer, int tag) = 0;
  virtual void recv(void* data, size_t bytes, int peer, int tag) = 0;

  // Cumulative per-operation counters since construction; safe to call from another thread
  // (the metrics scraper) while the group is busy. Backends without counters report zeros.
  virtual CollectiveStats stats() const { return {}; }
  // True when every operation is queued on the backend's stream without host involvement (NCCL),
  // so that a CUDA graph can capture it; false for host-driven transports (MPI).
  virtual bool stream_ordered() const { return false; }
};

// The group of one: every collective is the identity. Used on a single rank and for any group
// dimension of size 1.
class SoloCollectives final : public Collectives {
 public:
  explicit SoloCollectives(std::string name) : name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  void all_reduce_sum(float*, size_t) override {}
  void all_gather(const float* send, float* recv, size_t count) override;
  void send(const void*, size_t, int peer, int) override;
  void recv(void*, size_t, int peer, int) override;

 private:
  std::string name_;
};

}  // namespace dshpc
