// make_cuda_backend and friends in a build without CUDA (the real ones are in cuda/*.cu).
#include "kernels/cuda_backend.h"

#ifndef DSHPC_HAVE_CUDA

#include "common/check.h"

namespace dshpc {

bool cuda_backend_built() {
  return false;
}

int cuda_device_count() {
  return 0;
}

StatusOr<int> pick_local_gpu(int, int) {
  return unavailable("this dshpc was built without CUDA (no nvcc at configure time)");
}

StatusOr<std::unique_ptr<Backend>> make_cuda_backend(int, DType) {
  return unavailable("this dshpc was built without CUDA (no nvcc at configure time)");
}

CudaBackendHandles cuda_backend_handles(Backend& backend) {
  DSHPC_FATAL() << "backend " << backend.name() << " is not a CUDA backend (built without CUDA)";
  return {};
}

CudaMemoryStats cuda_memory_stats(Backend& backend) {
  DSHPC_FATAL() << "backend " << backend.name() << " is not a CUDA backend (built without CUDA)";
  return {};
}

CudaPathCounters cuda_path_counters(Backend& backend) {
  DSHPC_FATAL() << "backend " << backend.name() << " is not a CUDA backend (built without CUDA)";
  return {};
}

}  // namespace dshpc

#endif  // DSHPC_HAVE_CUDA
