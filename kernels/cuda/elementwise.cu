// Strided 2-D copy (with float32 ↔ bf16 conversion) and in-place add; the Backend's copy, add
// (CPU reference: the loops in kernels/cpu_backend.cpp). Same-type copies go through
// cudaMemcpy2DAsync in cuda_backend.cu; this kernel handles conversions. Grid-stride loops over
// rows × cols, so any shape fits the grid limits.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

template <typename TSrc, typename TDst>
__global__ void copy_kernel(const TSrc* src, int64_t src_stride, TDst* dst, int64_t dst_stride,
                            int64_t rows, int64_t cols) {
  pdl_begin();
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    dst[r * dst_stride + c] = from_float<TDst>(to_float(src[r * src_stride + c]));
  }
}

template <typename T>
__global__ void add_kernel(T* a, int64_t a_stride, const T* b, int64_t b_stride, int64_t rows,
                           int64_t cols) {
  pdl_begin();
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    T* p = a + r * a_stride + c;
    *p = from_float<T>(to_float(*p) + to_float(b[r * b_stride + c]));
  }
}

}  // namespace

void launch_copy(const Mat& src, const Mat& dst, cudaStream_t stream) {
  const int64_t total = src.rows * src.cols;
  if (total == 0) return;
  dispatch_float(src.dtype, "copy", [&](auto src_tag) {
    using TSrc = decltype(src_tag);
    dispatch_float(dst.dtype, "copy", [&](auto dst_tag) {
      using TDst = decltype(dst_tag);
      launch_pdl("copy_kernel", copy_kernel<TSrc, TDst>, grid_for(total, kThreads), kThreads, 0,
                 stream, static_cast<const TSrc*>(src.data), src.stride,
                 static_cast<TDst*>(dst.data), dst.stride, src.rows, src.cols);
      DSHPC_CUDA_LAUNCH_CHECK("copy_kernel");
    });
  });
}

void launch_add(const Mat& a, const Mat& b, cudaStream_t stream) {
  const int64_t total = a.rows * a.cols;
  if (total == 0) return;
  DSHPC_CHECK(a.dtype == b.dtype) << "add: " << dtype_name(a.dtype)
                                  << " += " << dtype_name(b.dtype);
  dispatch_float(a.dtype, "add", [&](auto tag) {
    using T = decltype(tag);
    launch_pdl("add_kernel", add_kernel<T>, grid_for(total, kThreads), kThreads, 0, stream,
               static_cast<T*>(a.data), a.stride, static_cast<const T*>(b.data), b.stride, a.rows,
               a.cols);
    DSHPC_CUDA_LAUNCH_CHECK("add_kernel");
  });
}

}  // namespace dshpc::cuda
