// Collectives over NCCL: the GPU data plane of one process group (tensor or pipeline parallel).
//
// The group's first rank creates the NCCL unique id and broadcasts it over the group's MPI
// communicator (broadcast_bytes, with the group's timeout); the communicator is non-blocking, so
// its creation and every call are polled (ncclCommGetAsyncError) against the timeout instead of
// blocking inside NCCL. Operations are queued on the CUDA backend's stream and complete in stream
// order: later kernels on that stream see their results, and the backend's waits (which poll
// this communicator through the AsyncWatch) turn an asynchronous NCCL error into a stopped job
// (ncclCommAbort, then DSHPC_FATAL with group, rank, host and device) and a hang into a timeout.
//
// This header compiles without CUDA; without NCCL make_nccl_collectives returns an error.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "common/status.h"
#include "kernels/cuda/async_watch.h"
#include "parallel/collectives.h"

namespace dshpc {

// True when this binary was built with NCCL.
bool nccl_built();

// Collective over `comm` (every rank of the group calls it). `cuda_stream` is the backend's
// cudaStream_t and `device` its GPU; `watch` the backend's AsyncWatch, which this communicator
// joins for as long as it lives. send/recv tags are not used by NCCL: messages between two ranks
// of a group match in the order they were issued, which is the order the pipeline uses.
StatusOr<std::unique_ptr<Collectives>> make_nccl_collectives(
    MPI_Comm comm, std::string name, double timeout_s, int device, void* cuda_stream,
    std::shared_ptr<cuda::AsyncWatch> watch);

}  // namespace dshpc
