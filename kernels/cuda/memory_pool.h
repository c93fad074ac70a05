// A caching pool of device memory for one backend. Blocks freed by DeviceBuffer go to a free list
// and are handed out again; cudaMalloc runs only when no cached block fits (the first steps, or a
// step larger than any before), so a serving loop in its steady state allocates nothing. All use
// is ordered on the backend's main stream (its side branch is joined back into it before any
// release), so a block released while kernels that read it are still queued can be reused at
// once: the next user's work is queued behind them.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

namespace dshpc::cuda {

struct PoolStats {
  int64_t device_allocations = 0;  // cudaMalloc calls so far
  int64_t in_use_bytes = 0;        // block bytes handed out
  int64_t cached_bytes = 0;        // block bytes on the free list
};

class DevicePool {
 public:
  DevicePool() = default;
  ~DevicePool();  // cudaFree of every block; the caller synchronises its stream first
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // A block of at least `bytes` (256-byte aligned). On out-of-memory the cache is returned to the
  // driver and the allocation retried once; then the job stops with the sizes in the message.
  void* allocate(size_t bytes);
  // The same, but nullptr instead of stopping when the device is out of memory after the retry
  // (any other CUDA error still stops the job). For a step's workspace (Backend::try_allocate).
  void* try_allocate(size_t bytes);
  void release(void* block);
  // Returns cached blocks to the driver (synchronises the device: not for the step loop).
  void trim();
  PoolStats stats() const;

  // Sizes are rounded up to this granularity; a cached block is reused for a request when it is
  // at most twice the rounded request (so scratch buffers that grow a little reuse their blocks,
  // and a small request never pins a huge block).
  static constexpr size_t kGranularity = 512;

 private:
  void trim_locked();
  // nullptr with `status` set when cudaMalloc failed even after the cache was given back.
  void* allocate_locked(size_t rounded, cudaError_t* status);

  mutable std::mutex mutex_;
  std::multimap<size_t, void*> free_;         // block size → block
  std::unordered_map<void*, size_t> in_use_;  // block → block size
  PoolStats stats_;
};

}  // namespace dshpc::cuda
