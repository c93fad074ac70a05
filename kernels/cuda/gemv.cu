// Matrix products with a few rows of x (decode steps), y[m, n] = Σ_k x[m, k] · w[n, k] (CPU
// reference: cblas_sgemm in kernels/cpu_backend.cpp; larger products go through cuBLAS,
// matmul.cu).
//
// A decode step of a batch of one reads every weight once and does two FLOPs per weight, so it
// runs at the memory's speed or not at all: one warp per output row streams the row with 16-byte
// loads (eight bf16), kUnroll loads in flight per lane before any arithmetic, and keeps the M
// rows of x (a few KB, from L1/L2) beside it. Accumulation is float32, one rounding on store.
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 8;  // 128 bytes in flight per lane: the loads of a short row in one go

__device__ __forceinline__ void unpack8(const uint4& raw, float (&out)[8]) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(pairs[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// One product's operands; a launch covers the rows of one or two (launch_gemv_pair: the
// second's rows follow the first's).
template <typename TY>
struct GemvOperand {
  const bf16* w;
  int64_t w_stride;
  TY* y;
  int64_t y_stride;
  int n;
};

// Per-head offsets in elements (matmul_heads): grid row h takes x, the first operand's w and its
// y moved by h times these; all 0 with one grid row.
struct GemvHeads {
  int64_t x = 0, w = 0, y = 0;
};

// Launched with launch_pdl (pdl.h): loads weights before pdl_wait, touches x and y only after.
template <int M, typename TY>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const bf16* __restrict__ x, int64_t x_stride, GemvOperand<TY> first,
                GemvOperand<TY> second, int k, bool accumulate, GemvHeads heads) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x += blockIdx.y * heads.x;
  first.w += blockIdx.y * heads.w;
  first.y += blockIdx.y * heads.y;
  int row = blockIdx.x * kWarps + warp;
  const bool in_first = row < first.n;
  if (!in_first) row -= first.n;
  if (row >= (in_first ? first.n : second.n)) return;
  const bf16* __restrict__ w = in_first ? first.w : second.w;
  const int64_t w_stride = in_first ? first.w_stride : second.w_stride;
  const int64_t y_stride = in_first ? first.y_stride : second.y_stride;
  TY* __restrict__ y = in_first ? first.y : second.y;
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(row) * w_stride);
  const int chunks = k / 8;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  auto load = [&](uint4(&wv)[kUnroll], int c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * 32;
      if (c < chunks) wv[u] = __ldcs(wr + c);  // streamed once: keep it out of the caches
    }
  };
  // The row's first loads (all of a 4,096-byte row) are weights: they are issued before
  // pdl_wait, while the kernel before still runs.
  uint4 wv[kUnroll];
  load(wv, lane);
  pdl_begin();

  for (int c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    if (c0 != lane) load(wv, c0);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * 32;
      if (c >= chunks) break;
      float wf[8];
      unpack8(wv[u], wf);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[8];
        unpack8(__ldg(reinterpret_cast<const uint4*>(x + m * x_stride) + c), xf);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[m] = fmaf(wf[j], xf[j], acc[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = warp_sum(acc[m]);
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      TY* out = y + m * y_stride + row;
      const float prior = accumulate ? to_float(*out) : 0.0f;
      *out = from_float<TY>(acc[m] + prior);
    }
  }
}

template <typename TY>
GemvOperand<TY> operand(const Mat& w, const Mat& y) {
  return {static_cast<const bf16*>(w.data), w.stride, static_cast<TY*>(y.data), y.stride,
          static_cast<int>(w.rows)};
}

// second.n == 0: one product; head_count > 1 (second.n == 0): that many, moved by `heads`.
template <typename TY>
void launch_rows(const Mat& x, GemvOperand<TY> first, GemvOperand<TY> second, int k,
                 bool accumulate, cudaStream_t stream, int head_count = 1, GemvHeads heads = {}) {
  const int64_t rows = static_cast<int64_t>(first.n) + second.n;
  const dim3 blocks(static_cast<unsigned int>((rows + kWarps - 1) / kWarps),
                    static_cast<unsigned int>(head_count));
  const auto* xp = static_cast<const bf16*>(x.data);
#define DSHPC_GEMV_CASE(M)                                                                      \
  case M:                                                                                       \
    launch_pdl("gemv_kernel", gemv_kernel<M, TY>, blocks, kWarps * 32, 0, stream, xp, x.stride, \
               first, second, k, accumulate, heads);                                            \
    break;
  switch (x.rows) {
    DSHPC_GEMV_CASE(1)
    DSHPC_GEMV_CASE(2)
    DSHPC_GEMV_CASE(3)
    DSHPC_GEMV_CASE(4)
    DSHPC_GEMV_CASE(5)
    DSHPC_GEMV_CASE(6)
    DSHPC_GEMV_CASE(7)
    DSHPC_GEMV_CASE(8)
    default:
      DSHPC_FATAL() << "gemv: " << x.rows << " rows (at most " << kGemvMaxRows << ")";
  }
#undef DSHPC_GEMV_CASE
  DSHPC_CUDA_LAUNCH_CHECK("gemv_kernel");
}

}  // namespace

bool gemv_supported(const Mat& x, const Mat& w, const Mat& y, bool w_transposed) {
  return w_transposed && x.rows >= 1 && x.rows <= kGemvMaxRows && x.dtype == DType::kBF16 &&
         w.dtype == DType::kBF16 && (y.dtype == DType::kBF16 || y.dtype == DType::kF32) &&
         w.cols % 8 == 0 && w.stride % 8 == 0 && x.stride % 8 == 0 && aligned_to(x.data, 16) &&
         aligned_to(w.data, 16) && w.rows <= 0x7fffffff && w.cols <= 0x7fffffff;
}

void check_gemv(const Mat& x, const Mat& w, const Mat& y) {
  DSHPC_CHECK(gemv_supported(x, w, y, true) && x.cols == w.cols && y.rows == x.rows &&
              y.cols == w.rows)
      << "gemv: x [" << x.rows << ", " << x.cols << "], w [" << w.rows << ", " << w.cols << "], y ["
      << y.rows << ", " << y.cols << "]";
}

void launch_gemv(const Mat& x, const Mat& w, const Mat& y, bool accumulate, cudaStream_t stream) {
  check_gemv(x, w, y);
  const int k = static_cast<int>(w.cols);
  if (y.dtype == DType::kF32) {
    launch_rows<float>(x, operand<float>(w, y), GemvOperand<float>{}, k, accumulate, stream);
  } else {
    launch_rows<bf16>(x, operand<bf16>(w, y), GemvOperand<bf16>{}, k, accumulate, stream);
  }
}

bool gemv_heads_supported(const Mat& x, const Mat& w, const Mat& y, int64_t heads, int64_t x_offset,
                          int64_t w_offset, int64_t y_offset, bool w_transposed) {
  // Every head's x and w rows 16-byte aligned (y is stored by element).
  return gemv_supported(x, w, y, w_transposed) && w.rows >= 1 && heads >= 1 && heads <= 65535 &&
         x_offset % 8 == 0 && w_offset % 8 == 0 && x_offset >= 0 && w_offset >= 0 && y_offset >= 0;
}

void launch_gemv_heads(const Mat& x, const Mat& w, const Mat& y, int64_t heads, int64_t x_offset,
                       int64_t w_offset, int64_t y_offset, cudaStream_t stream) {
  check_gemv(x, w, y);
  DSHPC_CHECK(gemv_heads_supported(x, w, y, heads, x_offset, w_offset, y_offset, true))
      << "gemv heads: " << heads << " heads, offsets " << x_offset << ", " << w_offset << ", "
      << y_offset;
  const int k = static_cast<int>(w.cols);
  const GemvHeads offsets{x_offset, w_offset, y_offset};
  const int count = static_cast<int>(heads);
  if (y.dtype == DType::kF32) {
    launch_rows<float>(x, operand<float>(w, y), GemvOperand<float>{}, k, false, stream, count,
                       offsets);
  } else {
    launch_rows<bf16>(x, operand<bf16>(w, y), GemvOperand<bf16>{}, k, false, stream, count,
                      offsets);
  }
}

bool gemv_pair_supported(const Mat& x, const Mat& w1, const Mat& y1, const Mat& w2, const Mat& y2) {
  return gemv_supported(x, w1, y1, true) && gemv_supported(x, w2, y2, true) &&
         y1.dtype == y2.dtype && w1.cols == w2.cols && w1.rows + w2.rows <= 0x7fffffff;
}

void launch_gemv_pair(const Mat& x, const Mat& w1, const Mat& y1, const Mat& w2, const Mat& y2,
                      cudaStream_t stream) {
  check_gemv(x, w1, y1);
  check_gemv(x, w2, y2);
  DSHPC_CHECK(gemv_pair_supported(x, w1, y1, w2, y2)) << "gemv pair: output types differ";
  const int k = static_cast<int>(w1.cols);
  if (y1.dtype == DType::kF32) {
    launch_rows<float>(x, operand<float>(w1, y1), operand<float>(w2, y2), k, false, stream);
  } else {
    launch_rows<bf16>(x, operand<bf16>(w1, y1), operand<bf16>(w2, y2), k, false, stream);
  }
}

}  // namespace dshpc::cuda
