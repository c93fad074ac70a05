#include "parallel/nccl_collectives.h"

#ifdef DSHPC_HAVE_NCCL

#include <cuda_runtime.h>
#include <nccl.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "common/check.h"
#include "common/log.h"
#include "parallel/ipc_all_reduce.h"
#include "parallel/mpi_collectives.h"

namespace dshpc {
namespace {

using Clock = std::chrono::steady_clock;

// Every NCCL call goes through check() with its text and call site, for the fatal message.
#define DSHPC_NCCL_CHECK(call) check((call), #call, __FILE__, __LINE__)

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kF64:
      return ncclFloat64;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kI8:
      return ncclInt8;
    case DType::kU8:
    case DType::kBool:
      return ncclUint8;
    case DType::kF8E4M3:
      break;
  }
  DSHPC_FATAL() << "NCCL: no data type for " << dtype_name(dtype);
  return ncclUint8;
}

class NcclCollectives final : public Collectives {
 public:
  NcclCollectives(MPI_Comm comm, std::string name, double timeout_s, int device,
                  cudaStream_t stream, std::shared_ptr<cuda::AsyncWatch> watch)
      : name_(std::move(name)),
        timeout_s_(timeout_s),
        device_(device),
        stream_(stream),
        watch_(std::move(watch)) {
    MPI_Comm_rank(comm, &rank_);
    MPI_Comm_size(comm, &size_);
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    std::vector<uint8_t> bytes;
    if (rank_ == 0) {
      DSHPC_NCCL_CHECK(ncclGetUniqueId(&id));
      bytes.assign(reinterpret_cast<const uint8_t*>(id.internal),
                   reinterpret_cast<const uint8_t*>(id.internal) + sizeof(id.internal));
    }
    broadcast_bytes(bytes, 0, comm, timeout_s_, name_ + " (NCCL unique id)");
    DSHPC_CHECK_EQ(bytes.size(), sizeof(id.internal))
        << "NCCL unique id of group '" << name_ << "'";
    std::memcpy(id.internal, bytes.data(), sizeof(id.internal));

    const cudaError_t set = cudaSetDevice(device_);
    DSHPC_CHECK(set == cudaSuccess)
        << "cudaSetDevice(" << device_ << "): " << cudaGetErrorString(set);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every call returns at once; we poll with our timeout
    DSHPC_NCCL_CHECK(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config));
    // With DSHPC_IPC_ALL_REDUCE=1, small all-reduces (decode steps) take the one-shot path over
    // CUDA IPC when the whole group is on one host; every rank reaches the same verdict.
    std::string why;
    ipc_ = IpcAllReduce::create(comm, name_, device_, timeout_s_, &why);
    if (rank_ == 0 && ipc_ != nullptr) {
      process_logger().info("group '" + name_ + "': one-shot all-reduce over CUDA IPC for " +
                            "messages up to " + std::to_string(ipc_->max_bytes()) +
                            " bytes, NCCL above");
    } else if (rank_ == 0 && !why.empty()) {
      process_logger().info("group '" + name_ + "': NCCL for every all-reduce (no one-shot " +
                            "path: " + why + ")");
    }
    watch_id_ = watch_->add(
        name_, [this] { poll(); },
        [this] {
          if (!aborted_.exchange(true)) ncclCommAbort(comm_);
        });
  }

  ~NcclCollectives() override {
    watch_->remove(watch_id_);
    if (comm_ == nullptr || aborted_) return;
    // Flush and tear down without waiting blindly; on a failure or past the timeout abort.
    ncclResult_t state = ncclCommFinalize(comm_);
    const auto started = Clock::now();
    while (state == ncclInProgress || state == ncclSuccess) {
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
      if (state == ncclSuccess) break;
      if (std::chrono::duration<double>(Clock::now() - started).count() > timeout_s_) break;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (state == ncclSuccess) {
      ncclCommDestroy(comm_);
    } else {
      std::fprintf(stderr, "dshpc [%s]: NCCL group '%s' did not finalize (%s); aborting it\n",
                   process_identity().c_str(), name_.c_str(), ncclGetErrorString(state));
      ncclCommAbort(comm_);
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }

  void all_reduce_sum(float* data, size_t count) override {
    all_reduce_sum_typed(data, count, DType::kF32);
  }
  void all_gather(const float* send, float* recv, size_t count) override {
    all_gather_typed(send, recv, count, DType::kF32);
  }

  void all_reduce_sum_typed(void* data, size_t count, DType dtype) override {
    if (count == 0) return;
    const auto started = Clock::now();
    if (ipc_ != nullptr && ipc_->supports(count * dtype_size(dtype), dtype)) {
      ipc_->all_reduce(data, count, dtype, stream_);
      record(CollectiveOp::kAllReduce, count * dtype_size(dtype), started);
      return;
    }
    DSHPC_NCCL_CHECK(ncclAllReduce(data, data, count, nccl_type(dtype), ncclSum, comm_, stream_));
    record(CollectiveOp::kAllReduce, count * dtype_size(dtype), started);
  }

  void all_gather_typed(const void* send, void* recv, size_t count, DType dtype) override {
    if (count == 0) return;
    const auto started = Clock::now();
    DSHPC_NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(dtype), comm_, stream_));
    record(CollectiveOp::kAllGather, count * dtype_size(dtype), started);
  }

  void send(const void* data, size_t bytes, int peer, int tag) override {
    check_peer(peer, "send");
    const auto started = Clock::now();
    if (bytes > 0) {
      DSHPC_NCCL_CHECK(ncclSend(data, bytes, ncclUint8, peer, comm_, stream_));
    }
    record(CollectiveOp::kSend, bytes, started);
  }

  void recv(void* data, size_t bytes, int peer, int tag) override {
    check_peer(peer, "recv");
    const auto started = Clock::now();
    if (bytes > 0) {
      DSHPC_NCCL_CHECK(ncclRecv(data, bytes, ncclUint8, peer, comm_, stream_));
    }
    record(CollectiveOp::kRecv, bytes, started);
  }

  // Seconds are the host's time to queue each operation; completion is in stream order.
  bool stream_ordered() const override { return true; }

  CollectiveStats stats() const override { return counters_.snapshot(); }

 private:
  // ncclInProgress (a non-blocking communicator still working on the call) is settled by
  // polling before the next NCCL call, as NCCL requires; any other failure stops the job.
  void check(ncclResult_t result, const char* call, const char* file, int line) {
    if (result == ncclSuccess) return;
    if (result != ncclInProgress) fail(call, result, file, line);
    const auto started = Clock::now();
    for (;;) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t queried = ncclCommGetAsyncError(comm_, &state);
      if (queried != ncclSuccess) fail("ncclCommGetAsyncError", queried, file, line);
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) fail(call, state, file, line);
      const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
      if (elapsed > timeout_s_) {
        if (!aborted_.exchange(true)) ncclCommAbort(comm_);
        FatalMessage(file, line, "NCCL call timed out:").stream()
            << call << " in group '" << name_ << "' (group rank " << rank_ << " of " << size_
            << ", device " << device_ << ") still in progress after " << elapsed << " s (timeout "
            << timeout_s_ << " s; DSHPC_COLLECTIVE_TIMEOUT_S sets it); a peer is stuck or dead";
      }
      std::this_thread::sleep_for(std::chrono::microseconds(elapsed < 0.01 ? 10 : 200));
    }
  }

  // Asked by the backend's waits: an asynchronous error stops the job.
  void poll() {
    if (aborted_) return;
    if (ipc_ != nullptr) ipc_->poll();
    ncclResult_t state = ncclSuccess;
    const ncclResult_t queried = ncclCommGetAsyncError(comm_, &state);
    if (queried != ncclSuccess) fail("ncclCommGetAsyncError", queried, __FILE__, __LINE__);
    if (state != ncclSuccess && state != ncclInProgress) {
      fail("an earlier NCCL operation (asynchronous error)", state, __FILE__, __LINE__);
    }
  }

  [[noreturn]] void fail(const char* call, ncclResult_t result, const char* file, int line) {
    const char* detail = comm_ != nullptr ? ncclGetLastError(comm_) : ncclGetLastError(nullptr);
    FatalMessage fatal(file, line, "NCCL call failed:");
    fatal.stream() << call << " in group '" << name_ << "' (group rank " << rank_ << " of " << size_
                   << ", device " << device_ << ") returned " << ncclGetErrorString(result)
                   << (detail && *detail ? ": " : "") << (detail ? detail : "");
    if (comm_ != nullptr && !aborted_.exchange(true)) ncclCommAbort(comm_);
    // ~FatalMessage prints and stops the job.
  }

  void check_peer(int peer, const char* op) const {
    DSHPC_CHECK(peer >= 0 && peer < size_ && peer != rank_)
        << op << " to peer " << peer << " in group '" << name_ << "' of " << size_ << " (rank "
        << rank_ << ")";
  }

  void record(CollectiveOp op, size_t bytes, Clock::time_point started) {
    counters_.record(op, bytes, started);
  }

  std::string name_;
  double timeout_s_;
  int device_;
  cudaStream_t stream_;
  std::shared_ptr<cuda::AsyncWatch> watch_;
  cuda::AsyncWatch::Id watch_id_ = 0;
  int rank_ = 0;
  int size_ = 1;
  ncclComm_t comm_ = nullptr;
  std::unique_ptr<IpcAllReduce> ipc_;
  std::atomic<bool> aborted_{false};
  CollectiveCounters counters_;
};

}  // namespace

bool nccl_built() {
  return true;
}

StatusOr<std::unique_ptr<Collectives>> make_nccl_collectives(
    MPI_Comm comm, std::string name, double timeout_s, int device, void* cuda_stream,
    std::shared_ptr<cuda::AsyncWatch> watch) {
  if (watch == nullptr || cuda_stream == nullptr) {
    return invalid_argument("NCCL group '" + name + "' needs the CUDA backend's stream and watch");
  }
  return std::unique_ptr<Collectives>(new NcclCollectives(comm, std::move(name), timeout_s, device,
                                                          static_cast<cudaStream_t>(cuda_stream),
                                                          std::move(watch)));
}

}  // namespace dshpc

#else  // no NCCL

namespace dshpc {

bool nccl_built() {
  return false;
}

StatusOr<std::unique_ptr<Collectives>> make_nccl_collectives(MPI_Comm, std::string name, double,
                                                             int, void*,
                                                             std::shared_ptr<cuda::AsyncWatch>) {
  return unavailable("NCCL group '" + name + "': this dshpc was built without NCCL");
}

}  // namespace dshpc

#endif  // DSHPC_HAVE_NCCL
