// Greedy token selection (CPU reference: argmax_rows_cpu in kernels/sampling_cpu.cpp): per row
// the largest value, ties to the lowest index, NaN never wins (an all-NaN row gives 0). One CTA
// per row; (value, index) pairs reduced by warp shuffles, then across warps in shared memory.
#include <climits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 1024;

struct Best {
  float value;
  int index;
};

// The better of two candidates under the CPU's rule.
__device__ __forceinline__ Best better(Best a, Best b) {
  const bool a_nan = isnan(a.value), b_nan = isnan(b.value);
  if (a_nan != b_nan) return a_nan ? b : a;
  if (!a_nan && a.value != b.value) return a.value > b.value ? a : b;
  return a.index < b.index ? a : b;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    argmax_kernel(const T* logits, int64_t stride, int64_t vocab, int32_t* ids) {
  __shared__ Best warp_best[32];
  const T* row = logits + blockIdx.x * stride;
  Best best{NAN, INT_MAX};  // loses to every element
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    best = better(best, Best{to_float(row[i]), static_cast<int>(i)});
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    Best other;
    other.value = __shfl_xor_sync(0xffffffffu, best.value, offset);
    other.index = __shfl_xor_sync(0xffffffffu, best.index, offset);
    best = better(best, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    Best result = warp_best[0];
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w)
      result = better(result, warp_best[w]);
    ids[blockIdx.x] = result.index == INT_MAX ? 0 : result.index;
  }
}

}  // namespace

void launch_argmax(const Mat& logits, int32_t* ids, cudaStream_t stream) {
  if (logits.rows == 0) return;
  DSHPC_CHECK(logits.cols > 0 && logits.cols <= 0x7fffffff && logits.rows <= 0x7fffffff)
      << "argmax: " << logits.rows << " rows of " << logits.cols;
  dispatch_float(logits.dtype, "argmax", [&](auto tag) {
    using T = decltype(tag);
    argmax_kernel<T><<<static_cast<unsigned int>(logits.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(logits.data), logits.stride, logits.cols, ids);
    DSHPC_CUDA_LAUNCH_CHECK("argmax_kernel");
  });
}

}  // namespace dshpc::cuda
