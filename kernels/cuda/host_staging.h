// Pinned host memory for asynchronous copies between host and device, reused once the copy
// that last used it has completed (an event marks it). Pinned memory makes cudaMemcpyAsync truly
// asynchronous, so the per-step metadata and the MoE permutation reach the device without
// stalling the stream; pageable memory would make every copy a hidden synchronisation.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/async_watch.h"

namespace dshpc::cuda {

class HostStaging {
 public:
  HostStaging();
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;

  // At least `bytes` of pinned memory, after the previous copy from or to it has completed
  // (polled with the timeout). Grows by doubling; the contents are not kept across a growth.
  void* acquire(size_t bytes, AsyncWatch* watch, double timeout_s, const char* what);
  // Marks the end of the copies just queued on `stream` that use the buffer.
  void copied(cudaStream_t stream);

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
  cudaEvent_t event_ = nullptr;
  bool pending_ = false;
};

}  // namespace dshpc::cuda
