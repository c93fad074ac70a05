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
#include "kernels/cuda/moe_index.cuh"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void gather_rows_kernel(const T* x, int64_t x_stride, const int32_t* token_of_row,
                                   T* out, int64_t out_stride, int64_t cols) {
  pdl_begin();
  const T* src = x + static_cast<int64_t>(token_of_row[blockIdx.x]) * x_stride;
  T* dst = out + blockIdx.x * out_stride;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}

template <typename T>
__global__ void moe_combine_kernel(const T* expert_out, int64_t expert_stride,
                                   const int32_t* row_of_pair, const float* weights, int top_k,
                                   const int32_t* shared_row0, const T* base, int64_t base_stride,
                                   T* out, int64_t out_stride, int64_t cols) {
  pdl_begin();
  const int64_t t = blockIdx.x;
  const int32_t* rows = row_of_pair + t * top_k;
  const float* w = weights + t * top_k;
  T* dst = out + t * out_stride;
  // blockIdx.y splits the columns: a decode step has one or a few tokens, and one CTA per token
  // would leave the GPU idle while each thread walks a long row.
  for (int64_t c = blockIdx.y * blockDim.x + threadIdx.x; c < cols;
       c += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    // With shared experts their row of this token starts the sum, else base's row (out's own
    // where the caller gave no other).
    float sum = shared_row0 != nullptr
                    ? to_float(expert_out[(*shared_row0 + t) * expert_stride + c])
                    : to_float(base[t * base_stride + c]);
    for (int j = 0; j < top_k; ++j) {
      const int32_t row = rows[j];
      if (row >= 0) sum = fmaf(w[j], to_float(expert_out[row * expert_stride + c]), sum);
    }
    dst[c] = from_float<T>(sum);
  }
}

// moe_combine_kernel's sum of token blockIdx.x, then the residual add and the norm of the next
// layer's input with rmsnorm_vec_kernel's arithmetic and order (same block size, the same chunk
// of each thread, the same reduction), so every value equals what the two launches give. One CTA
// a token; rows of up to kThreads · kNormChunks 16-byte chunks.

constexpr int kCombineMaxTopK = 64;  // launch_moe_combine takes moe_combine_kernel beyond
constexpr int kCombineBatch = 8;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    moe_combine_norm_kernel(const T* expert_out, int64_t expert_stride, const int32_t* row_of_pair,
                            const float* weights, int top_k, const int32_t* shared_row0,
                            const T* base, int64_t base_stride, T* out, int64_t out_stride,
                            T* residual, int64_t residual_stride, const T* norm_weight, float eps,
                            T* normed, int64_t normed_stride, int cols) {
  pdl_begin();
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[32];
  __shared__ int32_t rows[kCombineMaxTopK];
  __shared__ float w[kCombineMaxTopK];
  const int64_t t = blockIdx.x;
  // The token's rows and weights first, in one round of loads: read inside the loop below, each
  // pair cost two dependent trips to L2 (row, then the row's values). The kernel took 7.2 µs of
  // a V2-Lite decode layer before, 5.7-5.9 after (one H200, kernel timelines of sessions 9, 10).
  for (int k = threadIdx.x; k < top_k; k += blockDim.x) {
    rows[k] = row_of_pair[t * top_k + k];
    w[k] = weights[t * top_k + k];
  }
  __syncthreads();
  const int chunks = cols / kVec;
  Vec16<T> x[kNormChunks];
  float sum_squares = 0.0f;
#pragma unroll
  for (int i = 0; i < kNormChunks; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (c >= chunks) continue;
    Vec16<T> acc_in, r;
    acc_in.raw =
        shared_row0 != nullptr
            ? reinterpret_cast<const uint4*>(expert_out + (*shared_row0 + t) * expert_stride)[c]
            : reinterpret_cast<const uint4*>(base + t * base_stride)[c];
    r.raw = reinterpret_cast<const uint4*>(residual + t * residual_stride)[c];
    float sum[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) sum[j] = to_float(acc_in.e[j]);
    // kCombineBatch rows' loads in flight, then their products in pair order (the order of
    // moe_combine_kernel, so both launches give the same values).
    for (int k0 = 0; k0 < top_k; k0 += kCombineBatch) {
      Vec16<T> y[kCombineBatch];
#pragma unroll
      for (int u = 0; u < kCombineBatch; ++u) {
        const int k = k0 + u;
        if (k < top_k && rows[k] >= 0) {
          y[u].raw = reinterpret_cast<const uint4*>(expert_out + rows[k] * expert_stride)[c];
        }
      }
#pragma unroll
      for (int u = 0; u < kCombineBatch; ++u) {
        const int k = k0 + u;
        if (k >= top_k || rows[k] < 0) continue;
#pragma unroll
        for (int j = 0; j < kVec; ++j) sum[j] = fmaf(w[k], to_float(y[u].e[j]), sum[j]);
      }
    }
    Vec16<T> o;
#pragma unroll
    for (int j = 0; j < kVec; ++j) o.e[j] = from_float<T>(sum[j]);
    x[i] = add_rounded(r, o);
    add_squares(x[i], sum_squares);
    reinterpret_cast<uint4*>(out + t * out_stride)[c] = o.raw;
    reinterpret_cast<uint4*>(residual + t * residual_stride)[c] = x[i].raw;
  }
  const float inv = inverse_rms(block_sum(sum_squares, scratch), cols, eps);
#pragma unroll
  for (int i = 0; i < kNormChunks; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (c < chunks) {
      reinterpret_cast<uint4*>(normed + t * normed_stride)[c] =
          scale_chunk(x[i], norm_weight, c, inv).raw;
    }
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
    launch_pdl("gather_rows_kernel", gather_rows_kernel<T>, static_cast<unsigned int>(out.rows),
               kThreads, 0, stream, static_cast<const T*>(x.data), x.stride, token_of_row,
               static_cast<T*>(out.data), out.stride, out.cols);
    DSHPC_CUDA_LAUNCH_CHECK("gather_rows_kernel");
  });
}

bool launch_moe_combine(const Mat& expert_out, const int32_t* row_of_pair, const float* weights,
                        int64_t top_k, const int32_t* shared_row0, const Mat& out,
                        cudaStream_t stream, const MoeCombineNorm* then, const Mat* base) {
  if (out.rows == 0) return false;
  DSHPC_CHECK(expert_out.dtype == out.dtype && expert_out.cols == out.cols &&
              out.rows <= 0x7fffffff && top_k > 0 && top_k <= 1024)
      << "moe_combine: " << out.rows << " tokens, top_k " << top_k;
  DSHPC_CHECK(base == nullptr || (shared_row0 == nullptr && base->dtype == out.dtype &&
                                  base->rows == out.rows && base->cols == out.cols))
      << "moe_combine: a base must match out, and excludes the shared experts' rows";
  const Mat& start = base != nullptr ? *base : out;
  if (then != nullptr) {
    DSHPC_CHECK(then->residual.rows == out.rows && then->residual.cols == out.cols &&
                then->normed.rows == out.rows && then->normed.cols == out.cols &&
                then->residual.dtype == out.dtype && then->normed.dtype == out.dtype)
        << "moe_combine: the residual and normed rows must match out";
    const int64_t vec = 16 / static_cast<int64_t>(dtype_size(out.dtype));
    const bool vectorised =
        top_k <= kCombineMaxTopK && out.cols % vec == 0 &&
        out.cols / vec <= int64_t{kThreads} * kNormChunks && expert_out.stride % vec == 0 &&
        out.stride % vec == 0 && start.stride % vec == 0 && then->residual.stride % vec == 0 &&
        then->normed.stride % vec == 0 && aligned_to(expert_out.data, 16) &&
        aligned_to(out.data, 16) && aligned_to(start.data, 16) &&
        aligned_to(then->residual.data, 16) && aligned_to(then->normed.data, 16);
    if (!vectorised) {
      launch_moe_combine(expert_out, row_of_pair, weights, top_k, shared_row0, out, stream, nullptr,
                         base);
      launch_add_rmsnorm(then->residual, out, then->weight, out.dtype, then->eps, then->normed,
                         stream);
      return false;
    }
    dispatch_float(out.dtype, "moe_combine_norm", [&](auto tag) {
      using T = decltype(tag);
      launch_pdl("moe_combine_norm_kernel", moe_combine_norm_kernel<T>,
                 static_cast<unsigned int>(out.rows), kThreads, 0, stream,
                 static_cast<const T*>(expert_out.data), expert_out.stride, row_of_pair, weights,
                 static_cast<int>(top_k), shared_row0, static_cast<const T*>(start.data),
                 start.stride, static_cast<T*>(out.data), out.stride,
                 static_cast<T*>(then->residual.data), then->residual.stride,
                 static_cast<const T*>(then->weight), then->eps, static_cast<T*>(then->normed.data),
                 then->normed.stride, static_cast<int>(out.cols));
      DSHPC_CUDA_LAUNCH_CHECK("moe_combine_norm_kernel");
    });
    return true;
  }
  dispatch_float(out.dtype, "moe_combine", [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(
        static_cast<unsigned int>(out.rows),
        static_cast<unsigned int>(std::min<int64_t>(8, (out.cols + kThreads - 1) / kThreads)));
    launch_pdl("moe_combine_kernel", moe_combine_kernel<T>, grid, kThreads, 0, stream,
               static_cast<const T*>(expert_out.data), expert_out.stride, row_of_pair, weights,
               static_cast<int>(top_k), shared_row0, static_cast<const T*>(start.data),
               start.stride, static_cast<T*>(out.data), out.stride, out.cols);
    DSHPC_CUDA_LAUNCH_CHECK("moe_combine_kernel");
  });
  return false;
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
                                 int shared_tokens, int32_t* offsets, int32_t* pair_of_row,
                                 int32_t* row_of_pair, int32_t* active) {
  pdl_begin();
  extern __shared__ int32_t shared[];  // moe_index_shared_ints(num_local)
  build_moe_index(ids, pairs, expert_begin, num_local, shared_tokens, offsets, pair_of_row,
                  row_of_pair, active, shared);
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
  auto accumulate = [&](const uint4(&wv)[kMats], int64_t k) {
#pragma unroll
    for (int c = 0; c < kRows; ++c) {
      if (c >= n) break;
      const uint4 xv = *reinterpret_cast<const uint4*>(xs[c] + k);
      const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
      for (int m = 0; m < kMats; ++m) {
        const T* we = reinterpret_cast<const T*>(&wv[m]);
#pragma unroll
        for (int i = 0; i < kVec; ++i)
          acc[m][c] = fmaf(to_float(we[i]), to_float(xe[i]), acc[m][c]);
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
  pdl_begin();
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
      xs[c] =
          x + static_cast<int64_t>(pair_of_row[begin + first + min(c, n - 1)] / top_k) * x_stride;
    }
    float gu[2][kSmallRowsPerPass] = {};
    warp_dots<T, 2, kSmallRowsPerPass>(w, xs, n, hidden, gu);
    if ((threadIdx.x & 31) == 0) {
      for (int c = 0; c < n; ++c) {
        act[static_cast<int64_t>(begin + first + c) * act_stride + j] =
            swiglu_rounded<T>(gu[0][c], gu[1][c]);
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
  pdl_begin();
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

// ---- The same two products on the tensor cores (bf16): a decode step gives an expert a few
// rows (tokens), too few for cuBLAS's tiles but enough that the CUDA-core dot products above run
// out of issue slots before memory bandwidth (six rows per expert at batch 64). Here a CTA takes
// 16 (gate_up: 16 gate and the matching 16 up rows) or 32 (down) weight rows of one expert as
// the M side of mma.m16n8k16 and the expert's tokens as N (two n8 tiles: 16 tokens a pass), and
// its kMmaWarps warps split K, reduced through shared memory at the end.
//
// Fragments come straight from global memory, 16 bytes per lane: lane 4g + q reads elements
// [8q, 8q + 8) of each 32-element block of weight rows g and g + 8 and of token g's row. The
// mma's k slots {2q, 2q+1, 2q+8, 2q+9} of step s take elements 4s + {0, 1, 2, 3}: a permutation
// of k applied to both operands alike, so the dot products are unchanged.
constexpr int kMmaWarps = 4;
constexpr int kMmaTokens = 16;
constexpr int kMmaBlock = 32;  // k elements per block

template <int kMats>
struct MmaLoads {
  uint4 lo[kMats], hi[kMats], x[2];
};

template <int kMats>
__device__ __forceinline__ void mma_load(MmaLoads<kMats>& r, const bf16* const (&w)[kMats],
                                         int64_t k_len, const bf16* const (&x)[2], int block) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int64_t k = static_cast<int64_t>(block) * kMmaBlock + q * 8;
#pragma unroll
  for (int m = 0; m < kMats; ++m) {
    r.lo[m] = __ldcs(reinterpret_cast<const uint4*>(w[m] + g * k_len + k));  // read once
    r.hi[m] = __ldcs(reinterpret_cast<const uint4*>(w[m] + (g + 8) * k_len + k));
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) r.x[h] = *reinterpret_cast<const uint4*>(x[h] + k);
}

template <int kMats>
__device__ __forceinline__ void mma_block(const MmaLoads<kMats>& r, float (&d)[kMats][2][4]) {
#pragma unroll
  for (int s = 0; s < 2; ++s) {
#pragma unroll
    for (int m = 0; m < kMats; ++m) {
      const uint32_t* lo = reinterpret_cast<const uint32_t*>(&r.lo[m]);
      const uint32_t* hi = reinterpret_cast<const uint32_t*>(&r.hi[m]);
      const uint32_t a[4] = {lo[2 * s], hi[2 * s], lo[2 * s + 1], hi[2 * s + 1]};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t* xb = reinterpret_cast<const uint32_t*>(&r.x[h]);
        mma_16816(d[m][h], a, xb[2 * s], xb[2 * s + 1]);
      }
    }
  }
}

// d[m][h] = (16 rows of w[m]) · (tokens 8h … 8h + 7)ᵀ over all of K, complete in warp 0 (the other
// warps' d are partial). x[h]: this lane's token row (token 8h + g). `red` is the CTA's scratch;
// the caller syncs before reusing it.
// kInFlight blocks' loads are issued before their products; past the end of K a block is zeros
// (its products add nothing), so a warp's share of K takes ceil(share / kInFlight) rounds.
// kInFlight 2 keeps the form the gate/up kernel was tuned with.
template <int kMats, int kInFlight>
__device__ __forceinline__ void mma_rows(const bf16* const (&w)[kMats], int64_t k_len,
                                         const bf16* const (&x)[2], float (&d)[kMats][2][4],
                                         float (*red)[kMats * 8][32]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int blocks = static_cast<int>(k_len / kMmaBlock);
  if constexpr (kInFlight == 2) {
    // Pairs, then a last single block: the zero-filled form below measured slower here
    // (gate_up at batch 1 on V2-Lite: 34 µs against 26 µs, ncu, same H200).
    int block = warp;
    for (; block + kMmaWarps < blocks; block += 2 * kMmaWarps) {
      MmaLoads<kMats> r0, r1;
      mma_load(r0, w, k_len, x, block);
      mma_load(r1, w, k_len, x, block + kMmaWarps);
      mma_block(r0, d);
      mma_block(r1, d);
    }
    if (block < blocks) {
      MmaLoads<kMats> r0;
      mma_load(r0, w, k_len, x, block);
      mma_block(r0, d);
    }
  } else {
    for (int block = warp; block < blocks; block += kInFlight * kMmaWarps) {
      MmaLoads<kMats> r[kInFlight];
#pragma unroll
      for (int i = 0; i < kInFlight; ++i) {
        if (block + i * kMmaWarps < blocks) {
          mma_load(r[i], w, k_len, x, block + i * kMmaWarps);
        } else {
          r[i] = MmaLoads<kMats>{};
        }
      }
#pragma unroll
      for (int i = 0; i < kInFlight; ++i) mma_block(r[i], d);
    }
  }
  float* flat = &d[0][0][0];
#pragma unroll
  for (int i = 0; i < kMats * 8; ++i) red[warp][i][lane] = flat[i];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int i = 0; i < kMats * 8; ++i) {
      float sum = red[0][i][lane];
#pragma unroll
      for (int v = 1; v < kMmaWarps; ++v) sum += red[v][i][lane];
      flat[i] = sum;
    }
  }
}

// The token rows of a pass for this lane: tokens 8h + g (clamped to the pass's last row).
template <typename RowOf>
__device__ __forceinline__ void mma_token_rows(const bf16* (&x)[2], int n, RowOf row_of) {
  const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
  for (int h = 0; h < 2; ++h) x[h] = row_of(min(8 * h + g, n - 1));
}

__global__ void __launch_bounds__(kMmaWarps * 32)
    moe_gate_up_mma_kernel(const bf16* x, int64_t x_stride, const bf16* const* gate_up,
                           int64_t hidden, int64_t inter, const int32_t* offsets,
                           const int32_t* active, const int32_t* pair_of_row, int top_k, bf16* act,
                           int64_t act_stride, MoeSharedExpert shared) {
  pdl_begin();
  __shared__ float red[kMmaWarps][2 * 8][32];
  const int e = active[blockIdx.y];
  if (e < 0) return;  // uniform over the CTA
  if (e == shared.slot) inter = shared.inter;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * 16;
  if (j0 >= inter) return;  // the grid covers the wider of the two
  const int begin = offsets[e], count = offsets[e + 1] - begin;
  const bf16* const w[2] = {gate_up[e] + j0 * hidden, gate_up[e] + (inter + j0) * hidden};
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  for (int first = 0; first < count; first += kMmaTokens) {
    const int n = min(kMmaTokens, count - first);
    const bf16* xr[2];
    mma_token_rows(xr, n, [&](int c) {
      return x + static_cast<int64_t>(pair_of_row[begin + first + c] / top_k) * x_stride;
    });
    float d[2][2][4] = {};
    mma_rows<2, 2>(w, hidden, {xr[0], xr[1]}, d, red);
    if (threadIdx.x < 32) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int token = 8 * h + 2 * q + (i & 1);
          if (token >= n) continue;
          act[static_cast<int64_t>(begin + first + token) * act_stride + j0 + g + (i >> 1) * 8] =
              swiglu_rounded<bf16>(d[0][h][i], d[1][h][i]);
        }
      }
    }
    __syncthreads();  // red is reused by the next pass
  }
}

// The down product's K (an expert's inter, 1408 on V2-Lite) is short: four blocks in flight per
// warp keep enough loads outstanding (ncu at batch 1: 2.2 TB/s with two).
constexpr int kDownInFlight = 4;

// One tile of the down product: kMats · 16 rows of y from r0 on, for the expert's rows
// [begin, begin + count) of act.
template <int kMats>
__device__ __forceinline__ void moe_down_tile(const bf16* act, int64_t act_stride, const bf16* down,
                                              int64_t inter, int64_t r0, int begin, int count,
                                              bf16* y, int64_t y_stride, float* red_flat) {
  auto red = reinterpret_cast<float(*)[kMats * 8][32]>(red_flat);
  bf16 const* w[kMats];
#pragma unroll
  for (int m = 0; m < kMats; ++m) w[m] = down + (r0 + 16 * m) * inter;
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  for (int first = 0; first < count; first += kMmaTokens) {
    const int n = min(kMmaTokens, count - first);
    const bf16* xr[2];
    mma_token_rows(
        xr, n, [&](int c) { return act + static_cast<int64_t>(begin + first + c) * act_stride; });
    float d[kMats][2][4] = {};
    mma_rows<kMats, kDownInFlight>(w, inter, {xr[0], xr[1]}, d, red);
    if (threadIdx.x < 32) {
#pragma unroll
      for (int m = 0; m < kMats; ++m) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int token = 8 * h + 2 * q + (i & 1);
            if (token >= n) continue;
            y[static_cast<int64_t>(begin + first + token) * y_stride + r0 + 16 * m + g +
              (i >> 1) * 8] = from_float<bf16>(d[m][h][i]);
          }
        }
      }
    }
    __syncthreads();  // red is reused by the next pass
  }
}

// grid.x = hidden / 16. A routed expert's CTAs take 32 rows each (the first hidden / 32 CTAs);
// an expert with a longer K than the routed ones (V2's shared experts: 2 · 1408) takes 16 rows per
// CTA over all hidden / 16 CTAs, so that every CTA reads about the same bytes and the shared
// expert is not the launch's long pole.
__global__ void __launch_bounds__(kMmaWarps * 32)
    moe_down_mma_kernel(const bf16* act, int64_t act_stride, const bf16* const* down,
                        int64_t hidden, int64_t inter, const int32_t* offsets,
                        const int32_t* active, bf16* y, int64_t y_stride, MoeSharedExpert shared) {
  pdl_begin();
  __shared__ float red[kMmaWarps * 2 * 8 * 32];
  const int e = active[blockIdx.y];
  if (e < 0) return;
  const int begin = offsets[e], count = offsets[e + 1] - begin;
  if (e == shared.slot && shared.inter > inter) {
    moe_down_tile<1>(act, act_stride, down[e], shared.inter, static_cast<int64_t>(blockIdx.x) * 16,
                     begin, count, y, y_stride, red);
    return;
  }
  if (e == shared.slot) inter = shared.inter;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 32;
  if (r0 >= hidden) return;
  moe_down_tile<2>(act, act_stride, down[e], inter, r0, begin, count, y, y_stride, red);
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
                      int64_t num_local, int64_t shared_tokens, int32_t* offsets,
                      int32_t* pair_of_row, int32_t* row_of_pair, int32_t* active,
                      cudaStream_t stream) {
  DSHPC_CHECK(pairs > 0 && pairs <= kMoeSmallMaxPairs && num_local > 0 &&
              num_local <= kMoeSmallMaxExperts &&
              (shared_tokens == 0 || pairs % shared_tokens == 0))
      << "moe_index: " << pairs << " pairs, " << num_local << " local experts";
  const size_t shared = moe_index_shared_ints(num_local) * sizeof(int32_t);
  launch_pdl("moe_index_kernel", moe_index_kernel, 1, kIndexThreads, shared, stream, expert_ids,
             static_cast<int>(pairs), static_cast<int>(expert_begin), static_cast<int>(num_local),
             static_cast<int>(shared_tokens), offsets, pair_of_row, row_of_pair, active);
  DSHPC_CUDA_LAUNCH_CHECK("moe_index_kernel");
}

bool moe_small_mma_supported(int64_t hidden, int64_t inter, DType dtype) {
  return dtype == DType::kBF16 && hidden % 32 == 0 && inter % 32 == 0;
}

void launch_moe_gate_up_small(const Mat& x, const void* const* gate_up, int64_t inter,
                              int64_t num_local, const int32_t* offsets, const int32_t* active,
                              const int32_t* pair_of_row, int64_t top_k, const Mat& act,
                              bool tensor_cores, const MoeSharedExpert* shared,
                              cudaStream_t stream) {
  if (tensor_cores) {
    const MoeSharedExpert with = shared != nullptr ? *shared : MoeSharedExpert{-1, 0};
    DSHPC_CHECK(moe_small_mma_supported(x.cols, inter, x.dtype) &&
                (shared == nullptr || moe_small_mma_supported(x.cols, with.inter, x.dtype)) &&
                act.cols >= std::max(inter, with.inter))
        << "moe_gate_up_mma: shape";
    const dim3 grid(
        static_cast<unsigned>(std::max(inter, with.inter) / 16),
        static_cast<unsigned>(moe_active_slots(x.rows * top_k, num_local) + (shared ? 1 : 0)));
    launch_pdl("moe_gate_up_mma_kernel", moe_gate_up_mma_kernel, grid, kMmaWarps * 32, 0, stream,
               static_cast<const bf16*>(x.data), x.stride,
               reinterpret_cast<const bf16* const*>(gate_up), x.cols, inter, offsets, active,
               pair_of_row, static_cast<int>(top_k), static_cast<bf16*>(act.data), act.stride,
               with);
    DSHPC_CUDA_LAUNCH_CHECK("moe_gate_up_mma_kernel");
    return;
  }
  DSHPC_CHECK(shared == nullptr) << "moe_gate_up_small: shared experts need the tensor-core kernel";
  const dim3 grid(static_cast<unsigned>((inter + kWarpRows - 1) / kWarpRows),
                  static_cast<unsigned>(moe_active_slots(x.rows * top_k, num_local)));
  dispatch_float(x.dtype, "moe_gate_up_small", [&](auto tag) {
    using T = decltype(tag);
    launch_pdl("moe_gate_up_small_kernel", moe_gate_up_small_kernel<T>, grid, kWarpRows * 32, 0,
               stream, static_cast<const T*>(x.data), x.stride,
               reinterpret_cast<const T* const*>(gate_up), x.cols, inter, offsets, active,
               pair_of_row, static_cast<int>(top_k), static_cast<T*>(act.data), act.stride);
    DSHPC_CUDA_LAUNCH_CHECK("moe_gate_up_small_kernel");
  });
}

void launch_moe_down_small(const Mat& act, const void* const* down, int64_t num_local,
                           const int32_t* offsets, const int32_t* active, int64_t inter,
                           int64_t routed_pairs, const Mat& y, bool tensor_cores,
                           const MoeSharedExpert* shared, cudaStream_t stream) {
  if (tensor_cores) {
    const MoeSharedExpert with = shared != nullptr ? *shared : MoeSharedExpert{-1, 0};
    DSHPC_CHECK(moe_small_mma_supported(y.cols, inter, act.dtype) &&
                (shared == nullptr || moe_small_mma_supported(y.cols, with.inter, act.dtype)))
        << "moe_down_mma: shape";
    const dim3 grid(
        static_cast<unsigned>(y.cols / 16),
        static_cast<unsigned>(moe_active_slots(routed_pairs, num_local) + (shared ? 1 : 0)));
    launch_pdl("moe_down_mma_kernel", moe_down_mma_kernel, grid, kMmaWarps * 32, 0, stream,
               static_cast<const bf16*>(act.data), act.stride,
               reinterpret_cast<const bf16* const*>(down), y.cols, inter, offsets, active,
               static_cast<bf16*>(y.data), y.stride, with);
    DSHPC_CUDA_LAUNCH_CHECK("moe_down_mma_kernel");
    return;
  }
  DSHPC_CHECK(shared == nullptr && act.cols == inter)
      << "moe_down_small: shared experts need the tensor-core kernel";
  const dim3 grid(static_cast<unsigned>((y.cols + kWarpRows - 1) / kWarpRows),
                  static_cast<unsigned>(moe_active_slots(routed_pairs, num_local)));
  dispatch_float(act.dtype, "moe_down_small", [&](auto tag) {
    using T = decltype(tag);
    launch_pdl("moe_down_small_kernel", moe_down_small_kernel<T>, grid, kWarpRows * 32, 0, stream,
               static_cast<const T*>(act.data), act.stride, reinterpret_cast<const T* const*>(down),
               y.cols, act.cols, offsets, active, static_cast<T*>(y.data), y.stride);
    DSHPC_CUDA_LAUNCH_CHECK("moe_down_small_kernel");
  });
}

}  // namespace dshpc::cuda
