// Prefill attention of MLA's absorbed form on the tensor cores (CPU reference: paged_attention_cpu
// in kernels/attention_cpu.cpp; attention.cu's general kernel is the fallback).
//
// In the absorbed form (worker/mla_attention.cpp) every query head attends to the same latent
// cache entries [c | k_pe] of DK = latent + rope values, and an entry's value is its first
// DV = latent values: multi-query attention with very wide heads (576 and 512 for DeepSeek-V2
// and V3). So a CTA takes 64 query rows that are (token, head) pairs, 4 tokens × 16 heads or
// 1 token × 64 heads, which all read the same keys; it walks the keys its last token may see,
// 32 a tile, double-buffered in shared memory with cp.async (each key row found through the
// block table), and one tile in shared memory gives both the keys (all DK columns) and the
// values (the first DV).
//
// Eight warps: warp w computes the scores S = Q·Kᵀ of rows 16 (w mod 4) … +16 for the tile, and
// accumulates O += P·V for half of the output columns, (w div 4) · DV/2 … +DV/2, in float32
// registers (128 a thread for DV = 512). In the first form both warps of a row group compute
// the same scores: DK/(DK + DV) more products, but no exchange through shared memory. The online
// softmax runs in registers in the log2 domain, and P is rounded to bf16 for P·V, as in
// attention_prefill.cu (FlashAttention-2's schedule), whose fragment layouts this follows.
//
// The split form (kSplit, the default; DSHPC_MLA_PREFILL_SPLIT=0 selects the first) computes
// each score once: the two warps of a row group take 16 of the tile's keys each, exchange their
// rows' maxima and their probabilities through shared memory (a named barrier per pair of
// warps), and each then multiplies all 32 keys' probabilities into its half of the columns.
// Their sums of probabilities, each over its own keys, are added at the end.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kRows = 64;  // query rows (token, head) of a CTA
constexpr int kKeys = 32;  // keys of a tile
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Rows padded by 8 elements: a pitch that is an odd multiple of 16 bytes (1,168 for DK = 576, 176
// for 80) puts the eight rows of an ldmatrix in distinct banks.
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;

struct MlaPrefillArgs {
  const bf16* q;  // [tokens, q_heads, DK]
  bf16* out;      // [tokens, q_heads, DV]
  const bf16* cache;
  const PagedSequence* sequences;
  const AttentionTile* tiles;
  int64_t token_stride;  // between cache entries, in elements
  int q_heads;
  int heads_per_cta;
  int tokens_per_cta;
  int block_size;
  float scale_log2;
};

constexpr int kPPitch = kKeys / 2 + 8;  // a warp's probabilities [16][16], rows 48 bytes apart

template <int DK>
struct MlaSmem {
  static constexpr int kPitch = DK + kPad;
  static constexpr size_t kQ = size_t{kRows} * kPitch;
  static constexpr size_t kTile = size_t{kKeys} * kPitch;
  // q | tiles[2] | slots[2][kKeys] (int64) | the split form's exchange: a float per warp and
  // row, then each warp's probabilities
  static constexpr size_t kExchange = kWarps * 16 * sizeof(float);
  static constexpr size_t kProbabilities = size_t{kWarps} * 16 * kPPitch * sizeof(bf16);
  static constexpr size_t kBytes =
      (kQ + 2 * kTile) * sizeof(bf16) + 2 * kKeys * sizeof(int64_t) + kExchange + kProbabilities;
};

// The two warps of a row group (w and w + 4) meet: named barrier 1 + group of 64 threads.
__device__ __forceinline__ void pair_barrier(int group) {
  asm volatile("bar.sync %0, 64;\n" ::"r"(1 + group) : "memory");
}

template <int DK, int DV, bool kSplit>
__global__ void __launch_bounds__(kThreads, 1) mla_prefill_attention_kernel(MlaPrefillArgs a) {
  static_assert(DK % 16 == 0 && DV % 32 == 0 && DV <= DK, "MLA prefill shapes");
  pdl_begin();
  using S = MlaSmem<DK>;
  constexpr int kPitch = S::kPitch;
  constexpr int kChunks = DK / 8;  // 16-byte pieces of an entry
  constexpr int kHalf = DV / 2;    // output columns of a warp
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* kv_s = q_s + S::kQ;                                           // [2][kKeys][kPitch]
  int64_t* slot_s = reinterpret_cast<int64_t*>(kv_s + 2 * S::kTile);  // [2][kKeys]
  float* exchange_s = reinterpret_cast<float*>(slot_s + 2 * kKeys);   // [kWarps][16]
  bf16* p_s = reinterpret_cast<bf16*>(exchange_s + kWarps * 16);      // [kWarps][16][kPPitch]
  // The keys of the tile whose scores this warp computes: all, or its half's 16.
  constexpr int kOwnKeys = kSplit ? kKeys / 2 : kKeys;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int group = warp & 3, half = warp >> 2;
  const AttentionTile tile = a.tiles[blockIdx.x];
  const int head0 = blockIdx.y * a.heads_per_cta;
  const PagedSequence seq = a.sequences[tile.sequence];
  const int first_position = seq.context_len - seq.query_len;
  const int tokens = min(a.tokens_per_cta, seq.query_len - tile.first);
  const int heads = min(a.heads_per_cta, a.q_heads - head0);
  const int num_keys = first_position + tile.first + tokens;  // seen by the last token
  const int num_tiles = (num_keys + kKeys - 1) / kKeys;

  // Row r: token tile.first + r / heads_per_cta, head head0 + r % heads_per_cta. Rows past the
  // tokens or heads are zeros, see no key and are not stored.
  auto valid_row = [&](int r) {
    return r / a.heads_per_cta < tokens && r % a.heads_per_cta < heads;
  };
  auto row_index = [&](int r) {  // into q's and out's [tokens · q_heads] rows
    return (static_cast<int64_t>(seq.query_begin) + tile.first + r / a.heads_per_cta) * a.q_heads +
           head0 + r % a.heads_per_cta;
  };
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = valid_row(r);
    cp_async16(q_s + r * kPitch + c * 8, a.q + (valid ? row_index(r) : 0) * DK + c * 8, valid);
  }
  auto load_tile = [&](int it, int buffer) {
    const int key0 = it * kKeys;
    int64_t* slots = slot_s + buffer * kKeys;
    if (threadIdx.x < kKeys) {
      const int position = key0 + threadIdx.x;
      slots[threadIdx.x] =
          position < num_keys
              ? static_cast<int64_t>(seq.block_table[position / a.block_size]) * a.block_size +
                    position % a.block_size
              : -1;
    }
    __syncthreads();
    bf16* kb = kv_s + buffer * S::kTile;
    for (int i = threadIdx.x; i < kKeys * kChunks; i += kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const int64_t slot = slots[r];
      cp_async16(kb + r * kPitch + c * 8, a.cache + (slot >= 0 ? slot : 0) * a.token_stride + c * 8,
                 slot >= 0);
    }
    cp_async_commit();
  };
  load_tile(0, 0);  // commits the Q loads with the first tile

  float o[kHalf / 8][4];
#pragma unroll
  for (int n = 0; n < kHalf / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_row[2] = {-INFINITY, -INFINITY};
  float l_row[2] = {0.0f, 0.0f};
  // This thread's two rows (g and g + 8 of the group's 16) and the last key each may see.
  const int row0 = group * 16 + g;
  int limit[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + 8 * h;
    limit[h] = valid_row(r) ? first_position + tile.first + r / a.heads_per_cta : -1;
  }

  for (int it = 0; it < num_tiles; ++it) {
    const int buffer = it & 1;
    if (it + 1 < num_tiles) {
      load_tile(it + 1, buffer ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* kb = kv_s + buffer * S::kTile;
    const int own0 = kSplit ? half * kOwnKeys : 0;  // this warp's first key in the tile
    const int key0 = it * kKeys + own0;

    // S = Q · Kᵀ for the group's 16 rows and this warp's keys (n-tiles of 8 keys).
    float s[kOwnKeys / 8][4];
#pragma unroll
    for (int j = 0; j < kOwnKeys / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll 4
    for (int kk = 0; kk < DK / 16; ++kk) {
      const int mi = lane >> 3;
      uint32_t qa[4];
      ldmatrix_x4(
          qa, q_s + (group * 16 + (mi & 1) * 8 + (lane & 7)) * kPitch + kk * 16 + (mi >> 1) * 8);
#pragma unroll
      for (int j = 0; j < kOwnKeys / 8; j += 2) {
        uint32_t kf[4];
        const int key = own0 + (j + (mi >> 1)) * 8 + (lane & 7);
        ldmatrix_x4(kf, kb + key * kPitch + kk * 16 + (mi & 1) * 8);
        mma_16816(s[j], qa, kf[0], kf[1]);
        mma_16816(s[j + 1], qa, kf[2], kf[3]);
      }
    }

    // Mask (causal, past the context, rows that do not exist), scale, online softmax.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kOwnKeys / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + j * 8 + 2 * t + (e & 1);
        const float value = key <= limit[e >> 1] ? s[j][e] * a.scale_log2 : -INFINITY;
        s[j][e] = value;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], value);
      }
    }
    float corr[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
    }
    if constexpr (kSplit) {  // the row maxima over both warps' keys
      if (t == 0) {
        exchange_s[warp * 16 + g] = tile_max[0];
        exchange_s[warp * 16 + g + 8] = tile_max[1];
      }
      pair_barrier(group);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tile_max[h] = fmaxf(tile_max[h], exchange_s[(warp ^ 4) * 16 + g + 8 * h]);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float m_new = fmaxf(m_row[h], tile_max[h]);
      corr[h] = m_new == -INFINITY ? 1.0f : exp2f(m_row[h] - m_new);  // no key seen yet: 1
      m_row[h] = m_new;
    }
    float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < kOwnKeys / 8; ++j) {
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
    for (int n = 0; n < kHalf / 8; ++n) {
      o[n][0] *= corr[0];
      o[n][1] *= corr[0];
      o[n][2] *= corr[1];
      o[n][3] *= corr[1];
    }

    // O += P · V over this warp's columns: P (16 × kKeys) as bf16 A fragments, 16 keys each;
    // V is the tile's first DV columns. The split form's other 16 keys' probabilities come from
    // the partner warp through shared memory.
    uint32_t partner[4] = {0, 0, 0, 0};
    if constexpr (kSplit) {
      bf16* mine = p_s + warp * 16 * kPPitch;
#pragma unroll
      for (int j = 0; j < kOwnKeys / 8; ++j) {
        *reinterpret_cast<uint32_t*>(mine + g * kPPitch + j * 8 + 2 * t) =
            pack_bf16(s[j][0], s[j][1]);
        *reinterpret_cast<uint32_t*>(mine + (g + 8) * kPPitch + j * 8 + 2 * t) =
            pack_bf16(s[j][2], s[j][3]);
      }
      pair_barrier(group);
      const int mi = lane >> 3;
      ldmatrix_x4(partner,
                  p_s + ((warp ^ 4) * 16 + (mi & 1) * 8 + (lane & 7)) * kPPitch + (mi >> 1) * 8);
    }
#pragma unroll
    for (int kc = 0; kc < kKeys / 16; ++kc) {
      uint32_t pa[4];
      const int own = kSplit ? 0 : kc;  // this warp's chunk of 16 keys in s
      if (!kSplit || kc == half) {
        pa[0] = pack_bf16(s[2 * own][0], s[2 * own][1]);
        pa[1] = pack_bf16(s[2 * own][2], s[2 * own][3]);
        pa[2] = pack_bf16(s[2 * own + 1][0], s[2 * own + 1][1]);
        pa[3] = pack_bf16(s[2 * own + 1][2], s[2 * own + 1][3]);
      } else {
        pa[0] = partner[0];
        pa[1] = partner[1];
        pa[2] = partner[2];
        pa[3] = partner[3];
      }
      const int mi = lane >> 3;
      const bf16* v_rows = kb + (kc * 16 + (mi & 1) * 8 + (lane & 7)) * kPitch + half * kHalf;
#pragma unroll
      for (int n = 0; n < kHalf / 8; n += 2) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, v_rows + (n + (mi >> 1)) * 8);
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
  if constexpr (kSplit) {  // each warp summed its own keys' probabilities
    if (t == 0) {
      exchange_s[warp * 16 + g] = l_row[0];
      exchange_s[warp * 16 + g + 8] = l_row[1];
    }
    pair_barrier(group);
#pragma unroll
    for (int h = 0; h < 2; ++h) l_row[h] += exchange_s[(warp ^ 4) * 16 + g + 8 * h];
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + 8 * h;
    if (!valid_row(r)) continue;
    const float inv = l_row[h] > 0.0f ? 1.0f / l_row[h] : 0.0f;
    bf16* out_row = a.out + row_index(r) * DV + half * kHalf;
#pragma unroll
    for (int n = 0; n < kHalf / 8; ++n) {
      const __nv_bfloat162 v = __floats2bfloat162_rn(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
      *reinterpret_cast<__nv_bfloat162*>(out_row + n * 8 + 2 * t) = v;
    }
  }
}

template <int DK, int DV, bool kSplit>
void launch(const MlaPrefillArgs& args, int64_t num_tiles, int head_blocks, cudaStream_t stream) {
  const size_t smem = MlaSmem<DK>::kBytes;
  static const bool configured = [&] {
    DSHPC_CUDA_CHECK(cudaFuncSetAttribute(mla_prefill_attention_kernel<DK, DV, kSplit>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    return true;
  }();
  (void)configured;
  const dim3 grid(static_cast<unsigned int>(num_tiles), static_cast<unsigned int>(head_blocks));
  launch_pdl("mla_prefill_attention_kernel", mla_prefill_attention_kernel<DK, DV, kSplit>, grid,
             kThreads, smem, stream, args);
  DSHPC_CUDA_LAUNCH_CHECK("mla_prefill_attention_kernel");
}

int heads_per_cta(int64_t q_heads) {
  return static_cast<int>(std::min<int64_t>(q_heads, kRows));
}

}  // namespace

int mla_prefill_tokens_per_cta(int64_t q_heads) {
  return static_cast<int>(std::max<int64_t>(1, kRows / std::max<int64_t>(q_heads, 1)));
}

bool mla_prefill_attention_supported(const Mat& q, const Mat& out, int64_t q_heads,
                                     const PagedKvView& cache, DType dtype) {
  const int64_t latent = cache.v_dim, rope = cache.head_dim - cache.v_dim;
  const bool shape = (latent == 512 && rope == 64) || (latent == 64 && rope == 16);
  // 153 KiB for 512 + 64: more than sm_86 and sm_89 give a block (99 KiB); they keep the
  // general kernel.
  static const int smem_limit = max_dynamic_smem();
  const size_t smem = latent == 512 ? MlaSmem<576>::kBytes : MlaSmem<80>::kBytes;
  return shape && static_cast<size_t>(smem_limit) >= smem && dtype == DType::kBF16 &&
         q.dtype == DType::kBF16 && out.dtype == DType::kBF16 && cache.kv_heads == 1 &&
         cache.v == cache.k && cache.v_token_stride == cache.k_token_stride && q_heads >= 1 &&
         q.cols == q_heads * cache.head_dim && q.contiguous() && out.cols == q_heads * latent &&
         out.contiguous() && out.rows == q.rows && aligned_to(q.data, 16) &&
         aligned_to(out.data, 16) && aligned_to(cache.k, 16) && cache.k_token_stride % 8 == 0;
}

void launch_mla_prefill_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                                  const AttentionTile* tiles, int64_t num_tiles, int64_t q_heads,
                                  const PagedKvView& cache, float scale, bool split,
                                  cudaStream_t stream) {
  if (num_tiles == 0) return;
  DSHPC_CHECK(mla_prefill_attention_supported(q, out, q_heads, cache, q.dtype))
      << "MLA prefill attention: unsupported shape (q [" << q.rows << ", " << q.cols << "], "
      << q_heads << " heads, cache entry " << cache.head_dim << " / " << cache.v_dim << ")";
  const int per_cta = heads_per_cta(q_heads);
  const int64_t head_blocks = (q_heads + per_cta - 1) / per_cta;
  DSHPC_CHECK(num_tiles <= 0x7fffffff && head_blocks <= 65535)
      << "MLA prefill attention: grid " << num_tiles << " x " << head_blocks;
  MlaPrefillArgs args{};
  args.q = static_cast<const bf16*>(q.data);
  args.out = static_cast<bf16*>(out.data);
  args.cache = reinterpret_cast<const bf16*>(cache.k);
  args.sequences = sequences;
  args.tiles = tiles;
  args.token_stride = cache.k_token_stride;
  args.q_heads = static_cast<int>(q_heads);
  args.heads_per_cta = per_cta;
  args.tokens_per_cta = mla_prefill_tokens_per_cta(q_heads);
  args.block_size = static_cast<int>(cache.block_size);
  args.scale_log2 = scale * kLog2e;
  const int blocks = static_cast<int>(head_blocks);
  if (cache.v_dim == 512) {
    split ? launch<576, 512, true>(args, num_tiles, blocks, stream)
          : launch<576, 512, false>(args, num_tiles, blocks, stream);
  } else {
    split ? launch<80, 64, true>(args, num_tiles, blocks, stream)
          : launch<80, 64, false>(args, num_tiles, blocks, stream);
  }
}

}  // namespace dshpc::cuda
