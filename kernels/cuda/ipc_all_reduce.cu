// One-shot all-reduce over CUDA IPC: see ipc_all_reduce.h for the protocol.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/ipc_all_reduce.h"

namespace dshpc::cuda {
namespace {

__device__ __forceinline__ void store_release_sys(uint32_t* flag, uint32_t value) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(flag), "r"(value) : "memory");
}

__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t* flag) {
  uint32_t value;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(value) : "l"(flag) : "memory");
  return value;
}

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// 16 bytes of T: 4 floats or 8 bf16.
template <typename T>
struct Chunk {
  static constexpr int kElems = 16 / sizeof(T);
};

// Loads chunk i of `data`, which need not be 16-byte aligned (every rank takes the same path
// through the protocol either way; only this access differs).
template <typename T, bool kAligned>
__device__ __forceinline__ uint4 load_chunk(const T* data, size_t i) {
  if constexpr (kAligned) {
    return reinterpret_cast<const uint4*>(data)[i];
  } else {
    uint4 out;
    T* elems = reinterpret_cast<T*>(&out);
#pragma unroll
    for (int k = 0; k < Chunk<T>::kElems; ++k) elems[k] = data[i * Chunk<T>::kElems + k];
    return out;
  }
}

template <typename T, bool kAligned>
__device__ __forceinline__ void store_chunk(T* data, size_t i, const uint4& value) {
  if constexpr (kAligned) {
    reinterpret_cast<uint4*>(data)[i] = value;
  } else {
    const T* elems = reinterpret_cast<const T*>(&value);
#pragma unroll
    for (int k = 0; k < Chunk<T>::kElems; ++k) data[i * Chunk<T>::kElems + k] = elems[k];
  }
}

template <typename T, bool kAligned>
__global__ void __launch_bounds__(kIpcAllReduceThreads)
    ipc_all_reduce_kernel(IpcAllReducePeers peers, T* data, size_t chunks) {
  constexpr int kElems = Chunk<T>::kElems;
  const int block = blockIdx.x;
  __shared__ uint32_t epoch_shared;
  if (threadIdx.x == 0) epoch_shared = peers.epochs[block] + 1;
  __syncthreads();
  const uint32_t epoch = epoch_shared;
  const size_t half = kIpcAllReduceFlagBytes + (epoch & 1u) * peers.max_bytes;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t first = static_cast<size_t>(block) * blockDim.x + threadIdx.x;

  // 1. This rank's share into its staging buffer.
  uint4* mine = reinterpret_cast<uint4*>(peers.regions[peers.rank] + half);
  for (size_t i = first; i < chunks; i += stride) mine[i] = load_chunk<T, kAligned>(data, i);
  __syncthreads();

  // 2. Flags: thread r tells rank r that this CTA's share is written (release: the CTA's writes
  // above, ordered before it by the barrier, are visible first), then waits for rank r's flag.
  if (threadIdx.x < peers.world) {
    const int r = threadIdx.x;
    uint32_t* remote =
        reinterpret_cast<uint32_t*>(peers.regions[r]) + block * kIpcAllReduceMaxRanks + peers.rank;
    store_release_sys(remote, epoch);
    const uint32_t* local = reinterpret_cast<const uint32_t*>(peers.regions[peers.rank]) +
                            block * kIpcAllReduceMaxRanks + r;
    // A peer may already be one call ahead (its flag then holds epoch + 1): wait for "at least".
    if (static_cast<int32_t>(load_acquire_sys(local) - epoch) < 0) {
      const unsigned long long started = global_ns();
      while (static_cast<int32_t>(load_acquire_sys(local) - epoch) < 0) {
        if (global_ns() - started > peers.timeout_ns) {
          peers.fault->block = block;
          peers.fault->missing_peer_plus_one = r + 1;
          __threadfence_system();
          __trap();
        }
      }
    }
  }
  __syncthreads();

  // 3. Sum every rank's share in rank order; the result goes back in place.
  for (size_t i = first; i < chunks; i += stride) {
    float acc[kElems];
#pragma unroll
    for (int k = 0; k < kElems; ++k) acc[k] = 0.0f;
    for (int r = 0; r < peers.world; ++r) {
      const uint4 v = __ldcg(reinterpret_cast<const uint4*>(peers.regions[r] + half) + i);
      const T* elems = reinterpret_cast<const T*>(&v);
#pragma unroll
      for (int k = 0; k < kElems; ++k) acc[k] += to_float(elems[k]);
    }
    uint4 out;
    T* elems = reinterpret_cast<T*>(&out);
#pragma unroll
    for (int k = 0; k < kElems; ++k) elems[k] = from_float<T>(acc[k]);
    store_chunk<T, kAligned>(data, i, out);
  }
  if (threadIdx.x == 0) peers.epochs[block] = epoch;
}

template <typename T>
void launch_typed(const IpcAllReducePeers& peers, void* data, size_t chunks, cudaStream_t stream) {
  T* typed = static_cast<T*>(data);
  const bool aligned = reinterpret_cast<uintptr_t>(data) % 16 == 0;
  if (aligned) {
    ipc_all_reduce_kernel<T, true>
        <<<kIpcAllReduceBlocks, kIpcAllReduceThreads, 0, stream>>>(peers, typed, chunks);
  } else {
    ipc_all_reduce_kernel<T, false>
        <<<kIpcAllReduceBlocks, kIpcAllReduceThreads, 0, stream>>>(peers, typed, chunks);
  }
  DSHPC_CUDA_LAUNCH_CHECK("ipc_all_reduce");
}

}  // namespace

bool ipc_all_reduce_supports(const IpcAllReducePeers& peers, size_t bytes, DType dtype) {
  return (dtype == DType::kF32 || dtype == DType::kBF16) && bytes > 0 && bytes % 16 == 0 &&
         bytes <= peers.max_bytes && peers.world >= 2 && peers.world <= kIpcAllReduceMaxRanks;
}

void launch_ipc_all_reduce(const IpcAllReducePeers& peers, void* data, size_t count, DType dtype,
                           cudaStream_t stream) {
  const size_t bytes = count * dtype_size(dtype);
  DSHPC_CHECK(ipc_all_reduce_supports(peers, bytes, dtype))
      << "ipc all-reduce of " << count << " " << dtype_name(dtype) << " elements (limit "
      << peers.max_bytes << " bytes)";
  if (dtype == DType::kF32) {
    launch_typed<float>(peers, data, bytes / 16, stream);
  } else {
    launch_typed<bf16>(peers, data, bytes / 16, stream);
  }
}

}  // namespace dshpc::cuda
