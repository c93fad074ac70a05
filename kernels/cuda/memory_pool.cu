#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/memory_pool.h"

namespace dshpc::cuda {

DevicePool::~DevicePool() {
  std::lock_guard<std::mutex> lock(mutex_);
  trim_locked();
  // Blocks still handed out belong to DeviceBuffers that outlive the backend (a bug elsewhere);
  // free them anyway so that the device memory is not leaked.
  for (auto& [block, size] : in_use_) cudaFree(block);
  in_use_.clear();
}

void* DevicePool::allocate_locked(size_t rounded, cudaError_t* status) {
  auto it = free_.lower_bound(rounded);
  if (it != free_.end() && it->first <= 2 * rounded) {
    void* block = it->second;
    const size_t size = it->first;
    free_.erase(it);
    in_use_[block] = size;
    stats_.cached_bytes -= static_cast<int64_t>(size);
    stats_.in_use_bytes += static_cast<int64_t>(size);
    return block;
  }
  void* block = nullptr;
  *status = cudaMalloc(&block, rounded);
  if (*status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the error before retrying with the cache given back
    trim_locked();
    *status = cudaMalloc(&block, rounded);
  }
  if (*status != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  ++stats_.device_allocations;
  in_use_[block] = rounded;
  stats_.in_use_bytes += static_cast<int64_t>(rounded);
  return block;
}

void* DevicePool::allocate(size_t bytes) {
  const size_t rounded = (bytes + kGranularity - 1) / kGranularity * kGranularity;
  std::lock_guard<std::mutex> lock(mutex_);
  cudaError_t status = cudaSuccess;
  void* block = allocate_locked(rounded, &status);
  if (block == nullptr) {
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    DSHPC_FATAL() << "cudaMalloc of " << rounded << " bytes failed: " << cudaGetErrorName(status)
                  << " (" << cudaGetErrorString(status) << "); device free " << free_bytes << " of "
                  << total_bytes << " bytes, pool in use " << stats_.in_use_bytes << " bytes";
  }
  return block;
}

void* DevicePool::try_allocate(size_t bytes) {
  const size_t rounded = (bytes + kGranularity - 1) / kGranularity * kGranularity;
  std::lock_guard<std::mutex> lock(mutex_);
  cudaError_t status = cudaSuccess;
  void* block = allocate_locked(rounded, &status);
  if (block == nullptr && status != cudaErrorMemoryAllocation) {
    DSHPC_FATAL() << "cudaMalloc of " << rounded << " bytes failed: " << cudaGetErrorName(status)
                  << " (" << cudaGetErrorString(status) << ")";
  }
  return block;
}

void DevicePool::release(void* block) {
  if (block == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = in_use_.find(block);
  DSHPC_CHECK(it != in_use_.end()) << "release of a block this pool did not hand out";
  free_.emplace(it->second, block);
  stats_.in_use_bytes -= static_cast<int64_t>(it->second);
  stats_.cached_bytes += static_cast<int64_t>(it->second);
  in_use_.erase(it);
}

void DevicePool::trim() {
  std::lock_guard<std::mutex> lock(mutex_);
  trim_locked();
}

void DevicePool::trim_locked() {
  for (auto& [size, block] : free_) DSHPC_CUDA_CHECK(cudaFree(block));
  free_.clear();
  stats_.cached_bytes = 0;
}

PoolStats DevicePool::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace dshpc::cuda
