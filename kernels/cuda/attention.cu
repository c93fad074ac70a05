// Paged attention for prefill, chunked prefill and decode in one launch (CPU reference:
// paged_attention_cpu in kernels/attention_cpu.cpp), flash-style: keys are visited in tiles of
// kKeysPerTile with an online softmax (running max m, running sum l, rescaled accumulator), so
// no L×L score matrix ever exists.
//
// Work split: a CTA owns `rows` query rows of one kv head — heads_per_cta query heads of the
// group times tokens_per_cta consecutive tokens of one sequence — and walks the sequence's block
// table. Every key (and value) row it loads into shared memory serves all its rows: the whole
// group in decode (GQA, and MLA where all heads share the one latent entry), and several query
// tokens in prefill. Causality is per row: row i of a sequence with context C and query length Q
// sees keys [0, C − Q + i].
//
// MLA (absorbed) is kv_heads = 1, head_dim = kv_lora_rank + rope (e.g. 576) and v the first
// kv_lora_rank (512) dims of the same entry: then V is read from the K tile in shared memory.
//
// Layout of dynamic shared memory (floats unless noted):
//   slot[kKeysPerTile] (int64) | q[rows][head_dim] | k[kKeysPerTile][head_dim + 1]
//   | v[kKeysPerTile][v_dim] (absent when V is inside K) | p[rows][kKeysPerTile]
//   | m[rows] | l[rows] | corr[rows] | key_limit[rows] (int32)
// K rows are padded by one float so that the score loop (thread ↔ key) hits distinct banks.
#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kKeysPerTile = 16;
constexpr int kMaxRows = 16;
// Accumulator registers per thread: a CTA holds rows × v_dim ≤ kThreads · kMaxAcc outputs.
constexpr int kMaxAcc = 32;

struct AttentionArgs {
  const void* q;
  void* out;
  const void* k;
  const void* v;
  const PagedSequence* sequences;
  const AttentionTile* tiles;
  int64_t k_token_stride;
  int64_t v_token_stride;
  int q_heads;
  int group;  // query heads per kv head
  int head_dim;
  int v_dim;
  int block_size;
  int heads_per_cta;
  int tokens_per_cta;
  int head_chunks;
  bool v_in_k;
  float scale;
};

struct SmemLayout {
  size_t q, k, v, p, m, l, corr, key_limit, total;
};

__host__ __device__ inline size_t align16(size_t bytes) {
  return (bytes + 15) / 16 * 16;
}

__host__ __device__ inline SmemLayout smem_layout(int rows, int head_dim, int v_dim, bool v_in_k) {
  SmemLayout s{};
  size_t at = align16(kKeysPerTile * sizeof(int64_t));
  s.q = at;
  at += align16(sizeof(float) * rows * head_dim);
  s.k = at;
  at += align16(sizeof(float) * kKeysPerTile * (head_dim + 1));
  s.v = v_in_k ? s.k : at;
  if (!v_in_k) at += align16(sizeof(float) * kKeysPerTile * v_dim);
  s.p = at;
  at += align16(sizeof(float) * rows * kKeysPerTile);
  s.m = at;
  at += align16(sizeof(float) * rows);
  s.l = at;
  at += align16(sizeof(float) * rows);
  s.corr = at;
  at += align16(sizeof(float) * rows);
  s.key_limit = at;
  at += align16(sizeof(int) * rows);
  s.total = at;
  return s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) paged_attention_kernel(AttentionArgs a) {
  pdl_begin();
  extern __shared__ __align__(16) unsigned char smem[];
  const int rows = a.heads_per_cta * a.tokens_per_cta;
  const SmemLayout layout = smem_layout(rows, a.head_dim, a.v_dim, a.v_in_k);
  int64_t* slot_s = reinterpret_cast<int64_t*>(smem);
  float* q_s = reinterpret_cast<float*>(smem + layout.q);
  float* k_s = reinterpret_cast<float*>(smem + layout.k);
  float* v_s = reinterpret_cast<float*>(smem + layout.v);
  float* p_s = reinterpret_cast<float*>(smem + layout.p);
  float* m_s = reinterpret_cast<float*>(smem + layout.m);
  float* l_s = reinterpret_cast<float*>(smem + layout.l);
  float* corr_s = reinterpret_cast<float*>(smem + layout.corr);
  int* key_limit_s = reinterpret_cast<int*>(smem + layout.key_limit);
  const int k_pitch = a.head_dim + 1;
  const int v_pitch = a.v_in_k ? k_pitch : a.v_dim;

  const AttentionTile tile = a.tiles[blockIdx.x];
  const PagedSequence seq = a.sequences[tile.sequence];
  const int kv_head = blockIdx.y / a.head_chunks;
  const int group_first = (blockIdx.y % a.head_chunks) * a.heads_per_cta;  // within the group
  const int first_position = seq.context_len - seq.query_len;
  const T* q = static_cast<const T*>(a.q);
  const T* cache_k = static_cast<const T*>(a.k);
  const T* cache_v = static_cast<const T*>(a.v);

  // Row r = (token r / heads_per_cta of the tile, head r % heads_per_cta of the chunk). Rows past
  // the sequence's end or the group's end are padding: key_limit 0, never written.
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    const int query = tile.first + r / a.heads_per_cta;
    const int group_head = group_first + r % a.heads_per_cta;
    const bool valid = query < seq.query_len && group_head < a.group;
    key_limit_s[r] = valid ? first_position + query + 1 : 0;
    m_s[r] = -INFINITY;
    l_s[r] = 0.0f;
  }
  for (int i = threadIdx.x; i < rows * a.head_dim; i += blockDim.x) {
    const int r = i / a.head_dim, c = i % a.head_dim;
    const int query = tile.first + r / a.heads_per_cta;
    const int group_head = group_first + r % a.heads_per_cta;
    float value = 0.0f;
    if (query < seq.query_len && group_head < a.group) {
      const int64_t token = seq.query_begin + query;
      const int64_t head = static_cast<int64_t>(kv_head) * a.group + group_head;
      value = to_float(q[(token * a.q_heads + head) * a.head_dim + c]);
    }
    q_s[i] = value;
  }

  // Keys visible to the tile's last valid token.
  const int last_query = min(tile.first + a.tokens_per_cta, seq.query_len) - 1;
  const int num_keys = first_position + last_query + 1;

  float acc[kMaxAcc];
#pragma unroll
  for (int i = 0; i < kMaxAcc; ++i) acc[i] = 0.0f;

  for (int key0 = 0; key0 < num_keys; key0 += kKeysPerTile) {
    __syncthreads();  // the previous tile's readers are done with slot_s, k_s, v_s, p_s
    if (threadIdx.x < kKeysPerTile) {
      const int position = key0 + threadIdx.x;
      slot_s[threadIdx.x] =
          position < num_keys
              ? static_cast<int64_t>(seq.block_table[position / a.block_size]) * a.block_size +
                    position % a.block_size
              : -1;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kKeysPerTile * a.head_dim; i += blockDim.x) {
      const int j = i / a.head_dim, c = i % a.head_dim;
      const int64_t slot = slot_s[j];
      k_s[j * k_pitch + c] = slot >= 0
                                 ? to_float(cache_k[slot * a.k_token_stride +
                                                    static_cast<int64_t>(kv_head) * a.head_dim + c])
                                 : 0.0f;
    }
    if (!a.v_in_k) {
      for (int i = threadIdx.x; i < kKeysPerTile * a.v_dim; i += blockDim.x) {
        const int j = i / a.v_dim, c = i % a.v_dim;
        const int64_t slot = slot_s[j];
        v_s[j * v_pitch + c] = slot >= 0
                                   ? to_float(cache_v[slot * a.v_token_stride +
                                                      static_cast<int64_t>(kv_head) * a.v_dim + c])
                                   : 0.0f;
      }
    }
    __syncthreads();

    // Scores: one (row, key) pair per thread and step; masked keys get −inf.
    for (int pair = threadIdx.x; pair < rows * kKeysPerTile; pair += blockDim.x) {
      const int r = pair / kKeysPerTile, j = pair % kKeysPerTile;
      float score = -INFINITY;
      if (key0 + j < key_limit_s[r]) {
        const float* qr = q_s + r * a.head_dim;
        const float* kr = k_s + j * k_pitch;
        float dot = 0.0f;
        for (int c = 0; c < a.head_dim; ++c) dot = fmaf(qr[c], kr[c], dot);
        score = dot * a.scale;
      }
      p_s[pair] = score;
    }
    __syncthreads();

    // Online softmax, one thread per row: new max, rescale factor, unnormalised probabilities.
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
      float* p = p_s + r * kKeysPerTile;
      float tile_max = -INFINITY;
      for (int j = 0; j < kKeysPerTile; ++j) tile_max = fmaxf(tile_max, p[j]);
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, tile_max);
      if (m_new == -INFINITY) {  // padding row, or no visible key yet: contributes nothing
        for (int j = 0; j < kKeysPerTile; ++j) p[j] = 0.0f;
        corr_s[r] = 1.0f;
        continue;
      }
      const float corr = expf(m_old - m_new);  // 0 on the first visible tile (m_old = −inf)
      float sum = 0.0f;
      for (int j = 0; j < kKeysPerTile; ++j) {
        const float e = p[j] == -INFINITY ? 0.0f : expf(p[j] - m_new);
        p[j] = e;
        sum += e;
      }
      l_s[r] = l_s[r] * corr + sum;
      m_s[r] = m_new;
      corr_s[r] = corr;
    }
    __syncthreads();

    // Accumulate: thread owns outputs e = threadIdx.x + i · kThreads of the rows × v_dim block.
#pragma unroll
    for (int i = 0; i < kMaxAcc; ++i) {
      const int e = threadIdx.x + i * kThreads;
      if (e < rows * a.v_dim) {
        const int r = e / a.v_dim, c = e % a.v_dim;
        const float* p = p_s + r * kKeysPerTile;
        float sum = acc[i] * corr_s[r];
#pragma unroll
        for (int j = 0; j < kKeysPerTile; ++j) sum = fmaf(p[j], v_s[j * v_pitch + c], sum);
        acc[i] = sum;
      }
    }
  }

  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int i = 0; i < kMaxAcc; ++i) {
    const int e = threadIdx.x + i * kThreads;
    if (e < rows * a.v_dim) {
      const int r = e / a.v_dim, c = e % a.v_dim;
      if (key_limit_s[r] > 0) {
        const int64_t token = seq.query_begin + tile.first + r / a.heads_per_cta;
        const int64_t head =
            static_cast<int64_t>(kv_head) * a.group + group_first + r % a.heads_per_cta;
        out[(token * a.q_heads + head) * a.v_dim + c] = from_float<T>(acc[i] / l_s[r]);
      }
    }
  }
}

}  // namespace

AttentionShape attention_shape(int64_t q_heads, int64_t kv_heads, int64_t v_dim) {
  DSHPC_CHECK(kv_heads > 0 && q_heads % kv_heads == 0)
      << "q_heads " << q_heads << " is not a multiple of kv_heads " << kv_heads;
  DSHPC_CHECK(v_dim > 0 && v_dim <= kThreads * kMaxAcc)
      << "attention: v_dim " << v_dim << " exceeds " << kThreads * kMaxAcc
      << " (accumulator registers of one CTA)";
  const int64_t group = q_heads / kv_heads;
  const int64_t rows_cap = std::min<int64_t>(kMaxRows, kThreads * kMaxAcc / v_dim);
  AttentionShape s;
  s.heads_per_cta = static_cast<int>(std::min(group, rows_cap));
  s.tokens_per_cta = static_cast<int>(std::max<int64_t>(1, rows_cap / s.heads_per_cta));
  s.head_chunks = static_cast<int>((group + s.heads_per_cta - 1) / s.heads_per_cta);
  return s;
}

std::vector<AttentionTile> attention_tiles(const std::vector<PagedSequence>& sequences,
                                           int tokens_per_cta) {
  std::vector<AttentionTile> tiles;
  for (size_t s = 0; s < sequences.size(); ++s) {
    for (int32_t first = 0; first < sequences[s].query_len; first += tokens_per_cta) {
      tiles.push_back({static_cast<int32_t>(s), first});
    }
  }
  return tiles;
}

void launch_paged_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                            const AttentionTile* tiles, int64_t num_tiles, int64_t q_heads,
                            const PagedKvView& cache, DType cache_dtype, float scale,
                            const AttentionShape& shape, cudaStream_t stream) {
  if (num_tiles == 0) return;
  DSHPC_CHECK(q.dtype == cache_dtype && out.dtype == cache_dtype)
      << "paged_attention: query " << dtype_name(q.dtype) << ", output " << dtype_name(out.dtype)
      << ", cache " << dtype_name(cache_dtype) << " must agree";
  const int64_t grid_y = cache.kv_heads * shape.head_chunks;
  DSHPC_CHECK(grid_y <= 65535 && num_tiles <= 0x7fffffff)
      << "paged_attention: grid " << num_tiles << " x " << grid_y << " exceeds CUDA's limits";
  DSHPC_CHECK(cache.head_dim <= 4096 && cache.block_size <= (int64_t{1} << 20))
      << "paged_attention: head_dim " << cache.head_dim << ", block_size " << cache.block_size;

  AttentionArgs args{};
  args.q = q.data;
  args.out = out.data;
  args.k = cache.k;
  args.v = cache.v;
  args.sequences = sequences;
  args.tiles = tiles;
  args.k_token_stride = cache.k_token_stride;
  args.v_token_stride = cache.v_token_stride;
  args.q_heads = static_cast<int>(q_heads);
  args.group = static_cast<int>(q_heads / cache.kv_heads);
  args.head_dim = static_cast<int>(cache.head_dim);
  args.v_dim = static_cast<int>(cache.v_dim);
  args.block_size = static_cast<int>(cache.block_size);
  args.heads_per_cta = shape.heads_per_cta;
  args.tokens_per_cta = shape.tokens_per_cta;
  args.head_chunks = shape.head_chunks;
  // V inside K: the MLA latent cache (same memory, same token stride, V the entry's prefix).
  args.v_in_k = cache.v == cache.k && cache.v_token_stride == cache.k_token_stride &&
                cache.kv_heads == 1 && cache.v_dim <= cache.head_dim;
  args.scale = scale;

  const int rows = shape.heads_per_cta * shape.tokens_per_cta;
  const size_t smem = smem_layout(rows, args.head_dim, args.v_dim, args.v_in_k).total;
  static const int smem_limit = max_dynamic_smem();
  DSHPC_CHECK(smem <= static_cast<size_t>(smem_limit))
      << "paged_attention: " << smem << " bytes of shared memory needed (head_dim "
      << cache.head_dim << ", v_dim " << cache.v_dim << ", " << rows << " rows), device allows "
      << smem_limit;
  const dim3 grid(static_cast<unsigned int>(num_tiles), static_cast<unsigned int>(grid_y));
  dispatch_float(cache_dtype, "paged_attention", [&](auto tag) {
    using T = decltype(tag);
    if (smem > 48 * 1024) {
      // Above 48 KB a kernel must opt in (Hopper allows up to 227 KB, Ampere 163 KB).
      DSHPC_CUDA_CHECK(cudaFuncSetAttribute(paged_attention_kernel<T>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
    }
    launch_pdl("paged_attention_kernel", paged_attention_kernel<T>, grid, kThreads, smem, stream,
               args);
    DSHPC_CUDA_LAUNCH_CHECK("paged_attention_kernel");
  });
}

}  // namespace dshpc::cuda
