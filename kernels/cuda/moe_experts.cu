// The kernels around the routed experts' matrix products (CPU reference: moe_experts in
// kernels/cpu_backend.cpp). The backend sorts the (token, slot) pairs of its local experts by
// expert (on the host, from the downloaded expert ids), so that each expert's tokens are one
// contiguous block of rows:
//   gather:  rows[i] = x[token_of_row[i]]                     (token permutation)
//   …        per expert: gate_up = rows · W_gate_upᵀ, act = swiglu, y = act · W_downᵀ (cuBLAS)
//   combine: out[t] += Σ_j weight[t, j] · y[row_of_pair[t, j]]  (weighted scatter-add back)
// The combine is a gather per token rather than atomics, so the sum order is fixed and the
// result deterministic; the accumulation is in float32 with one rounding into out.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void gather_rows_kernel(const T* x, int64_t x_stride, const int32_t* token_of_row,
                                   T* out, int64_t out_stride, int64_t cols) {
  const T* src = x + static_cast<int64_t>(token_of_row[blockIdx.x]) * x_stride;
  T* dst = out + blockIdx.x * out_stride;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}

template <typename T>
__global__ void moe_combine_kernel(const T* expert_out, int64_t expert_stride,
                                   const int32_t* row_of_pair, const float* weights, int top_k,
                                   T* out, int64_t out_stride, int64_t cols) {
  const int64_t t = blockIdx.x;
  const int32_t* rows = row_of_pair + t * top_k;
  const float* w = weights + t * top_k;
  T* dst = out + t * out_stride;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float sum = to_float(dst[c]);
    for (int j = 0; j < top_k; ++j) {
      const int32_t row = rows[j];
      if (row >= 0) sum = fmaf(w[j], to_float(expert_out[row * expert_stride + c]), sum);
    }
    dst[c] = from_float<T>(sum);
  }
}

}  // namespace

void launch_gather_rows(const Mat& x, const int32_t* token_of_row, const Mat& out,
                        cudaStream_t stream) {
  if (out.rows == 0) return;
  DSHPC_CHECK(x.dtype == out.dtype && x.cols == out.cols && out.rows <= 0x7fffffff)
      << "gather_rows: " << out.rows << " rows";
  dispatch_float(x.dtype, "gather_rows", [&](auto tag) {
    using T = decltype(tag);
    gather_rows_kernel<T><<<static_cast<unsigned int>(out.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x.data), x.stride, token_of_row, static_cast<T*>(out.data),
        out.stride, out.cols);
    DSHPC_CUDA_LAUNCH_CHECK("gather_rows_kernel");
  });
}

void launch_moe_combine(const Mat& expert_out, const int32_t* row_of_pair, const float* weights,
                        int64_t top_k, const Mat& out, cudaStream_t stream) {
  if (out.rows == 0) return;
  DSHPC_CHECK(expert_out.dtype == out.dtype && expert_out.cols == out.cols &&
              out.rows <= 0x7fffffff && top_k > 0 && top_k <= 1024)
      << "moe_combine: " << out.rows << " tokens, top_k " << top_k;
  dispatch_float(out.dtype, "moe_combine", [&](auto tag) {
    using T = decltype(tag);
    moe_combine_kernel<T><<<static_cast<unsigned int>(out.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(expert_out.data), expert_out.stride, row_of_pair, weights,
        static_cast<int>(top_k), static_cast<T*>(out.data), out.stride, out.cols);
    DSHPC_CUDA_LAUNCH_CHECK("moe_combine_kernel");
  });
}

}  // namespace dshpc::cuda
