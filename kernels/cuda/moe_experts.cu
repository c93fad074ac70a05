// The kernels around the routed experts' matrix products (CPU reference: moe_experts in
// kernels/cpu_backend.cpp). The backend sorts the (token, slot) pairs of its local experts by
// expert (on the host, from the downloaded expert ids), so that each expert's tokens are one
// contiguous block of rows:
//   gather:  rows[i] = x[token_of_row[i]]                     (token permutation)
//   …        per expert: gate_up = rows · W_gate_upᵀ, act = swiglu, y = act · W_downᵀ (cuBLAS)
//   combine: out[t] += Σ_j weight[t, j] · y[row_of_pair[t, j]]  (weighted scatter-add back)
// The combine is a gather per token rather than atomics, so the sum order is fixed and the
// result deterministic; the accumulation is in float32 with one rounding into out.
#include <algorithm>

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
  // blockIdx.y splits the columns: a decode step has one or a few tokens, and one CTA per token
  // would leave the GPU idle while each thread walks a long row.
  for (int64_t c = blockIdx.y * blockDim.x + threadIdx.x; c < cols;
       c += static_cast<int64_t>(gridDim.y) * blockDim.x) {
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
    const dim3 grid(static_cast<unsigned int>(out.rows),
                    static_cast<unsigned int>(std::min<int64_t>(8, (out.cols + kThreads - 1) / kThreads)));
    moe_combine_kernel<T><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(expert_out.data), expert_out.stride, row_of_pair, weights,
        static_cast<int>(top_k), static_cast<T*>(out.data), out.stride, out.cols);
    DSHPC_CUDA_LAUNCH_CHECK("moe_combine_kernel");
  });
}


// ---- The small-step path: no host round trip, so that decode steps of MoE models are captured
// in CUDA graphs. The (token, slot) pairs are sorted by local expert on the device (stable:
// within an expert, pairs keep their order, as on the host path), then one grid per matrix reads
// each active expert's weights once for all of its rows: a warp per output row, up to
// kSmallRowsPerPass of the expert's rows per pass over the weight row.
namespace {

constexpr int kIndexThreads = 1024;
constexpr int kSmallRowsPerPass = 8;
constexpr int kWarpRows = 8;  // output rows (warps) per CTA

__global__ void moe_index_kernel(const int32_t* ids, int pairs, int expert_begin, int num_local,
                                 int32_t* offsets, int32_t* pair_of_row, int32_t* row_of_pair,
                                 int32_t* active) {
  extern __shared__ int32_t shared[];  // counts[num_local], then base[num_local + 1]
  int32_t* counts = shared;
  int32_t* base = shared + num_local;
  for (int e = threadIdx.x; e < num_local; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int e = ids[p] - expert_begin;
    if (e >= 0 && e < num_local) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t running = 0;
    for (int e = 0; e < num_local; ++e) {
      base[e] = running;
      offsets[e] = running;
      running += counts[e];
    }
    base[num_local] = running;
    offsets[num_local] = running;
    // The experts with rows, in order, then −1 up to min(pairs, num_local) slots: the product
    // kernels' grid rows, so that a decode step's few experts do not launch a CTA column for
    // every local expert.
    int used = 0;
    for (int e = 0; e < num_local; ++e) {
      if (counts[e] > 0) active[used++] = e;
    }
    for (int i = used; i < min(pairs, num_local); ++i) active[i] = -1;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int32_t id = ids[p];
    const int e = id - expert_begin;
    if (e < 0 || e >= num_local) {
      row_of_pair[p] = -1;
      continue;
    }
    int rank = 0;
    for (int q = 0; q < p; ++q) rank += ids[q] == id;
    const int32_t row = base[e] + rank;
    row_of_pair[p] = row;
    pair_of_row[row] = p;
  }
}

// acc[m][c] = Σ over k of w_m[k] · x_c[k] for the kMats weight rows w_m and the rows c < n of a
// pass, 16 bytes at a time per lane, two steps per iteration: 2 · kMats weight loads in flight
// per lane, issued before any arithmetic.
template <typename T, int kMats, int kRows>
__device__ __forceinline__ void warp_dots(const T* const (&w)[kMats], const T* const* xs, int n,
                                          int64_t len, float (&acc)[kMats][kRows]) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int64_t kStep = 32 * kVec;
  const int lane = threadIdx.x & 31;
  auto accumulate = [&](const uint4 (&wv)[kMats], int64_t k) {
#pragma unroll
    for (int c = 0; c < kRows; ++c) {
      if (c >= n) break;
      const uint4 xv = *reinterpret_cast<const uint4*>(xs[c] + k);
      const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
      for (int m = 0; m < kMats; ++m) {
        const T* we = reinterpret_cast<const T*>(&wv[m]);
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[m][c] = fmaf(to_float(we[i]), to_float(xe[i]), acc[m][c]);
      }
    }
  };
  int64_t k = static_cast<int64_t>(lane) * kVec;
  for (; k + kStep < len; k += 2 * kStep) {
    uint4 w0[kMats], w1[kMats];
#pragma unroll
    for (int m = 0; m < kMats; ++m) {
      w0[m] = __ldcs(reinterpret_cast<const uint4*>(w[m] + k));  // read once: stream it
      w1[m] = __ldcs(reinterpret_cast<const uint4*>(w[m] + k + kStep));
    }
    accumulate(w0, k);
    accumulate(w1, k + kStep);
  }
  if (k < len) {
    uint4 w0[kMats];
#pragma unroll
    for (int m = 0; m < kMats; ++m) w0[m] = __ldcs(reinterpret_cast<const uint4*>(w[m] + k));
    accumulate(w0, k);
  }
#pragma unroll
  for (int m = 0; m < kMats; ++m) {
#pragma unroll
    for (int c = 0; c < kRows; ++c) acc[m][c] = warp_sum(acc[m][c]);
  }
}

// act[row, j] = swiglu(gate_j · x, up_j · x) for every row of expert blockIdx.y, with gate and up
// rounded to T first (as the unfused path stores them).
template <typename T>
__global__ void __launch_bounds__(kWarpRows * 32)
    moe_gate_up_small_kernel(const T* x, int64_t x_stride, const T* const* gate_up, int64_t hidden,
                             int64_t inter, const int32_t* offsets, const int32_t* active,
                             const int32_t* pair_of_row, int top_k, T* act, int64_t act_stride) {
  const int e = active[blockIdx.y];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarpRows + threadIdx.x / 32;
  if (e < 0 || j >= inter) return;
  const int begin = offsets[e], count = offsets[e + 1] - begin;
  const T* const w[2] = {gate_up[e] + j * hidden, gate_up[e] + (inter + j) * hidden};
  for (int first = 0; first < count; first += kSmallRowsPerPass) {
    const int n = min(kSmallRowsPerPass, count - first);
    const T* xs[kSmallRowsPerPass];
#pragma unroll
    for (int c = 0; c < kSmallRowsPerPass; ++c) {
      xs[c] = x + static_cast<int64_t>(pair_of_row[begin + first + min(c, n - 1)] / top_k) * x_stride;
    }
    float gu[2][kSmallRowsPerPass] = {};
    warp_dots<T, 2, kSmallRowsPerPass>(w, xs, n, hidden, gu);
    if ((threadIdx.x & 31) == 0) {
      for (int c = 0; c < n; ++c) {
        const float gr = to_float(from_float<T>(gu[0][c])), ur = to_float(from_float<T>(gu[1][c]));
        act[static_cast<int64_t>(begin + first + c) * act_stride + j] =
            from_float<T>(gr / (1.0f + expf(-gr)) * ur);
      }
    }
  }
}

// y[row, r] = down_r · act[row] for every row of expert blockIdx.y.
template <typename T>
__global__ void __launch_bounds__(kWarpRows * 32)
    moe_down_small_kernel(const T* act, int64_t act_stride, const T* const* down, int64_t hidden,
                          int64_t inter, const int32_t* offsets, const int32_t* active, T* y,
                          int64_t y_stride) {
  const int e = active[blockIdx.y];
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpRows + threadIdx.x / 32;
  if (e < 0 || r >= hidden) return;
  const int begin = offsets[e], count = offsets[e + 1] - begin;
  const T* const w[1] = {down[e] + r * inter};
  for (int first = 0; first < count; first += kSmallRowsPerPass) {
    const int n = min(kSmallRowsPerPass, count - first);
    const T* xs[kSmallRowsPerPass];
#pragma unroll
    for (int c = 0; c < kSmallRowsPerPass; ++c) {
      xs[c] = act + static_cast<int64_t>(begin + first + min(c, n - 1)) * act_stride;
    }
    float acc[1][kSmallRowsPerPass] = {};
    warp_dots<T, 1, kSmallRowsPerPass>(w, xs, n, inter, acc);
    if ((threadIdx.x & 31) == 0) {
      for (int c = 0; c < n; ++c) {
        y[static_cast<int64_t>(begin + first + c) * y_stride + r] = from_float<T>(acc[0][c]);
      }
    }
  }
}

}  // namespace

bool moe_small_supported(int64_t pairs, int64_t num_local, int64_t hidden, int64_t inter,
                         DType dtype) {
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(dtype));
  return (dtype == DType::kF32 || dtype == DType::kBF16) && pairs > 0 &&
         pairs <= kMoeSmallMaxPairs && num_local > 0 && num_local <= kMoeSmallMaxExperts &&
         hidden % vec == 0 && inter % vec == 0;
}

void launch_moe_index(const int32_t* expert_ids, int64_t pairs, int64_t expert_begin,
                      int64_t num_local, int32_t* offsets, int32_t* pair_of_row,
                      int32_t* row_of_pair, int32_t* active, cudaStream_t stream) {
  DSHPC_CHECK(pairs > 0 && pairs <= kMoeSmallMaxPairs && num_local > 0 &&
              num_local <= kMoeSmallMaxExperts)
      << "moe_index: " << pairs << " pairs, " << num_local << " local experts";
  const size_t shared = (2 * num_local + 1) * sizeof(int32_t);
  moe_index_kernel<<<1, kIndexThreads, shared, stream>>>(
      expert_ids, static_cast<int>(pairs), static_cast<int>(expert_begin),
      static_cast<int>(num_local), offsets, pair_of_row, row_of_pair, active);
  DSHPC_CUDA_LAUNCH_CHECK("moe_index_kernel");
}

void launch_moe_gate_up_small(const Mat& x, const void* const* gate_up, int64_t inter,
                              int64_t num_local, const int32_t* offsets, const int32_t* active,
                              const int32_t* pair_of_row, int64_t top_k, const Mat& act,
                              cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((inter + kWarpRows - 1) / kWarpRows),
                  static_cast<unsigned>(moe_active_slots(x.rows * top_k, num_local)));
  dispatch_float(x.dtype, "moe_gate_up_small", [&](auto tag) {
    using T = decltype(tag);
    moe_gate_up_small_kernel<T><<<grid, kWarpRows * 32, 0, stream>>>(
        static_cast<const T*>(x.data), x.stride, reinterpret_cast<const T* const*>(gate_up),
        x.cols, inter, offsets, active, pair_of_row, static_cast<int>(top_k),
        static_cast<T*>(act.data),
        act.stride);
    DSHPC_CUDA_LAUNCH_CHECK("moe_gate_up_small_kernel");
  });
}

void launch_moe_down_small(const Mat& act, const void* const* down, int64_t num_local,
                           const int32_t* offsets, const int32_t* active, const Mat& y,
                           cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((y.cols + kWarpRows - 1) / kWarpRows),
                  static_cast<unsigned>(moe_active_slots(y.rows, num_local)));
  dispatch_float(act.dtype, "moe_down_small", [&](auto tag) {
    using T = decltype(tag);
    moe_down_small_kernel<T><<<grid, kWarpRows * 32, 0, stream>>>(
        static_cast<const T*>(act.data), act.stride, reinterpret_cast<const T* const*>(down),
        y.cols, act.cols, offsets, active, static_cast<T*>(y.data), y.stride);
    DSHPC_CUDA_LAUNCH_CHECK("moe_down_small_kernel");
  });
}

}  // namespace dshpc::cuda
