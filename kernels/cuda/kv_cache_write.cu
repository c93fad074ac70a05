// KV cache write (CPU reference: kv_cache_write_cpu in kernels/attention_cpu.cpp): row t of the
// new keys (and values) goes to slot slots[t] of the paged cache; a negative slot skips a padding
// row. One CTA per token. The cache holds the backend's activation type.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void kv_cache_write_kernel(const T* k, int64_t k_row_stride, int64_t k_width, const T* v,
                                      int64_t v_row_stride, int64_t v_width, const int64_t* slots,
                                      T* cache_k, int64_t k_token_stride, T* cache_v,
                                      int64_t v_token_stride) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) return;
  const T* k_row = k + t * k_row_stride;
  T* k_dst = cache_k + slot * k_token_stride;
  for (int64_t c = threadIdx.x; c < k_width; c += blockDim.x) k_dst[c] = k_row[c];
  if (v == nullptr) return;
  const T* v_row = v + t * v_row_stride;
  T* v_dst = cache_v + slot * v_token_stride;
  for (int64_t c = threadIdx.x; c < v_width; c += blockDim.x) v_dst[c] = v_row[c];
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
    kv_cache_write_kernel<T><<<static_cast<unsigned int>(k.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(k.data), k.stride, cache.kv_heads * cache.head_dim,
        v ? static_cast<const T*>(v->data) : nullptr, v ? v->stride : 0,
        cache.kv_heads * cache.v_dim, slots, reinterpret_cast<T*>(cache.k), cache.k_token_stride,
        reinterpret_cast<T*>(cache.v), cache.v_token_stride);
    DSHPC_CUDA_LAUNCH_CHECK("kv_cache_write_kernel");
  });
}

}  // namespace dshpc::cuda
