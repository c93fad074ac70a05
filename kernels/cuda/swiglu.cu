// SwiGLU (CPU reference: kernels/swiglu_cpu.cpp): out = silu(gate) · up with
// silu(g) = g / (1 + exp(−g)); for g → −∞ expf overflows to +inf and the quotient to −0, the
// correct limit, so no clamping is needed.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void swiglu_kernel(const T* gate_up, int64_t in_stride, T* out, int64_t out_stride,
                              int64_t rows, int64_t inter) {
  pdl_begin();
  const int64_t total = rows * inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / inter, c = i % inter;
    const T* row = gate_up + r * in_stride;  // [gate | up]
    out[r * out_stride + c] = swiglu_rounded<T>(to_float(row[c]), to_float(row[inter + c]));
  }
}

}  // namespace

void launch_swiglu(const Mat& gate_up, const Mat& out, cudaStream_t stream) {
  const int64_t total = out.rows * out.cols;
  if (total == 0) return;
  DSHPC_CHECK(gate_up.dtype == out.dtype)
      << "swiglu: input " << dtype_name(gate_up.dtype) << ", output " << dtype_name(out.dtype);
  dispatch_float(out.dtype, "swiglu", [&](auto tag) {
    using T = decltype(tag);
    launch_pdl("swiglu_kernel", swiglu_kernel<T>, grid_for(total, kThreads), kThreads, 0, stream,
               static_cast<const T*>(gate_up.data), gate_up.stride, static_cast<T*>(out.data),
               out.stride, out.rows, out.cols);
    DSHPC_CUDA_LAUNCH_CHECK("swiglu_kernel");
  });
}

}  // namespace dshpc::cuda
