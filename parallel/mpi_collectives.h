// Collectives over MPI (the CPU backend's data plane) and the control-plane byte broadcast.
//
// No call waits blindly: each posts a non-blocking MPI operation and polls it with MPI_Test,
// spinning briefly (small messages complete within microseconds), then yielding, then sleeping
// with a growing back-off (so that oversubscribed ranks on few cores leave the CPU to the rank that
// has work). Past the group's timeout the job stops with a message naming the group, the operation,
// the bytes, the peer, the rank and the time waited: a hung peer becomes an error, not a hang.
#pragma once

#include <mpi.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "parallel/collectives.h"

namespace dshpc {

inline constexpr double kDefaultCollectiveTimeoutS = 300.0;
inline constexpr const char* kCollectiveTimeoutEnv = "DSHPC_COLLECTIVE_TIMEOUT_S";

// A positive number of seconds from the environment variable `name`, or `fallback` when it is
// unset or empty. A malformed value is an error that names the variable.
StatusOr<double> seconds_from_env(const char* name, double fallback);

// The timeout from DSHPC_COLLECTIVE_TIMEOUT_S (seconds, a positive number) when it is set, else
// kDefaultCollectiveTimeoutS. A malformed value is an error that names the variable.
StatusOr<double> collective_timeout_from_env();

// One pending MPI request and what it is, for the timeout message.
struct PendingRequest {
  std::string_view group;  // "tp", "world", ...
  CollectiveOp op = CollectiveOp::kAllReduce;
  size_t bytes = 0;
  int peer = -1;  // group rank of the peer (send/recv) or root (broadcast); -1: none
  int tag = -1;   // send/recv only
  // When set, the timeout message leads with this instead of "MPI operation timed out:" and ends
  // with `timeout_setting` (what sets the limit) instead of the collective timeout's variable
  // (the control plane's wait for rank 0 says that rank 0 is unresponsive).
  const char* timeout_headline = nullptr;
  const char* timeout_setting = nullptr;
};

// Polls `request` until it completes or `deadline` passes (then DSHPC_FATAL). `started` is when the
// whole call began, for the elapsed time in the message. `status` may be MPI_STATUS_IGNORE.
void wait_until(MPI_Request* request, MPI_Status* status, MPI_Comm comm,
                std::chrono::steady_clock::time_point started, double timeout_s,
                const PendingRequest& what);

class MpiCollectives final : public Collectives {
 public:
  // Does not own `comm`: the caller keeps it alive for as long as this object (ProcessGroups
  // holds both, communicators first). `name` appears in every error message.
  MpiCollectives(MPI_Comm comm, std::string name, double timeout_s);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }

  void all_reduce_sum(float* data, size_t count) override;
  // In place when send == recv + rank() × count.
  void all_gather(const float* send, float* recv, size_t count) override;
  // `tag` is a MessageTag value (parallel/tags.h). The send returns once the buffer may be reused;
  // the recv checks that exactly `bytes` arrived.
  void send(const void* data, size_t bytes, int peer, int tag) override;
  void recv(void* data, size_t bytes, int peer, int tag) override;

  // Control plane: the root's buffer (any size, empty included) replaces everyone else's.
  void broadcast_bytes(std::vector<uint8_t>& buffer, int root);

  CollectiveStats stats() const override;
  double seconds(CollectiveOp op) const { return stats().seconds(op); }

  MPI_Comm comm() const { return comm_; }
  double timeout_s() const { return timeout_s_; }

 private:
  void record(CollectiveOp op, size_t bytes, std::chrono::steady_clock::time_point started);
  void check_peer(int peer, const char* op) const;

  MPI_Comm comm_;
  std::string name_;
  double timeout_s_;
  int rank_ = 0;
  int size_ = 1;
  CollectiveCounters counters_;
};

// Every rank's `bytes` bytes at `send`, in rank order into `recv` (size(comm) × bytes), with the
// polled wait of every call here; `group` names comm in messages. For small structs exchanged
// at start-up.
void all_gather_bytes(const void* send, void* recv, size_t bytes, MPI_Comm comm, double timeout_s,
                      std::string_view group);

// The root's `buffer` reaches every rank of `comm`: first its size, then the bytes (MPI_Ibcast,
// polled with the same timeout). For step plans from rank 0; `group` names comm in messages.
// `headline` and `setting`, when given, replace the timeout message's (PendingRequest).
void broadcast_bytes(std::vector<uint8_t>& buffer, int root, MPI_Comm comm, double timeout_s,
                     std::string_view group = "world", const char* timeout_headline = nullptr,
                     const char* timeout_setting = nullptr);

}  // namespace dshpc
