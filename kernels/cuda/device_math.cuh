// Device helpers shared by the kernels: element conversion (float32 / bf16 storage, float32
// arithmetic), warp and block reductions, and the dtype dispatch used by every launcher.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common/check.h"
#include "common/dtype.h"

namespace dshpc::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_float(float x) {
  return x;
}
__device__ __forceinline__ float to_float(bf16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
// Round to nearest even, as the CPU's float_to_bf16 and torch's .to(bfloat16).
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// SwiGLU of one gate and up value, each first rounded to T as the unfused path stores them:
// silu(g) · u with silu(g) = g / (1 + exp(−g)) (swiglu.cu), rounded to T.
template <typename T>
__device__ __forceinline__ T swiglu_rounded(float gate, float up) {
  const float g = to_float(from_float<T>(gate)), u = to_float(from_float<T>(up));
  return from_float<T>(g / (1.0f + expf(-g)) * u);
}

// c += a · b for one m16n8k16 tile (bf16 inputs, float32 accumulators; sm_80 and later). Lane
// l = 4g + q holds a = {A[g][2q..], A[g+8][2q..], A[g][2q+8..], A[g+8][2q+8..]} (pairs of
// consecutive k, the lower k in the low half), b = {B[2q..][g], B[2q+8..][g]} and
// c = {C[g][2q], C[g][2q+1], C[g+8][2q], C[g+8][2q+1]}.
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global → shared without registers (sm_80 and later); valid == false zero-fills the
// 16 bytes and reads nothing. Groups of copies are committed, then waited for until at most N
// groups are still in flight.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned int dst = static_cast<unsigned int>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8×8 bf16 matrices from shared memory, lanes 8i…8i+7 giving the rows of matrix i (the
// A-fragment layout of mma_16816 for a 16×16 tile); _trans transposes each (B from row-major).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  const unsigned int a = static_cast<unsigned int>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  const unsigned int a = static_cast<unsigned int>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Two floats as a bf16 pair (lo in the low half), rounded to nearest even.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats of shared memory.
// blockDim.x must be a multiple of 32. Starts with a barrier so that scratch may be reused by
// consecutive calls.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// Sixteen bytes of T as one vector load or store (raw) or as elements (e).
template <typename T>
union Vec16 {
  uint4 raw;
  T e[16 / sizeof(T)];
};

// The vectorised norms' element arithmetic, defined once for rmsnorm_vec_kernel and for the
// launches that must reproduce its values bit for bit (the MoE gate's and the experts' combine's).
// a + b rounded to T (the residual add).
template <typename T>
__device__ __forceinline__ Vec16<T> add_rounded(const Vec16<T>& a, const Vec16<T>& b) {
  Vec16<T> r;
#pragma unroll
  for (int j = 0; j < 16 / static_cast<int>(sizeof(T)); ++j) {
    r.e[j] = from_float<T>(to_float(a.e[j]) + to_float(b.e[j]));
  }
  return r;
}

// sum += x_j² in element order.
template <typename T>
__device__ __forceinline__ void add_squares(const Vec16<T>& x, float& sum) {
#pragma unroll
  for (int j = 0; j < 16 / static_cast<int>(sizeof(T)); ++j) {
    const float v = to_float(x.e[j]);
    sum += v * v;
  }
}

// 1 / rms of a row of `dim` values from their sum of squares.
__device__ __forceinline__ float inverse_rms(float sum_squares, int dim, float eps) {
  return 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);
}

// Chunk c of the normalised row: weight · (x · inv), rounded to T.
template <typename T, typename W>
__device__ __forceinline__ Vec16<T> scale_chunk(const Vec16<T>& x, const W* weight, int c,
                                                float inv) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  Vec16<T> o;
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    o.e[j] = from_float<T>(to_float(weight[c * kVec + j]) * (to_float(x.e[j]) * inv));
  }
  return o;
}

// 16-byte chunks a thread holds of a row in the vectorised norms (rmsnorm_vec_kernel and the
// launches that repeat its arithmetic: the MoE gate's and the experts' combine's); with 256
// threads, rows of up to 8,192 bf16 or 4,096 float32 values.
inline constexpr int kNormChunks = 4;

// Whether p is a multiple of `bytes` (a vector load's alignment), for the launchers' checks.
inline bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Grid size for a grid-stride loop over `count` items with `threads` per block: enough blocks to
// fill the device several times over, never more than the items need, within gridDim.x's limit.
inline unsigned int grid_for(int64_t count, int threads) {
  constexpr int64_t kMaxBlocks = 65536;  // grid-stride loops cover the rest
  const int64_t blocks = (count + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// Calls fn(T{}) with T = float or bf16 for the given storage type; other types stop the job with
// a message naming the operation.
template <typename Fn>
void dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::kF32:
      fn(float{});
      return;
    case DType::kBF16:
      fn(bf16{});
      return;
    default:
      DSHPC_FATAL() << op << ": unsupported element type " << dtype_name(dtype)
                    << " (CUDA kernels take F32 or BF16)";
  }
}

}  // namespace dshpc::cuda
