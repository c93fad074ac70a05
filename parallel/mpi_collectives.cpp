#include "parallel/mpi_collectives.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <ostream>
#include <thread>

#include "common/check.h"
#include "parallel/mpi_runtime.h"
#include "parallel/tags.h"

namespace dshpc {
namespace {

using Clock = std::chrono::steady_clock;

// MPI counts are int: larger buffers go in pieces of this many elements (bytes or floats).
constexpr size_t kMaxChunk = size_t{1} << 30;

// Back-off while polling: spin first (latency of small messages), then yield, then sleep from
// 1 µs doubling up to 1 ms (at most 1 ms of added latency once an operation is already slow).
constexpr int kSpinPolls = 256;
constexpr int kYieldPolls = 4096;
constexpr std::chrono::microseconds kMaxSleep{1000};

double seconds_since(Clock::time_point started) {
  return std::chrono::duration<double>(Clock::now() - started).count();
}

// "all_reduce_sum of 4096 bytes in group 'tp' (group rank 1 of 2, peer 0, tag 100 (activations))"
void describe(std::ostream& out, MPI_Comm comm, const PendingRequest& what) {
  int group_rank = -1;
  int group_size = -1;
  MPI_Comm_rank(comm, &group_rank);
  MPI_Comm_size(comm, &group_size);
  out << collective_op_name(what.op) << " of " << what.bytes << " bytes in group '" << what.group
      << "' (group rank " << group_rank << " of " << group_size;
  if (what.op == CollectiveOp::kBroadcast) {
    out << ", root " << what.peer;
  } else if (what.peer >= 0) {
    out << ", peer " << what.peer;
  }
  if (what.tag >= 0) out << ", tag " << what.tag << " (" << message_tag_name(what.tag) << ")";
  out << ")";
}

[[noreturn]] void report_timeout(MPI_Comm comm, Clock::time_point started, double timeout_s,
                                 const PendingRequest& what) {
  FatalMessage fatal(
      __FILE__, __LINE__,
      what.timeout_headline != nullptr ? what.timeout_headline : "MPI operation timed out:");
  describe(fatal.stream(), comm, what);
  fatal.stream() << " still pending after " << seconds_since(started) << " s (timeout " << timeout_s
                 << " s; ";
  if (what.timeout_setting != nullptr) {
    fatal.stream() << what.timeout_setting << ")";
  } else {
    fatal.stream() << kCollectiveTimeoutEnv
                   << " sets the default); a peer is stuck, dead, or took a different code path";
  }
  // ~FatalMessage prints and aborts the job.
}

// MPI_Test's own failure (a truncated message, a dead peer the library noticed): the operation
// says more than the MPI_Test call text would.
[[noreturn]] void report_failure(MPI_Comm comm, int error_code, const PendingRequest& what) {
  char text[MPI_MAX_ERROR_STRING] = "unknown MPI error";
  int length = 0;
  MPI_Error_string(error_code, text, &length);
  FatalMessage fatal(__FILE__, __LINE__, "MPI operation failed:");
  describe(fatal.stream(), comm, what);
  fatal.stream() << ": error " << error_code << " (" << text << ")";
}

size_t chunk_at(size_t offset, size_t total) {
  return std::min(kMaxChunk, total - offset);
}

// Point-to-point messages go as at least one piece: an empty message is still a signal.
size_t num_pieces(size_t total) {
  return total == 0 ? 1 : (total + kMaxChunk - 1) / kMaxChunk;
}

}  // namespace

StatusOr<double> seconds_from_env(const char* name, double fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0' || !std::isfinite(value) || value <= 0) {
    return invalid_argument(std::string(name) + "=\"" + text +
                            "\": expected a positive number of seconds");
  }
  return value;
}

StatusOr<double> collective_timeout_from_env() {
  return seconds_from_env(kCollectiveTimeoutEnv, kDefaultCollectiveTimeoutS);
}

void wait_until(MPI_Request* request, MPI_Status* status, MPI_Comm comm, Clock::time_point started,
                double timeout_s, const PendingRequest& what) {
  const auto deadline = started + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(timeout_s));
  std::chrono::microseconds sleep{1};
  for (int polls = 0;; ++polls) {
    int done = 0;
    const int error_code = MPI_Test(request, &done, status);
    if (error_code != MPI_SUCCESS) report_failure(comm, error_code, what);
    if (done) return;
    if (polls < kSpinPolls) continue;
    if (Clock::now() >= deadline) report_timeout(comm, started, timeout_s, what);
    if (polls < kYieldPolls) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, kMaxSleep);
    }
  }
}

MpiCollectives::MpiCollectives(MPI_Comm comm, std::string name, double timeout_s)
    : comm_(comm), name_(std::move(name)), timeout_s_(timeout_s) {
  DSHPC_CHECK(comm != MPI_COMM_NULL) << "MpiCollectives '" << name_ << "' over MPI_COMM_NULL";
  DSHPC_CHECK(timeout_s > 0) << "timeout " << timeout_s << " s for group '" << name_ << "'";
  DSHPC_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  DSHPC_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

void MpiCollectives::record(CollectiveOp op, size_t bytes, Clock::time_point started) {
  counters_.record(op, bytes, started);
}

CollectiveStats MpiCollectives::stats() const {
  return counters_.snapshot();
}

void MpiCollectives::check_peer(int peer, const char* op) const {
  DSHPC_CHECK(peer >= 0 && peer < size_ && peer != rank_)
      << op << " with peer " << peer << " in group '" << name_ << "' of size " << size_
      << " from group rank " << rank_;
}

void MpiCollectives::all_reduce_sum(float* data, size_t count) {
  const auto started = Clock::now();
  for (size_t offset = 0; offset < count; offset += kMaxChunk) {
    const size_t n = chunk_at(offset, count);
    MPI_Request request;
    DSHPC_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data + offset, static_cast<int>(n), MPI_FLOAT,
                                   MPI_SUM, comm_, &request));
    wait_until(&request, MPI_STATUS_IGNORE, comm_, started, timeout_s_,
               {.group = name_, .op = CollectiveOp::kAllReduce, .bytes = count * sizeof(float)});
  }
  record(CollectiveOp::kAllReduce, count * sizeof(float), started);
}

void MpiCollectives::all_gather(const float* send, float* recv, size_t count) {
  // Pieces would land strided in recv; gathers of 8 GiB per rank are not a use we have.
  DSHPC_CHECK_LE(count, size_t{INT_MAX}) << "all_gather in group '" << name_ << "'";
  const auto started = Clock::now();
  const bool in_place = send == recv + static_cast<size_t>(rank_) * count;
  MPI_Request request;
  DSHPC_MPI_CHECK(MPI_Iallgather(in_place ? MPI_IN_PLACE : send, static_cast<int>(count), MPI_FLOAT,
                                 recv, static_cast<int>(count), MPI_FLOAT, comm_, &request));
  wait_until(&request, MPI_STATUS_IGNORE, comm_, started, timeout_s_,
             {.group = name_, .op = CollectiveOp::kAllGather, .bytes = count * sizeof(float)});
  record(CollectiveOp::kAllGather, count * sizeof(float), started);
}

void MpiCollectives::send(const void* data, size_t bytes, int peer, int tag) {
  check_peer(peer, "send");
  const auto started = Clock::now();
  const auto* base = static_cast<const uint8_t*>(data);
  // Pieces arrive in order: MPI does not reorder messages with the same source, tag and comm.
  for (size_t piece = 0; piece < num_pieces(bytes); ++piece) {
    const size_t offset = piece * kMaxChunk;
    const size_t n = chunk_at(offset, bytes);
    MPI_Request request;
    DSHPC_MPI_CHECK(
        MPI_Isend(base + offset, static_cast<int>(n), MPI_BYTE, peer, tag, comm_, &request));
    wait_until(
        &request, MPI_STATUS_IGNORE, comm_, started, timeout_s_,
        {.group = name_, .op = CollectiveOp::kSend, .bytes = bytes, .peer = peer, .tag = tag});
  }
  record(CollectiveOp::kSend, bytes, started);
}

void MpiCollectives::recv(void* data, size_t bytes, int peer, int tag) {
  check_peer(peer, "recv");
  const auto started = Clock::now();
  auto* base = static_cast<uint8_t*>(data);
  for (size_t piece = 0; piece < num_pieces(bytes); ++piece) {
    const size_t offset = piece * kMaxChunk;
    const size_t n = chunk_at(offset, bytes);
    MPI_Request request;
    MPI_Status status;
    DSHPC_MPI_CHECK(
        MPI_Irecv(base + offset, static_cast<int>(n), MPI_BYTE, peer, tag, comm_, &request));
    wait_until(
        &request, &status, comm_, started, timeout_s_,
        {.group = name_, .op = CollectiveOp::kRecv, .bytes = bytes, .peer = peer, .tag = tag});
    // A longer message fails in MPI_Test (truncation); a shorter one would pass silently.
    int received = 0;
    DSHPC_MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &received));
    DSHPC_CHECK_EQ(static_cast<size_t>(received), n)
        << "recv in group '" << name_ << "' from peer " << peer << " tag " << tag << " ("
        << message_tag_name(tag) << "): the sender sent a different size";
  }
  record(CollectiveOp::kRecv, bytes, started);
}

void MpiCollectives::broadcast_bytes(std::vector<uint8_t>& buffer, int root) {
  const auto started = Clock::now();
  dshpc::broadcast_bytes(buffer, root, comm_, timeout_s_, name_);
  record(CollectiveOp::kBroadcast, buffer.size(), started);
}

void all_gather_bytes(const void* send, void* recv, size_t bytes, MPI_Comm comm, double timeout_s,
                      std::string_view group) {
  DSHPC_CHECK_LE(bytes, size_t{INT_MAX}) << "all_gather_bytes in group '" << group << "'";
  int size = 0;
  DSHPC_MPI_CHECK(MPI_Comm_size(comm, &size));
  const auto started = Clock::now();
  MPI_Request request;
  DSHPC_MPI_CHECK(MPI_Iallgather(send, static_cast<int>(bytes), MPI_BYTE, recv,
                                 static_cast<int>(bytes), MPI_BYTE, comm, &request));
  wait_until(&request, MPI_STATUS_IGNORE, comm, started, timeout_s,
             {.group = group, .op = CollectiveOp::kAllGather, .bytes = bytes * size});
}

void broadcast_bytes(std::vector<uint8_t>& buffer, int root, MPI_Comm comm, double timeout_s,
                     std::string_view group, const char* timeout_headline,
                     const char* timeout_setting) {
  const auto started = Clock::now();
  int rank = 0;
  int size = 0;
  DSHPC_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  DSHPC_MPI_CHECK(MPI_Comm_size(comm, &size));
  DSHPC_CHECK(root >= 0 && root < size)
      << "broadcast root " << root << " in group '" << group << "' of size " << size;

  uint64_t length = rank == root ? buffer.size() : 0;
  MPI_Request request;
  DSHPC_MPI_CHECK(MPI_Ibcast(&length, 1, MPI_UINT64_T, root, comm, &request));
  wait_until(&request, MPI_STATUS_IGNORE, comm, started, timeout_s,
             {.group = group,
              .op = CollectiveOp::kBroadcast,
              .bytes = sizeof(length),
              .peer = root,
              .timeout_headline = timeout_headline,
              .timeout_setting = timeout_setting});
  if (rank != root) buffer.resize(length);

  for (size_t offset = 0; offset < length; offset += kMaxChunk) {
    const size_t n = chunk_at(offset, length);
    DSHPC_MPI_CHECK(
        MPI_Ibcast(buffer.data() + offset, static_cast<int>(n), MPI_BYTE, root, comm, &request));
    wait_until(&request, MPI_STATUS_IGNORE, comm, started, timeout_s,
               {.group = group,
                .op = CollectiveOp::kBroadcast,
                .bytes = length,
                .peer = root,
                .timeout_headline = timeout_headline,
                .timeout_setting = timeout_setting});
  }
}

}  // namespace dshpc
