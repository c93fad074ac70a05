// MLA's per-token steps between the down-projections and the latent attention, in one launch for
// a decode step's few tokens (Backend::mla_prepare; the default op-by-op form in
// kernels/backend.cpp is its reference):
//   cache[slots[t]] = [rmsnorm(c_t) · kv_norm | rope(k_pe_t)]
//   q_absorbed[t, h] = [W_UK_hᵀ · q_nope[t, h] | rope(q_pe[t, h])]
// Op by op these are six launches (norm, two ropes, the cache write, the batched absorption
// product and a copy) that each read a few KB; at batch 1 on V2-Lite they cost more than the
// layer's attention.
//
// Grid: heads · (lora / kCols) absorption CTAs, then one CTA per token for its latent entry.
// An absorption CTA (head h, kCols columns of the latent) streams the nope rows of W_UK_h once,
// a warp per row with two columns per lane, for all of the step's tokens (their q_nope in shared
// memory), and reduces over its warps through shared memory. The CTAs of column 0 also rotate
// the head's q_pe. Rounding follows the op-by-op path: each stored value is rounded once from
// float32 (the rotations read the stored, unrotated values).
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kCols = 64;      // latent columns per absorption CTA: two per lane
constexpr int kRowBatch = 16;  // W_UK rows per warp whose loads are in flight together

template <typename T>
struct MlaPrepareParams {
  const T* q;
  int64_t q_stride;
  const T* latent;
  int64_t latent_stride;
  const T* kv_norm;
  float eps;
  const T* kv_b;
  int64_t kv_b_stride;
  int tokens, heads, nope, rope, lora, v_dim;
  const int32_t* positions;
  const int64_t* slots;
  const float* cos;
  const float* sin;
  bool interleaved;
  T* cache;
  int64_t cache_stride;
  T* out;
  int64_t out_stride;
};

__device__ __forceinline__ float2 load2(const float* p) {
  return *reinterpret_cast<const float2*>(p);
}
__device__ __forceinline__ float2 load2(const bf16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// Rotates pair `pair` of the rope dims at src into dst (both of T), position `pos`.
template <typename T>
__device__ __forceinline__ void rotate_pair(const T* src, T* dst, int pair, int half, int pos,
                                            const MlaPrepareParams<T>& p) {
  const int a_at = p.interleaved ? 2 * pair : pair;
  const int b_at = p.interleaved ? 2 * pair + 1 : pair + half;
  const float cos_v = p.cos[static_cast<int64_t>(pos) * half + pair];
  const float sin_v = p.sin[static_cast<int64_t>(pos) * half + pair];
  const float a = to_float(src[a_at]), b = to_float(src[b_at]);
  dst[a_at] = from_float<T>(a * cos_v - b * sin_v);
  dst[b_at] = from_float<T>(b * cos_v + a * sin_v);
}

template <typename T>
__device__ void absorb(const MlaPrepareParams<T>& p, int h, int chunk, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int qk = p.nope + p.rope, entry = p.lora + p.rope;
  float* qn = smem;                       // [tokens][nope]
  float* red = smem + p.tokens * p.nope;  // [kWarps][tokens][kCols]
  const int col = chunk * kCols + 2 * lane;
  const T* w = p.kv_b + static_cast<int64_t>(h) * (p.nope + p.v_dim) * p.kv_b_stride + col;
  float2 wv[kRowBatch];
  auto load_rows = [&](int n0) {
#pragma unroll
    for (int b = 0; b < kRowBatch; ++b) {
      const int n = n0 + b * kWarps;
      wv[b] = n < p.nope ? load2(w + static_cast<int64_t>(n) * p.kv_b_stride) : float2{0.f, 0.f};
    }
  };
  // The first batch of W_UK rows (weights: V2's 128 nope rows are all of them) before pdl_wait,
  // while the kernel before still runs; the queries only after.
  load_rows(warp);
  pdl_begin();
  for (int i = threadIdx.x; i < p.tokens * p.nope; i += blockDim.x) {
    const int t = i / p.nope, n = i % p.nope;
    qn[i] = to_float(p.q[t * p.q_stride + h * qk + n]);
  }
  __syncthreads();
  float acc[kMlaPrepareMaxTokens][2] = {};
  for (int n0 = warp; n0 < p.nope; n0 += kWarps * kRowBatch) {
    if (n0 != warp) load_rows(n0);
#pragma unroll
    for (int b = 0; b < kRowBatch; ++b) {
      const int n = n0 + b * kWarps;
      if (n >= p.nope) break;
#pragma unroll
      for (int t = 0; t < kMlaPrepareMaxTokens; ++t) {
        if (t >= p.tokens) break;
        const float qv = qn[t * p.nope + n];
        acc[t][0] = fmaf(qv, wv[b].x, acc[t][0]);
        acc[t][1] = fmaf(qv, wv[b].y, acc[t][1]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kMlaPrepareMaxTokens; ++t) {
    if (t >= p.tokens) break;
    float* r = red + (warp * p.tokens + t) * kCols + 2 * lane;
    r[0] = acc[t][0];
    r[1] = acc[t][1];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < p.tokens * kCols; i += blockDim.x) {
    const int t = i / kCols, j = i % kCols;
    float sum = 0.0f;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) sum += red[(v * p.tokens + t) * kCols + j];
    p.out[t * p.out_stride + h * entry + chunk * kCols + j] = from_float<T>(sum);
  }

  if (chunk == 0) {  // this head's rotated q_pe
    const int half = p.rope / 2;
    for (int i = threadIdx.x; i < p.tokens * half; i += blockDim.x) {
      const int t = i / half, pair = i % half;
      rotate_pair(p.q + t * p.q_stride + h * qk + p.nope,
                  p.out + t * p.out_stride + h * entry + p.lora, pair, half, p.positions[t], p);
    }
  }
}

template <typename T>
__device__ void latent_entry(const MlaPrepareParams<T>& p, int t) {
  __shared__ float scratch[32];
  const int64_t slot = p.slots[t];
  if (slot < 0) return;  // a padding row: uniform over the CTA
  const T* row = p.latent + t * p.latent_stride;
  T* dst = p.cache + slot * p.cache_stride;
  float sum_squares = 0.0f;
  for (int i = threadIdx.x; i < p.lora; i += blockDim.x) {
    const float v = to_float(row[i]);
    sum_squares += v * v;
  }
  sum_squares = block_sum(sum_squares, scratch);
  const float inv = 1.0f / sqrtf(sum_squares / static_cast<float>(p.lora) + p.eps);
  for (int i = threadIdx.x; i < p.lora; i += blockDim.x) {
    dst[i] = from_float<T>(to_float(p.kv_norm[i]) * (to_float(row[i]) * inv));
  }
  const int half = p.rope / 2;
  for (int pair = threadIdx.x; pair < half; pair += blockDim.x) {
    rotate_pair(row + p.lora, dst + p.lora, pair, half, p.positions[t], p);
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) mla_prepare_kernel(MlaPrepareParams<T> p) {
  extern __shared__ float smem[];
  const int absorb_ctas = p.heads * (p.lora / kCols);
  if (static_cast<int>(blockIdx.x) < absorb_ctas) {
    const int chunks = p.lora / kCols;
    absorb(p, blockIdx.x / chunks, blockIdx.x % chunks, smem);  // pdl_begin after its weights
  } else {
    pdl_begin();
    latent_entry(p, blockIdx.x - absorb_ctas);
  }
}

size_t shared_bytes(int64_t tokens, int64_t nope) {
  return static_cast<size_t>(tokens * nope + kWarps * tokens * kCols) * sizeof(float);
}

}  // namespace

bool mla_prepare_supported(const MlaPrepareArgs& a, DType dtype) {
  const int64_t rope = a.rope, lora = a.latent.cols - a.rope, tokens = a.q.rows;
  const size_t element = dtype_size(dtype);
  return (dtype == DType::kF32 || dtype == DType::kBF16) && tokens >= 1 &&
         tokens <= kMlaPrepareMaxTokens && a.heads >= 1 && a.nope >= 1 && rope >= 2 &&
         rope % 2 == 0 && lora >= kCols && lora % kCols == 0 && a.tables.rot_dim == rope &&
         a.q.dtype == dtype && a.latent.dtype == dtype && a.kv_b.dtype == dtype &&
         a.q_absorbed.dtype == dtype && a.q.cols == a.heads * (a.nope + rope) &&
         a.latent.rows == tokens && a.q_absorbed.rows == tokens &&
         a.q_absorbed.cols == a.heads * (lora + rope) && a.kv_b.cols == lora &&
         a.kv_b.rows >= a.heads * (a.nope + a.v_dim) && a.kv_b.stride % 2 == 0 &&
         aligned_to(a.kv_b.data, 2 * element) && a.cache.kv_heads == 1 &&
         a.cache.head_dim == lora + rope &&
         shared_bytes(tokens, a.nope) + 32 * sizeof(float) <= 48 * 1024;  // + latent_entry's
}

void launch_mla_prepare(const MlaPrepareArgs& a, DType dtype, cudaStream_t stream) {
  DSHPC_CHECK(mla_prepare_supported(a, dtype))
      << "mla_prepare: q [" << a.q.rows << ", " << a.q.cols << "], latent [" << a.latent.rows
      << ", " << a.latent.cols << "], " << a.heads << " heads";
  dispatch_float(dtype, "mla_prepare", [&](auto tag) {
    using T = decltype(tag);
    MlaPrepareParams<T> p{};
    p.q = static_cast<const T*>(a.q.data);
    p.q_stride = a.q.stride;
    p.latent = static_cast<const T*>(a.latent.data);
    p.latent_stride = a.latent.stride;
    p.kv_norm = static_cast<const T*>(a.kv_norm);
    p.eps = a.eps;
    p.kv_b = static_cast<const T*>(a.kv_b.data);
    p.kv_b_stride = a.kv_b.stride;
    p.tokens = static_cast<int>(a.q.rows);
    p.heads = static_cast<int>(a.heads);
    p.nope = static_cast<int>(a.nope);
    p.rope = static_cast<int>(a.rope);
    p.lora = static_cast<int>(a.latent.cols - a.rope);
    p.v_dim = static_cast<int>(a.v_dim);
    p.positions = a.positions;
    p.slots = a.slots;
    p.cos = a.tables.cos;
    p.sin = a.tables.sin;
    p.interleaved = a.style == RopeStyle::kInterleaved;
    p.cache = reinterpret_cast<T*>(a.cache.k);
    p.cache_stride = a.cache.k_token_stride;
    p.out = static_cast<T*>(a.q_absorbed.data);
    p.out_stride = a.q_absorbed.stride;
    const unsigned int blocks = static_cast<unsigned int>(a.heads * (p.lora / kCols) + a.q.rows);
    launch_pdl("mla_prepare_kernel", mla_prepare_kernel<T>, blocks, kWarps * 32,
               shared_bytes(a.q.rows, a.nope), stream, p);
    DSHPC_CUDA_LAUNCH_CHECK("mla_prepare_kernel");
  });
}

}  // namespace dshpc::cuda
