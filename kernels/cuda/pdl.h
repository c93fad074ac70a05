// Programmatic dependent launch (sm_90 and later). A decode step is a chain of short kernels, each
// reading what the one before wrote; launched normally, a kernel's CTAs only start once the one
// before has drained. Launched with launch_pdl, its CTAs start as soon as every CTA of the kernel
// before has started (pdl_launch_dependents), and wait in pdl_wait() until that kernel has
// finished and its writes are visible. What a kernel does before pdl_wait() overlaps the kernel
// before: only loads of data no kernel of the step writes (weights).
//
// Rule for every kernel launched with launch_pdl: no load of step data and no store of any kind
// before pdl_wait(). Since each kernel waits for the one before it, pdl_wait() also covers every
// earlier kernel in the stream. A kernel launched normally after one of these waits for it to
// finish, as always. DSHPC_PDL=0 launches every kernel normally (for comparison).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace dshpc::cuda {

// Whether launch_pdl allows the early start (DSHPC_PDL, read once; on unless "0").
bool pdl_enabled();

// Both are no-ops in a kernel that was launched normally.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The start of a kernel that touches step data from its first instruction.
__device__ __forceinline__ void pdl_begin() {
  pdl_wait();
  pdl_launch_dependents();
}

// Launches from this thread within its scope are normal launches: their CTAs start only once the
// kernel before has finished. For the kernel after a long, narrow one (the MoE gate's few CTAs)
// while another branch of the step runs beside it: started early, its CTAs would take the SMs
// that branch needs, only to wait.
class NoEarlyStart {
 public:
  NoEarlyStart() { ++depth(); }
  ~NoEarlyStart() { --depth(); }
  NoEarlyStart(const NoEarlyStart&) = delete;
  NoEarlyStart& operator=(const NoEarlyStart&) = delete;
  static bool active() { return depth() > 0; }

 private:
  static int& depth() {
    thread_local int scopes = 0;
    return scopes;
  }
};

// kernel<<<grid, block, shared_bytes, stream>>>(args...), as a programmatic dependent launch;
// with cluster > 0 in thread block clusters of that many CTAs along x (sm_90: see
// cluster_launch_supported in device_info.h).
template <typename... Params, typename... Args>
void launch_pdl_cluster(const char* name, void (*kernel)(Params...), dim3 grid, unsigned cluster,
                        dim3 block, size_t shared_bytes, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[0].val.programmaticStreamSerializationAllowed =
      pdl_enabled() && !NoEarlyStart::active() ? 1 : 0;
  attributes[1].id = cudaLaunchAttributeClusterDimension;
  attributes[1].val.clusterDim.x = cluster;
  attributes[1].val.clusterDim.y = 1;
  attributes[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = cluster > 0 ? 2 : 1;
  const cudaError_t error = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (error != cudaSuccess) {
    ::dshpc::FatalMessage(__FILE__, __LINE__, "CUDA kernel launch failed:").stream()
        << name << ": " << cudaGetErrorName(error) << " (" << cudaGetErrorString(error) << ")";
  }
}

template <typename... Params, typename... Args>
void launch_pdl(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                size_t shared_bytes, cudaStream_t stream, Args&&... args) {
  launch_pdl_cluster(name, kernel, grid, 0, block, shared_bytes, stream,
                     std::forward<Args>(args)...);
}

}  // namespace dshpc::cuda
