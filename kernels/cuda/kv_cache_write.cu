// KV cache write (CPU reference: kv_cache_write_cpu in kernels/attention_cpu.cpp): row t of the
// new keys (and values) goes to slot slots[t] of the paged cache; a negative slot skips a padding
// row. One CTA per token. The cache holds the backend's activation type.
#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per element (grid: tokens × chunks of kThreads elements), so that a decode step's
// few rows cost one memory latency rather than one per element a thread would loop over.
template <typename T>
__global__ void kv_cache_write_kernel(const T* __restrict__ k, int64_t k_row_stride,
                                      int64_t k_width, const T* __restrict__ v,
                                      int64_t v_row_stride, int64_t v_width, const int64_t* slots,
                                      T* __restrict__ cache_k, int64_t k_token_stride,
                                      T* __restrict__ cache_v, int64_t v_token_stride) {
  pdl_begin();
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) return;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c < k_width) cache_k[slot * k_token_stride + c] = k[t * k_row_stride + c];
  if (v != nullptr && c < v_width) cache_v[slot * v_token_stride + c] = v[t * v_row_stride + c];
}

}  // namespace

void launch_kv_cache_write(const Mat& k, const Mat* v, const int64_t* slots,
                           const PagedKvView& cache, DType cache_dtype, cudaStream_t stream) {
  if (k.rows == 0) return;
  DSHPC_CHECK_LE(k.rows, int64_t{0x7fffffff}) << "kv_cache_write: tokens exceed gridDim.x";
  DSHPC_CHECK(k.dtype == cache_dtype && (v == nullptr || v->dtype == cache_dtype))
      << "kv_cache_write: new keys/values must be stored as the cache's "
      << dtype_name(cache_dtype);
  dispatch_float(cache_dtype, "kv_cache_write", [&](auto tag) {
    using T = decltype(tag);
    const int64_t width = std::max(cache.kv_heads * cache.head_dim,
                                   v != nullptr ? cache.kv_heads * cache.v_dim : int64_t{0});
    const dim3 grid(static_cast<unsigned int>(k.rows),
                    static_cast<unsigned int>((width + kThreads - 1) / kThreads));
    launch_pdl("kv_cache_write_kernel", kv_cache_write_kernel<T>, grid, kThreads, 0, stream,
               static_cast<const T*>(k.data), k.stride, cache.kv_heads * cache.head_dim,
               v ? static_cast<const T*>(v->data) : nullptr, v ? v->stride : 0,
               cache.kv_heads * cache.v_dim, slots, reinterpret_cast<T*>(cache.k),
               cache.k_token_stride, reinterpret_cast<T*>(cache.v), cache.v_token_stride);
    DSHPC_CUDA_LAUNCH_CHECK("kv_cache_write_kernel");
  });
}

}  // namespace dshpc::cuda
