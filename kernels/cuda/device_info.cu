#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {

int visible_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

std::string device_description(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  char text[512];
  std::snprintf(text, sizeof(text), "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                static_cast<double>(prop.totalGlobalMem) / (1ull << 30));
  return text;
}

bool pdl_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("DSHPC_PDL");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
}

int max_dynamic_smem() {
  int device = 0, bytes = 0;
  DSHPC_CUDA_CHECK(cudaGetDevice(&device));
  DSHPC_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

bool cluster_launch_supported() {
  int device = 0, supported = 0;
  DSHPC_CUDA_CHECK(cudaGetDevice(&device));
  DSHPC_CUDA_CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrClusterLaunch, device));
  return supported != 0;
}

}  // namespace dshpc::cuda

#include "kernels/cuda_backend.h"

namespace dshpc {

int cuda_device_count() {
  return cuda::visible_device_count();
}

StatusOr<int> pick_local_gpu(int local_rank, int local_size) {
  const int count = cuda::visible_device_count();
  if (count == 0) {
    return unavailable("--device cuda: no CUDA device is visible on this node");
  }
  if (local_size > count) {
    return invalid_argument(
        "--device cuda: " + std::to_string(local_size) + " ranks on this node but only " +
        std::to_string(count) +
        " visible GPU(s); two ranks would share a GPU, which is refused (start at most one rank "
        "per GPU, e.g. mpirun -np " +
        std::to_string(count) + " per node)");
  }
  return local_rank % count;
}

}  // namespace dshpc
