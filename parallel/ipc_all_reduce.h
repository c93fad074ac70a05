// Host side of the one-shot all-reduce over CUDA IPC (kernels/cuda/ipc_all_reduce.h): the
// staging buffers and flags of a process group, mapped on every rank, and the choice of which
// messages use it. NcclCollectives uses it for all-reduces up to max_bytes and NCCL for the rest.
//
// Setup is collective over the group's MPI communicator and every rank reaches the same verdict:
// the group uses the one-shot path only when all its ranks are on one host, on distinct GPUs with
// peer access to each other, and every rank mapped every peer's buffer. Otherwise each rank logs
// why (once, rank 0 of the group) and the group stays on NCCL alone.
//
//   DSHPC_IPC_ALL_REDUCE=1                 on (off by default: NCCL for every all-reduce; the
//                                          path passed its own tests and the dense tp 2 runs on
//                                          H200s, but a run of the deepseek-v3-tiny fixture at
//                                          tp 2 with it, and with unrelated new MoE code, crashed
//                                          and the cause is not known yet)
//   DSHPC_IPC_ALL_REDUCE_MAX_BYTES=N       largest message on the one-shot path (default 1 MiB;
//                                          the group takes the smallest value of its ranks)
//
// Built with NCCL only (the file is empty otherwise).
#pragma once

#ifdef DSHPC_HAVE_NCCL

#include <cuda_runtime.h>
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/dtype.h"
#include "kernels/cuda/ipc_all_reduce.h"

namespace dshpc {

inline constexpr size_t kDefaultIpcAllReduceMaxBytes = size_t{1} << 20;

class IpcAllReduce {
 public:
  // Collective over `comm` (every rank calls it; MPI waits bounded by timeout_s). Returns nullptr
  // when the group cannot or should not use it; `why` then says why (empty when turned off).
  static std::unique_ptr<IpcAllReduce> create(MPI_Comm comm, const std::string& group, int device,
                                              double timeout_s, std::string* why);
  ~IpcAllReduce();
  IpcAllReduce(const IpcAllReduce&) = delete;
  IpcAllReduce& operator=(const IpcAllReduce&) = delete;

  // The same answer on every rank of the group for the same arguments.
  bool supports(size_t bytes, DType dtype) const;
  // In place, queued on `stream`.
  void all_reduce(void* data, size_t count, DType dtype, cudaStream_t stream);
  // Stops the job (with the CTA and the peer) when a kernel recorded a timed-out wait.
  void poll() const;

  size_t max_bytes() const { return peers_.max_bytes; }

 private:
  IpcAllReduce() = default;

  std::string group_;
  int device_ = -1;
  cuda::IpcAllReducePeers peers_;
  void* own_region_ = nullptr;
  bool opened_[cuda::kIpcAllReduceMaxRanks] = {};
  cuda::IpcAllReduceFault* fault_host_ = nullptr;
};

// One-shot all-reduces queued by this process so far (every group), for tests and logs.
int64_t ipc_all_reduce_launches();

}  // namespace dshpc

#endif  // DSHPC_HAVE_NCCL
