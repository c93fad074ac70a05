// RMSNorm and the fused residual add + RMSNorm (CPU reference: kernels/rmsnorm_cpu.cpp):
// out = weight · (x · rsqrt(mean(x²) + eps)), one CTA per row, sum of squares in float32 by a
// tree reduction (the CPU's double sum differs by a few float ulps at most). With bf16 storage
// the residual is rounded to bf16 after the add and the norm is taken of the rounded values, as a
// bf16 PyTorch model does.
#include <initializer_list>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

// Reads the whole row before any write, and each thread writes only elements it read itself, so
// out may alias x.
template <typename T, typename W>
__global__ void rmsnorm_kernel(const T* x, int64_t x_stride, const W* weight, T* out,
                               int64_t out_stride, int64_t dim, float eps) {
  pdl_begin();
  __shared__ float scratch[32];
  const T* row = x + blockIdx.x * x_stride;
  float sum_squares = 0.0f;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    const float v = to_float(row[c]);
    sum_squares += v * v;
  }
  sum_squares = block_sum(sum_squares, scratch);
  const float inv = 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);
  T* dst = out + blockIdx.x * out_stride;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    dst[c] = from_float<T>(to_float(weight[c]) * (to_float(row[c]) * inv));
  }
}

template <typename T, typename W>
__global__ void add_rmsnorm_kernel(T* residual, int64_t residual_stride, const T* delta,
                                   int64_t delta_stride, const W* weight, T* out,
                                   int64_t out_stride, int64_t dim, float eps) {
  pdl_begin();
  __shared__ float scratch[32];
  T* row = residual + blockIdx.x * residual_stride;
  const T* d = delta + blockIdx.x * delta_stride;
  float sum_squares = 0.0f;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    const T stored = from_float<T>(to_float(row[c]) + to_float(d[c]));
    row[c] = stored;
    const float v = to_float(stored);
    sum_squares += v * v;
  }
  sum_squares = block_sum(sum_squares, scratch);
  const float inv = 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);
  T* dst = out + blockIdx.x * out_stride;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    dst[c] = from_float<T>(to_float(weight[c]) * (to_float(row[c]) * inv));
  }
}

// The vectorised form for rows of up to kThreads · kNormChunks 16-byte chunks (8192 bf16 or 4096
// float32 values): every load of a row is issued before any store or arithmetic that depends on
// it, so a row costs one memory latency instead of one per element (the scalar loops above
// serialise on the possible aliasing of residual and delta: ~15 µs for a 4096-wide decode row).
// delta == nullptr: plain rmsnorm of `residual` (not written).

template <typename T, typename W>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_vec_kernel(T* residual, int64_t residual_stride, const T* delta, int64_t delta_stride,
                       const W* weight, T* out, int64_t out_stride, int dim, float eps) {
  pdl_begin();
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[32];
  T* row = residual + blockIdx.x * residual_stride;
  const int chunks = dim / kVec;
  Vec16<T> x[kNormChunks];
#pragma unroll
  for (int i = 0; i < kNormChunks; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (c < chunks) x[i].raw = reinterpret_cast<const uint4*>(row)[c];
  }
  if (delta != nullptr) {
    const T* d = delta + blockIdx.x * delta_stride;
    Vec16<T> y[kNormChunks];
#pragma unroll
    for (int i = 0; i < kNormChunks; ++i) {
      const int c = threadIdx.x + i * kThreads;
      if (c < chunks) y[i].raw = reinterpret_cast<const uint4*>(d)[c];
    }
#pragma unroll
    for (int i = 0; i < kNormChunks; ++i) {
      const int c = threadIdx.x + i * kThreads;
      if (c >= chunks) continue;
      x[i] = add_rounded(x[i], y[i]);
      reinterpret_cast<uint4*>(row)[c] = x[i].raw;
    }
  }
  float sum_squares = 0.0f;
#pragma unroll
  for (int i = 0; i < kNormChunks; ++i) {
    if (threadIdx.x + i * kThreads < chunks) add_squares(x[i], sum_squares);
  }
  const float inv = inverse_rms(block_sum(sum_squares, scratch), dim, eps);
  T* dst = out + blockIdx.x * out_stride;
#pragma unroll
  for (int i = 0; i < kNormChunks; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (c < chunks) reinterpret_cast<uint4*>(dst)[c] = scale_chunk(x[i], weight, c, inv).raw;
  }
}

// Whether rows of `cols` elements of `dtype` at these addresses suit rmsnorm_vec_kernel.
bool vectorisable(DType dtype, int64_t cols,
                  std::initializer_list<std::pair<const void*, int64_t>> rows) {
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(dtype));
  if (cols % vec != 0 || cols / vec > int64_t{kThreads} * kNormChunks) return false;
  for (const auto& [data, stride] : rows) {
    if (reinterpret_cast<uintptr_t>(data) % 16 != 0 || stride % vec != 0) return false;
  }
  return true;
}

void check_rows(int64_t rows, const char* op) {
  DSHPC_CHECK_LE(rows, int64_t{0x7fffffff}) << op << ": rows exceed gridDim.x";
}

}  // namespace

void launch_rmsnorm(const Mat& x, const void* weight, DType weight_dtype, float eps, const Mat& out,
                    cudaStream_t stream) {
  if (x.rows == 0 || x.cols == 0) return;
  check_rows(x.rows, "rmsnorm");
  DSHPC_CHECK(x.dtype == out.dtype)
      << "rmsnorm: input " << dtype_name(x.dtype) << ", output " << dtype_name(out.dtype);
  dispatch_float(x.dtype, "rmsnorm", [&](auto tag) {
    using T = decltype(tag);
    dispatch_float(weight_dtype, "rmsnorm weight", [&](auto weight_tag) {
      using W = decltype(weight_tag);
      if (vectorisable(x.dtype, x.cols, {{x.data, x.stride}, {out.data, out.stride}})) {
        launch_pdl("rmsnorm_vec_kernel", rmsnorm_vec_kernel<T, W>,
                   static_cast<unsigned int>(x.rows), kThreads, 0, stream, static_cast<T*>(x.data),
                   x.stride, nullptr, 0, static_cast<const W*>(weight), static_cast<T*>(out.data),
                   out.stride, static_cast<int>(x.cols), eps);
        DSHPC_CUDA_LAUNCH_CHECK("rmsnorm_vec_kernel");
        return;
      }
      launch_pdl("rmsnorm_kernel", rmsnorm_kernel<T, W>, static_cast<unsigned int>(x.rows),
                 kThreads, 0, stream, static_cast<const T*>(x.data), x.stride,
                 static_cast<const W*>(weight), static_cast<T*>(out.data), out.stride, x.cols, eps);
      DSHPC_CUDA_LAUNCH_CHECK("rmsnorm_kernel");
    });
  });
}

void launch_add_rmsnorm(const Mat& residual, const Mat& delta, const void* weight,
                        DType weight_dtype, float eps, const Mat& out, cudaStream_t stream) {
  if (residual.rows == 0 || residual.cols == 0) return;
  check_rows(residual.rows, "add_rmsnorm");
  DSHPC_CHECK(residual.dtype == delta.dtype && residual.dtype == out.dtype)
      << "add_rmsnorm: residual " << dtype_name(residual.dtype) << ", delta "
      << dtype_name(delta.dtype) << ", output " << dtype_name(out.dtype);
  dispatch_float(residual.dtype, "add_rmsnorm", [&](auto tag) {
    using T = decltype(tag);
    dispatch_float(weight_dtype, "add_rmsnorm weight", [&](auto weight_tag) {
      using W = decltype(weight_tag);
      if (vectorisable(residual.dtype, residual.cols,
                       {{residual.data, residual.stride},
                        {delta.data, delta.stride},
                        {out.data, out.stride}})) {
        launch_pdl("rmsnorm_vec_kernel", rmsnorm_vec_kernel<T, W>,
                   static_cast<unsigned int>(residual.rows), kThreads, 0, stream,
                   static_cast<T*>(residual.data), residual.stride,
                   static_cast<const T*>(delta.data), delta.stride, static_cast<const W*>(weight),
                   static_cast<T*>(out.data), out.stride, static_cast<int>(residual.cols), eps);
        DSHPC_CUDA_LAUNCH_CHECK("rmsnorm_vec_kernel");
        return;
      }
      launch_pdl("add_rmsnorm_kernel", add_rmsnorm_kernel<T, W>,
                 static_cast<unsigned int>(residual.rows), kThreads, 0, stream,
                 static_cast<T*>(residual.data), residual.stride, static_cast<const T*>(delta.data),
                 delta.stride, static_cast<const W*>(weight), static_cast<T*>(out.data), out.stride,
                 residual.cols, eps);
      DSHPC_CUDA_LAUNCH_CHECK("add_rmsnorm_kernel");
    });
  });
}

}  // namespace dshpc::cuda
