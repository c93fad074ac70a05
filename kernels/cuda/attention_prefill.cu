// Prefill attention on the tensor cores (CPU reference: paged_attention_cpu in
// kernels/attention_cpu.cpp; attention.cu is the general kernel for the shapes this one does not
// take, attention_decode.cu the decode kernel).
//
// FlashAttention-2's schedule over the paged cache, bf16 in, float32 accumulation:
//   a CTA owns kBlockM = 64 consecutive query rows of one sequence and one query head (4 warps,
//   16 rows each); it walks the keys the rows may see in tiles of kBlockN = 64, double-buffered
//   in shared memory with cp.async (each key row found through the block table), and for each
//   tile computes S = Q·Kᵀ with mma.sync m16n8k16, the causal mask, the online softmax in
//   registers (log2 domain), and O += P·V with P reused from the S accumulators as the A
//   operand. O is normalised once at the end. No score matrix exists outside registers.
// Fragments come from shared memory through ldmatrix (.trans for V); rows are padded by 8
// elements so that the eight 16-byte rows of an 8×8 matrix fall in distinct banks.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;

struct PrefillArgs {
  const bf16* q;
  bf16* out;
  const bf16* k;
  const bf16* v;
  const PagedSequence* sequences;
  const AttentionTile* tiles;
  int64_t k_token_stride;
  int64_t v_token_stride;
  int q_heads;
  int group;
  int block_size;
  float scale_log2;
};

template <int D>
struct Smem {
  static constexpr int kPitch = D + kPad;  // elements per row
  static constexpr size_t kQ = size_t{kBlockM} * kPitch;
  static constexpr size_t kKv = size_t{kBlockN} * kPitch;
  // q | k[2] | v[2] | slots[2][kBlockN] (int64)
  static constexpr size_t kBytes = (kQ + 4 * kKv) * sizeof(bf16) + 2 * kBlockN * sizeof(int64_t);
};

template <int D>
__global__ void __launch_bounds__(kThreads) prefill_attention_kernel(PrefillArgs a) {
  pdl_begin();
  using S = Smem<D>;
  constexpr int kPitch = S::kPitch;
  constexpr int kChunks = D / 8;  // 16-byte pieces per row
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* k_s = q_s + S::kQ;                                         // [2][kBlockN][kPitch]
  bf16* v_s = k_s + 2 * S::kKv;                                    // [2][kBlockN][kPitch]
  int64_t* slot_s = reinterpret_cast<int64_t*>(v_s + 2 * S::kKv);  // [2][kBlockN]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const AttentionTile tile = a.tiles[blockIdx.x];
  const int head = blockIdx.y;
  const int kv_head = head / a.group;
  const PagedSequence seq = a.sequences[tile.sequence];
  const int first_position = seq.context_len - seq.query_len;
  const int rows = min(kBlockM, seq.query_len - tile.first);
  const int num_keys = first_position + tile.first + rows;  // seen by the tile's last row
  const int num_tiles = (num_keys + kBlockN - 1) / kBlockN;

  // Q tile → shared memory (rows past the sequence: zeros).
  for (int i = threadIdx.x; i < kBlockM * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = r < rows;
    const int64_t token = seq.query_begin + tile.first + (valid ? r : 0);
    cp_async16(q_s + r * kPitch + c * 8, a.q + (token * a.q_heads + head) * D + c * 8, valid);
  }
  auto load_tile = [&](int it, int buffer) {
    const int key0 = it * kBlockN;
    int64_t* slots = slot_s + buffer * kBlockN;
    if (threadIdx.x < kBlockN) {
      const int position = key0 + threadIdx.x;
      slots[threadIdx.x] =
          position < num_keys
              ? static_cast<int64_t>(seq.block_table[position / a.block_size]) * a.block_size +
                    position % a.block_size
              : -1;
    }
    __syncthreads();
    bf16* kb = k_s + buffer * S::kKv;
    bf16* vb = v_s + buffer * S::kKv;
    for (int i = threadIdx.x; i < kBlockN * kChunks; i += kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const int64_t slot = slots[r];
      const bool valid = slot >= 0;
      const int64_t s = valid ? slot : 0;
      cp_async16(kb + r * kPitch + c * 8,
                 a.k + s * a.k_token_stride + static_cast<int64_t>(kv_head) * D + c * 8, valid);
      cp_async16(vb + r * kPitch + c * 8,
                 a.v + s * a.v_token_stride + static_cast<int64_t>(kv_head) * D + c * 8, valid);
    }
    cp_async_commit();
  };
  load_tile(0, 0);  // commits the Q loads with the first tile

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_row[2] = {-INFINITY, -INFINITY};
  float l_row[2] = {0.0f, 0.0f};
  // Query positions of this thread's two rows (g and g + 8 of the warp's 16).
  const int row0 = warp * 16 + g;
  const int limit0 = first_position + tile.first + row0;  // last visible key, row g
  const int limit1 = limit0 + 8;                          // row g + 8

  for (int it = 0; it < num_tiles; ++it) {
    const int buffer = it & 1;
    if (it + 1 < num_tiles) {
      load_tile(it + 1, buffer ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* kb = k_s + buffer * S::kKv;
    const bf16* vb = v_s + buffer * S::kKv;
    const int key0 = it * kBlockN;

    // S = Q · Kᵀ for the warp's 16 rows and the tile's 64 keys (8 n-tiles of 8 keys).
    float s[kBlockN / 8][4];
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[4];
      {
        const int mi = lane >> 3;
        const int r = warp * 16 + (mi & 1) * 8 + (lane & 7);
        ldmatrix_x4(qa, q_s + r * kPitch + kk * 16 + (mi >> 1) * 8);
      }
#pragma unroll
      for (int j = 0; j < kBlockN / 8; j += 2) {
        uint32_t kf[4];
        const int mi = lane >> 3;
        const int key = (j + (mi >> 1)) * 8 + (lane & 7);
        ldmatrix_x4(kf, kb + key * kPitch + kk * 16 + (mi & 1) * 8);
        mma_16816(s[j], qa, kf[0], kf[1]);
        mma_16816(s[j + 1], qa, kf[2], kf[3]);
      }
    }

    // Mask (causal and past the context), scale, and the online softmax of rows g and g + 8.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + j * 8 + 2 * t + (e & 1);
        const int limit = e < 2 ? limit0 : limit1;
        const float value = key <= limit ? s[j][e] * a.scale_log2 : -INFINITY;
        s[j][e] = value;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], value);
      }
    }
    float corr[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
      const float m_new = fmaxf(m_row[h], tile_max[h]);
      // A row with no visible key yet keeps m = −inf; its probabilities are 0.
      corr[h] = m_new == -INFINITY ? 1.0f : exp2f(m_row[h] - m_new);
      m_row[h] = m_new;
    }
    float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float m = m_row[e >> 1];
        const float p = m == -INFINITY ? 0.0f : exp2f(s[j][e] - m);
        s[j][e] = p;
        row_sum[e >> 1] += p;
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) l_row[h] = l_row[h] * corr[h] + row_sum[h];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= corr[0];
      o[n][1] *= corr[0];
      o[n][2] *= corr[1];
      o[n][3] *= corr[1];
    }

    // O += P · V: P (16 × 64) from the S accumulators as bf16 A fragments, one per 16 keys.
#pragma unroll
    for (int kc = 0; kc < kBlockN / 16; ++kc) {
      uint32_t pa[4];
      pa[0] = pack_bf16(s[2 * kc][0], s[2 * kc][1]);
      pa[1] = pack_bf16(s[2 * kc][2], s[2 * kc][3]);
      pa[2] = pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]);
      pa[3] = pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3]);
#pragma unroll
      for (int n = 0; n < D / 8; n += 2) {
        uint32_t vf[4];
        const int mi = lane >> 3;
        const int key = kc * 16 + (mi & 1) * 8 + (lane & 7);
        ldmatrix_x4_trans(vf, vb + key * kPitch + (n + (mi >> 1)) * 8);
        mma_16816(o[n], pa, vf[0], vf[1]);
        mma_16816(o[n + 1], pa, vf[2], vf[3]);
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }

  // Normalise and store rows g and g + 8 (the four threads of a row share its sum).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_row[h] += __shfl_xor_sync(0xffffffffu, l_row[h], 1);
    l_row[h] += __shfl_xor_sync(0xffffffffu, l_row[h], 2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + 8 * h;
    if (r >= rows) continue;
    const float inv = l_row[h] > 0.0f ? 1.0f / l_row[h] : 0.0f;
    const int64_t token = seq.query_begin + tile.first + r;
    bf16* out_row = a.out + (token * a.q_heads + head) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const __nv_bfloat162 v = __floats2bfloat162_rn(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
      *reinterpret_cast<__nv_bfloat162*>(out_row + n * 8 + 2 * t) = v;
    }
  }
}

template <int D>
void launch(const PrefillArgs& args, int64_t num_tiles, cudaStream_t stream) {
  const size_t smem = Smem<D>::kBytes;
  static const bool configured = [&] {
    DSHPC_CUDA_CHECK(cudaFuncSetAttribute(prefill_attention_kernel<D>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    return true;
  }();
  (void)configured;
  const dim3 grid(static_cast<unsigned int>(num_tiles), static_cast<unsigned int>(args.q_heads));
  launch_pdl("prefill_attention_kernel", prefill_attention_kernel<D>, grid, kThreads, smem, stream,
             args);
  DSHPC_CUDA_LAUNCH_CHECK("prefill_attention_kernel");
}

}  // namespace

int prefill_attention_rows_per_cta() {
  return kBlockM;
}

bool prefill_attention_supported(const Mat& q, const PagedKvView& cache, DType dtype) {
  const int64_t d = cache.head_dim;
  return dtype == DType::kBF16 && (d == 64 || d == 128) && cache.v_dim == d && cache.v != cache.k &&
         aligned_to(q.data, 16) && aligned_to(cache.k, 16) && aligned_to(cache.v, 16) &&
         cache.k_token_stride % 8 == 0 && cache.v_token_stride % 8 == 0;
}

void launch_prefill_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                              const AttentionTile* tiles, int64_t num_tiles, int64_t q_heads,
                              const PagedKvView& cache, float scale, cudaStream_t stream) {
  if (num_tiles == 0) return;
  DSHPC_CHECK(prefill_attention_supported(q, cache, q.dtype) && out.dtype == DType::kBF16)
      << "prefill attention: unsupported shape";
  DSHPC_CHECK(num_tiles <= 0x7fffffff && q_heads <= 65535)
      << "prefill attention: grid " << num_tiles << " x " << q_heads;
  PrefillArgs args{};
  args.q = static_cast<const bf16*>(q.data);
  args.out = static_cast<bf16*>(out.data);
  args.k = reinterpret_cast<const bf16*>(cache.k);
  args.v = reinterpret_cast<const bf16*>(cache.v);
  args.sequences = sequences;
  args.tiles = tiles;
  args.k_token_stride = cache.k_token_stride;
  args.v_token_stride = cache.v_token_stride;
  args.q_heads = static_cast<int>(q_heads);
  args.group = static_cast<int>(q_heads / cache.kv_heads);
  args.block_size = static_cast<int>(cache.block_size);
  args.scale_log2 = scale * kLog2e;
  if (cache.head_dim == 64) {
    launch<64>(args, num_tiles, stream);
  } else {
    launch<128>(args, num_tiles, stream);
  }
}

}  // namespace dshpc::cuda
