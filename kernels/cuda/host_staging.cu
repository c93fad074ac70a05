#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/host_staging.h"
#include "kernels/cuda/stream_wait.h"

namespace dshpc::cuda {

// The event is created on first use, not here: the owning backend's members are constructed
// before it makes its device current, and an event must belong to the device of the stream it
// is recorded on.
HostStaging::HostStaging() = default;

HostStaging::~HostStaging() {
  // The owner has waited for its stream; nothing reads the buffer any more.
  if (data_ != nullptr) cudaFreeHost(data_);
  if (event_ != nullptr) cudaEventDestroy(event_);
}

void* HostStaging::acquire(size_t bytes, AsyncWatch* watch, double timeout_s, const char* what) {
  if (pending_) {
    wait_event(event_, watch, timeout_s, what);
    pending_ = false;
  }
  if (bytes > capacity_) {
    if (data_ != nullptr) DSHPC_CUDA_CHECK(cudaFreeHost(data_));
    data_ = nullptr;
    const size_t capacity = std::max({bytes, 2 * capacity_, size_t{64} << 10});
    DSHPC_CUDA_CHECK(cudaMallocHost(&data_, capacity));
    capacity_ = capacity;
  }
  return data_;
}

void HostStaging::copied(cudaStream_t stream) {
  if (event_ == nullptr) {
    DSHPC_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
  }
  DSHPC_CUDA_CHECK(cudaEventRecord(event_, stream));
  pending_ = true;
}

}  // namespace dshpc::cuda
