// Decode attention over the paged KV cache, split along the keys (flash-decoding), for steps in
// which every sequence has exactly one new token (CPU reference: paged_attention_cpu in
// kernels/attention_cpu.cpp; the general kernel for prefill and mixed steps is attention.cu).
//
// Why a second kernel: in decode the work per (sequence, kv head) is one pass over the cached
// keys and values, so the step is bound by memory bandwidth, and with a batch of one the general
// kernel's grid (one CTA per kv head) leaves most of the GPU idle. Here:
//   grid (sequence × kv head × head chunk, split), a sequence's heads in adjacent CTAs (they run
//   side by side and read neighbouring parts of the same cache rows): each CTA reads the keys
//   [begin, end) of its split once for up to G query heads of the group (GQA shares every key
//   load); block = kWarps warps; warp w takes keys begin + w, begin + w + kWarps, … kU at a time,
//   all loads of an iteration issued before any arithmetic (memory-level parallelism); each lane
//   holds D / 32 consecutive dims of q and of the accumulator, loaded as one vector per key.
//   Scores and the online softmax are in the log2 domain (q pre-scaled by scale · log2 e).
// With one split the CTA writes the normalised output; with several it writes (m, l, unnormalised
// accumulator) per split and attention_decode_combine merges them.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kMaxSplits = 64;  // key splits per (sequence, head): decode_split_cap's cap

#ifdef DSHPC_DECODE_UNROLL
#error \
    "DSHPC_DECODE_UNROLL is no longer a build setting: the plan picks the unroll (DecodeAttentionPlan::unroll); the environment variable DSHPC_DECODE_UNROLL=2|4 forces it at run time"
#endif

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// Keys a warp loads per iteration (K and V rows of each in flight together) in the one-key form;
// the wide form takes its count from the plan (DecodeAttentionPlan::unroll).
constexpr int kUnroll = 4;
constexpr float kLog2e = 1.4426950408889634f;

// N consecutive elements of T kept as loaded (bf16 stays packed, two to a register) until used:
// the loads of an unrolled group of keys are all in flight at once, so their registers are what
// limits how many keys a warp can have in flight.
template <typename T, int N>
struct alignas(N * sizeof(T) >= 16 ? 16 : N * sizeof(T)) Packed {
  T e[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_packed(const T* p, Packed<T, N>& out) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  static_assert(kBytes % 2 == 0 && kBytes <= 64, "vector width");
  if constexpr (kBytes >= 16) {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      reinterpret_cast<uint4*>(&out)[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
    }
  } else if constexpr (kBytes == 8) {
    *reinterpret_cast<uint2*>(&out) = __ldg(reinterpret_cast<const uint2*>(p));
  } else if constexpr (kBytes == 4) {
    *reinterpret_cast<unsigned int*>(&out) = __ldg(reinterpret_cast<const unsigned int*>(p));
  } else {
    *reinterpret_cast<unsigned short*>(&out) = __ldg(reinterpret_cast<const unsigned short*>(p));
  }
}

// N consecutive elements of T as float32, with the widest load that N · sizeof(T) allows.
template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[N]) {
  Packed<T, N> raw;
  load_packed<T, N>(p, raw);
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = to_float(raw.e[j]);
}

template <int N>
__device__ __forceinline__ float elem(const float (&row)[N], int d) {
  return row[d];
}
template <typename T, int N>
__device__ __forceinline__ float elem(const Packed<T, N>& row, int d) {
  return to_float(row.e[d]);
}

// One online-softmax step of one query head over a group of kU keys, key0 + u · kStride: `score`
// holds this lane's partial dot products (reduced here across the kLanes lanes that share a key,
// an aligned group of the warp; the kU independent shuffles overlap), the group enters with one
// max and one rescale, keys at or past `end` get probability 0, and acc += p · v over this lane's
// N value dims.
template <int kU, int N, int kLanes, int kStride, typename Row>
__device__ __forceinline__ void softmax_update(float (&score)[kU], int key0, int end, float& m,
                                               float& l, float (&acc)[N], const Row (&v)[kU]) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
#pragma unroll
    for (int u = 0; u < kU; ++u) score[u] += __shfl_xor_sync(0xffffffffu, score[u], offset);
  }
  float m_new = m;
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    if (key0 + u * kStride >= end) score[u] = -INFINITY;  // uniform across the key's lanes
    m_new = fmaxf(m_new, score[u]);
  }
  // A group of lanes can see only keys past the end while it has seen none before (m_new = −inf,
  // where the warp's other keys are valid): then every p and corr are 0, not exp2(−inf + inf).
  const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
  const float corr = exp2f(m - m_ref);  // 0 on the first keys (m = −inf)
  float sum = 0.0f;
#pragma unroll
  for (int d = 0; d < N; ++d) acc[d] *= corr;
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    const float p = exp2f(score[u] - m_ref);  // 0 for keys past the end
    sum += p;
#pragma unroll
    for (int d = 0; d < N; ++d) acc[d] = fmaf(p, elem(v[u], d), acc[d]);
  }
  l = l * corr + sum;
  m = m_new;
}

// Merges the partial softmaxes of the CTA's kParts groups of kLanes lanes (lane i of a group
// holds dims [i·PL, i·PL + PL) of acc) for its `heads` heads head0, head0 + 1, …, and writes the
// normalised output of sequence s's query row `token` (one split) or this split's (accumulator,
// m, l) to `partial`, which decode_attention_combine merges.
template <typename T, int G, int PL, int kLanes = 32, int kParts = kWarps>
__device__ __forceinline__ void merge_warps_and_store(
    const float (&m)[G], const float (&l)[G], const float (&acc)[G][PL], float (&red_m)[kParts][G],
    float (&red_l)[kParts][G], float (&red_acc)[kParts][G][kLanes * PL], int heads, int head0,
    int s, int token, int q_heads, int splits, int split, T* out, float* partial) {
  constexpr int D = kLanes * PL;
  const int sub = threadIdx.x % kLanes, part = threadIdx.x / kLanes;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (sub == 0) {
      red_m[part][g] = m[g];
      red_l[part][g] = l[g];
    }
#pragma unroll
    for (int d = 0; d < PL; ++d) red_acc[part][g][sub * PL + d] = acc[g][d];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < heads * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kParts; ++w) m_all = fmaxf(m_all, red_m[w][g]);
    float l_all = 0.0f, o = 0.0f;
    if (m_all != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kParts; ++w) {
        const float f = exp2f(red_m[w][g] - m_all);
        l_all = fmaf(red_l[w][g], f, l_all);
        o = fmaf(red_acc[w][g][d], f, o);
      }
    }
    const int head = head0 + g;
    if (splits == 1) {
      out[(static_cast<int64_t>(token) * q_heads + head) * D + d] = from_float<T>(o / l_all);
    } else {
      float* part_out =
          partial + ((static_cast<int64_t>(s) * q_heads + head) * splits + split) * (D + 2);
      part_out[d] = o;
      if (d == 0) {
        part_out[D] = m_all;
        part_out[D + 1] = l_all;
      }
    }
  }
}

struct DecodeArgs {
  const void* q;
  void* out;
  const void* k;
  const void* v;
  const PagedSequence* sequences;
  float* partial;  // [seqs, q_heads, splits, v_dim + 2]: accumulator, m, l (splits > 1)
  int64_t k_token_stride;
  int64_t v_token_stride;
  int q_heads;
  int group;
  int head_chunks;
  int block_size;
  int splits;
  int head_ctas;     // kv_heads · head_chunks: CTAs per (sequence, split)
  float scale_log2;  // scale · log2 e
};

// D = head_dim = v_dim = LPK · EPL: a key row is read by LPK lanes (32: one key per warp row,
// fewer: 32 / LPK keys per warp row, each lane's EPL elements one 16-byte load), so the CTA's
// kThreads / LPK groups of lanes ("parts") each take keys begin + part, begin + part + kParts, …
// G query heads per CTA (of the group).
template <typename T, int LPK, int EPL, int G, int kU>
__global__ void __launch_bounds__(kThreads) decode_attention_kernel(DecodeArgs a) {
  pdl_begin();
  constexpr int D = LPK * EPL;
  constexpr int kParts = kThreads / LPK;
  constexpr int kKeysPerWarp = 32 / LPK;
  __shared__ float red_m[kParts][G];
  __shared__ float red_l[kParts][G];
  __shared__ float red_acc[kParts][G][D];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = threadIdx.x % LPK;
  const int s = blockIdx.x / a.head_ctas;
  const int head_cta = blockIdx.x % a.head_ctas;
  const int kv_head = head_cta / a.head_chunks;
  const int first = (head_cta % a.head_chunks) * G;  // first head of the chunk, in the group
  const int heads = min(G, a.group - first);
  const int split = blockIdx.y;
  const PagedSequence seq = a.sequences[s];
  const int context = seq.context_len;
  const int per_split = (context + a.splits - 1) / a.splits;
  const int begin = split * per_split;
  const int end = min(context, begin + per_split);
  const int token = seq.query_begin;  // the sequence's one query row

  const T* q = static_cast<const T*>(a.q);
  const T* cache_k = static_cast<const T*>(a.k);
  const T* cache_v = static_cast<const T*>(a.v);
  float qr[G][EPL];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const int head = kv_head * a.group + first + min(g, heads - 1);
    load_vec<T, EPL>(q + (static_cast<int64_t>(token) * a.q_heads + head) * D + sub * EPL, qr[g]);
#pragma unroll
    for (int d = 0; d < EPL; ++d) qr[g][d] *= a.scale_log2;
  }
  float m[G], l[G], acc[G][EPL];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int d = 0; d < EPL; ++d) acc[g][d] = 0.0f;
  }

  const int64_t k_head_offset = static_cast<int64_t>(kv_head) * D + sub * EPL;
  // The loop runs on the warp's first key so that every lane of a warp takes the same
  // iterations (the shuffles need the whole warp); a part's keys past `end` read nothing.
  for (int base = begin + warp * kKeysPerWarp; base < end; base += kParts * kU) {
    const int key0 = base + lane / LPK;
    Packed<T, EPL> kr[kU], vr[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int position = key0 + u * kParts;
      if (position < end) {
        const int64_t slot =
            static_cast<int64_t>(seq.block_table[position / a.block_size]) * a.block_size +
            position % a.block_size;
        load_packed<T, EPL>(cache_k + slot * a.k_token_stride + k_head_offset, kr[u]);
        load_packed<T, EPL>(cache_v + slot * a.v_token_stride + k_head_offset, vr[u]);
      } else {
#pragma unroll
        for (int d = 0; d < EPL; ++d) {
          kr[u].e[d] = vr[u].e[d] = from_float<T>(0.0f);  // finite: p = 0 multiplies it
        }
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float score[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        float dot = 0.0f;
#pragma unroll
        for (int d = 0; d < EPL; ++d) dot = fmaf(qr[g][d], elem(kr[u], d), dot);
        score[u] = dot;
      }
      softmax_update<kU, EPL, LPK, kParts>(score, key0, end, m[g], l[g], acc[g], vr);
    }
  }

  merge_warps_and_store<T, G, EPL, LPK, kParts>(m, l, acc, red_m, red_l, red_acc, heads,
                                                kv_head * a.group + first, s, token, a.q_heads,
                                                a.splits, split, static_cast<T*>(a.out), a.partial);
}

// out[token of s, head] = Σ_split acc · 2^(m − M) / Σ_split l · 2^(m − M), M the largest m.
// Warp 0's part of merging key splits: weight[i] = 2^(m_i − M) of each split (M the largest m;
// 0 for a split that saw no key) and *inv_l = 1 / Σ l_i · weight[i], from the splits' (m, l) at
// part + i · (d + 2) + d. Called by the 32 lanes of one warp.
__device__ __forceinline__ void split_weights(const float* part, int splits, int d, float* weight,
                                              float* inv_l) {
  const int lane = threadIdx.x & 31;
  float m[kMaxSplits / 32], l[kMaxSplits / 32];
  float m_all = -INFINITY;
#pragma unroll
  for (int j = 0; j < kMaxSplits / 32; ++j) {
    const int i = lane + 32 * j;
    m[j] = i < splits ? part[i * (d + 2) + d] : -INFINITY;
    l[j] = i < splits ? part[i * (d + 2) + d + 1] : 0.0f;
    m_all = fmaxf(m_all, m[j]);
  }
  m_all = warp_max(m_all);
  float l_all = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxSplits / 32; ++j) {
    const float f = m[j] == -INFINITY ? 0.0f : exp2f(m[j] - m_all);
    if (lane + 32 * j < splits) weight[lane + 32 * j] = f;
    l_all = fmaf(l[j], f, l_all);
  }
  l_all = warp_sum(l_all);
  if (lane == 0) *inv_l = 1.0f / l_all;
}

// The splits' (m, l) pairs go to shared memory first (one round of loads), their weights are
// computed once, and then every thread's loads of its dims over the splits are independent.
template <typename T>
__global__ void decode_attention_combine(const float* partial, const PagedSequence* sequences,
                                         T* out, int q_heads, int splits, int d_model) {
  pdl_begin();
  __shared__ float weight[kMaxSplits];
  __shared__ float inv_l;
  const int s = blockIdx.x, head = blockIdx.y;
  const float* part = partial + (static_cast<int64_t>(s) * q_heads + head) * splits * (d_model + 2);
  if (threadIdx.x < 32) split_weights(part, splits, d_model, weight, &inv_l);
  __syncthreads();
  const int token = sequences[s].query_begin;
  for (int d = threadIdx.x; d < d_model; d += blockDim.x) {
    float o = 0.0f;
    for (int i = 0; i < splits; ++i) o = fmaf(part[i * (d_model + 2) + d], weight[i], o);
    out[(static_cast<int64_t>(token) * q_heads + head) * d_model + d] = from_float<T>(o * inv_l);
  }
}

// MLA (multi-head latent attention) decode: one cache entry per token, [latent (L) | rope (R)],
// shared by every query head (kv_heads 1), and the value is the latent part of the same entry.
// The query is the absorbed one, [latent | rope] per head. Lane l holds latent dims
// [l·LPL, l·LPL + LPL) and, with RPL > 0, rope dims [L + l·RPL, …+RPL); with RPL == 0 (R < 32, the
// tiny fixtures) lanes l < R hold rope dim L + l. Latent registers serve as key and value at
// once, so each entry is read once per (CTA, key). grid (sequence, head chunk of G, split).
struct MlaDecodeArgs {
  const void* q;
  void* out;
  const void* cache;
  const PagedSequence* sequences;
  float* partial;  // [seqs, q_heads, splits, L + 2] (splits > 1)
  int64_t token_stride;
  int q_heads;
  int rope;
  int block_size;
  int splits;
  float scale_log2;
};

constexpr int kMlaUnroll = 2;
constexpr int kMlaHeads = 4;  // query heads per CTA

template <typename T, int LPL, int RPL, int G>
__global__ void __launch_bounds__(kThreads) mla_decode_kernel(MlaDecodeArgs a) {
  pdl_begin();
  constexpr int L = 32 * LPL;
  constexpr int RP = RPL > 0 ? RPL : 1;
  __shared__ float red_m[kWarps][G];
  __shared__ float red_l[kWarps][G];
  __shared__ float red_acc[kWarps][G][L];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int s = blockIdx.x;
  const int first = blockIdx.y * G;
  const int heads = min(G, a.q_heads - first);
  const int split = blockIdx.z;
  const PagedSequence seq = a.sequences[s];
  const int context = seq.context_len;
  const int per_split = (context + a.splits - 1) / a.splits;
  const int begin = split * per_split;
  const int end = min(context, begin + per_split);
  const int token = seq.query_begin;
  const int entry = L + a.rope;
  const bool rope_lane = RPL > 0 || lane < a.rope;
  const int rope_at = L + (RPL > 0 ? lane * RPL : lane);

  const T* q = static_cast<const T*>(a.q);
  const T* cache = static_cast<const T*>(a.cache);
  float ql[G][LPL], qr[G][RP];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const T* qh = q + (static_cast<int64_t>(token) * a.q_heads + first + min(g, heads - 1)) * entry;
    load_vec<T, LPL>(qh + lane * LPL, ql[g]);
    if constexpr (RPL > 0) {
      load_vec<T, RPL>(qh + rope_at, qr[g]);
    } else {
      qr[g][0] = rope_lane ? to_float(qh[rope_at]) : 0.0f;
    }
#pragma unroll
    for (int d = 0; d < LPL; ++d) ql[g][d] *= a.scale_log2;
#pragma unroll
    for (int d = 0; d < RP; ++d) qr[g][d] *= a.scale_log2;
  }
  float m[G], l[G], acc[G][LPL];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int d = 0; d < LPL; ++d) acc[g][d] = 0.0f;
  }

  for (int key0 = begin + warp; key0 < end; key0 += kWarps * kMlaUnroll) {
    float kl[kMlaUnroll][LPL], kr[kMlaUnroll][RP];
#pragma unroll
    for (int u = 0; u < kMlaUnroll; ++u) {
      const int position = key0 + u * kWarps;
      if (position < end) {
        const int64_t slot =
            static_cast<int64_t>(seq.block_table[position / a.block_size]) * a.block_size +
            position % a.block_size;
        const T* e = cache + slot * a.token_stride;
        load_vec<T, LPL>(e + lane * LPL, kl[u]);
        if constexpr (RPL > 0) {
          load_vec<T, RPL>(e + rope_at, kr[u]);
        } else {
          kr[u][0] = rope_lane ? to_float(e[rope_at]) : 0.0f;
        }
      } else {
#pragma unroll
        for (int d = 0; d < LPL; ++d) kl[u][d] = 0.0f;  // finite: p = 0 multiplies it
#pragma unroll
        for (int d = 0; d < RP; ++d) kr[u][d] = 0.0f;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float score[kMlaUnroll];
#pragma unroll
      for (int u = 0; u < kMlaUnroll; ++u) {
        float dot = 0.0f;
#pragma unroll
        for (int d = 0; d < LPL; ++d) dot = fmaf(ql[g][d], kl[u][d], dot);
#pragma unroll
        for (int d = 0; d < RP; ++d) dot = fmaf(qr[g][d], kr[u][d], dot);
        score[u] = dot;
      }
      // the latent part is the value
      softmax_update<kMlaUnroll, LPL, 32, kWarps>(score, key0, end, m[g], l[g], acc[g], kl);
    }
  }

  merge_warps_and_store<T, G, LPL>(m, l, acc, red_m, red_l, red_acc, heads, first, s, token,
                                   a.q_heads, a.splits, split, static_cast<T*>(a.out), a.partial);
}

// With several splits, merges their partial results into out (decode_attention_combine).
template <typename T>
void launch_split_combine(const float* partial, const PagedSequence* sequences, void* out,
                          int num_seqs, int q_heads, int splits, int d_model, cudaStream_t stream) {
  if (splits <= 1) return;
  const dim3 grid(static_cast<unsigned int>(num_seqs), static_cast<unsigned int>(q_heads));
  launch_pdl("decode_attention_combine", decode_attention_combine<T>, grid, d_model, 0, stream,
             partial, sequences, static_cast<T*>(out), q_heads, splits, d_model);
  DSHPC_CUDA_LAUNCH_CHECK("decode_attention_combine");
}

// MLA's value projection after the attention, with the split combine in the same launch:
// values[token, h, v] = W_UV_h[v] · o_h, where o_h is head h's attention output (the splits
// merged as decode_attention_combine does, rounded to T as the op-by-op path stores it; with one
// split the decode kernel's stored output). grid (sequence, head, chunk of kValueRows rows of
// W_UV); each CTA merges its head's splits into shared memory, then a warp per row reads W_UV.
constexpr int kValueRows = 16;

template <typename T, int L>
__global__ void __launch_bounds__(kThreads)
    mla_values_kernel(const float* partial, const PagedSequence* sequences, const T* out,
                      int q_heads, int splits, MlaValueProjection proj) {
  pdl_begin();
  constexpr int kVec = 16 / sizeof(T);
  __shared__ __align__(16) float o[L];
  __shared__ float weight[kMaxSplits];
  __shared__ float inv_l;
  const int s = blockIdx.x, head = blockIdx.y;
  const int token = sequences[s].query_begin;
  if (splits > 1) {
    const float* part = partial + (static_cast<int64_t>(s) * q_heads + head) * splits * (L + 2);
    if (threadIdx.x < 32) split_weights(part, splits, L, weight, &inv_l);
    __syncthreads();
    for (int d = threadIdx.x; d < L; d += blockDim.x) {
      float acc = 0.0f;
      for (int i = 0; i < splits; ++i) acc = fmaf(part[i * (L + 2) + d], weight[i], acc);
      o[d] = to_float(from_float<T>(acc * inv_l));
    }
  } else {
    const T* row = out + (static_cast<int64_t>(token) * q_heads + head) * L;
    for (int d = threadIdx.x; d < L; d += blockDim.x) o[d] = to_float(row[d]);
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T* w_head = static_cast<const T*>(proj.w_uv) + head * proj.head_stride;
  T* values = static_cast<T*>(proj.values) + static_cast<int64_t>(token) * proj.values_stride +
              static_cast<int64_t>(head) * proj.v_dim;
  for (int r = warp; r < kValueRows; r += kWarps) {
    const int v = blockIdx.z * kValueRows + r;
    if (v >= proj.v_dim) break;
    const T* w = w_head + static_cast<int64_t>(v) * proj.row_stride;
    float acc = 0.0f;
#pragma unroll
    for (int d = lane * kVec; d < L; d += 32 * kVec) {
      union {
        uint4 raw;
        T e[kVec];
      } chunk;
      chunk.raw = __ldg(reinterpret_cast<const uint4*>(w + d));
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc = fmaf(to_float(chunk.e[j]), o[d + j], acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) values[v] = from_float<T>(acc);
  }
}

template <typename T, int LPL, int RPL>
void launch_mla_decode(const MlaDecodeArgs& args, int num_seqs, int head_chunks,
                       const MlaValueProjection* proj, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(num_seqs), static_cast<unsigned int>(head_chunks),
                  static_cast<unsigned int>(args.splits));
  launch_pdl("mla_decode_kernel", mla_decode_kernel<T, LPL, RPL, kMlaHeads>, grid, kThreads, 0,
             stream, args);
  DSHPC_CUDA_LAUNCH_CHECK("mla_decode_kernel");
  if (proj == nullptr) {
    launch_split_combine<T>(args.partial, args.sequences, args.out, num_seqs, args.q_heads,
                            args.splits, 32 * LPL, stream);
    return;
  }
  const dim3 values_grid(static_cast<unsigned int>(num_seqs),
                         static_cast<unsigned int>(args.q_heads),
                         static_cast<unsigned int>((proj->v_dim + kValueRows - 1) / kValueRows));
  launch_pdl("mla_values_kernel", mla_values_kernel<T, 32 * LPL>, values_grid, kThreads, 0, stream,
             args.partial, args.sequences, static_cast<const T*>(args.out), args.q_heads,
             args.splits, *proj);
  DSHPC_CUDA_LAUNCH_CHECK("mla_values_kernel");
}

// Head dim 32 · DPL of T, G heads per CTA. The wide form (plan.wide_keys) applies where a lane's
// 16-byte load is more than its share of a 32-lane row (bf16 heads up to 128 dims, float32 up to
// 64) and the heads' query and accumulator registers stay at most 32 floats a lane (G · EPL ≤ 16),
// with `unroll` (2 or 4) key groups a warp in flight (plan.unroll). The one-key form keeps
// kUnroll. grid (sequence × kv head × head chunk, the heads of a sequence adjacent; split).
// Returns whether the wide form ran.
template <typename T, int DPL, int G>
bool launch_decode(const DecodeArgs& args, int num_seqs, [[maybe_unused]] bool wide,
                   [[maybe_unused]] int unroll, cudaStream_t stream) {
  constexpr int kWideEpl = 16 / static_cast<int>(sizeof(T));
  constexpr bool kWideApplies = kWideEpl > DPL && G * kWideEpl <= 16;
  const dim3 grid(static_cast<unsigned int>(num_seqs) * static_cast<unsigned int>(args.head_ctas),
                  static_cast<unsigned int>(args.splits));
  bool wide_launched = false;
  if constexpr (kWideApplies) {
    if (wide) {
      constexpr int LPK = 32 * DPL / kWideEpl;
      launch_pdl("decode_attention_kernel",
                 unroll == 2 ? decode_attention_kernel<T, LPK, kWideEpl, G, 2>
                             : decode_attention_kernel<T, LPK, kWideEpl, G, 4>,
                 grid, kThreads, 0, stream, args);
      wide_launched = true;
    }
  }
  if (!wide_launched) {
    launch_pdl("decode_attention_kernel", decode_attention_kernel<T, 32, DPL, G, kUnroll>, grid,
               kThreads, 0, stream, args);
  }
  DSHPC_CUDA_LAUNCH_CHECK("decode_attention_kernel");
  launch_split_combine<T>(args.partial, args.sequences, args.out, num_seqs, args.q_heads,
                          args.splits, 32 * DPL, stream);
  return wide_launched;
}

template <typename T, int DPL>
bool dispatch_group(const DecodeArgs& args, int heads_per_cta, int num_seqs, bool wide, int unroll,
                    cudaStream_t stream) {
  switch (heads_per_cta) {
    case 1:
      return launch_decode<T, DPL, 1>(args, num_seqs, wide, unroll, stream);
    case 2:
      return launch_decode<T, DPL, 2>(args, num_seqs, wide, unroll, stream);
    case 4:
      return launch_decode<T, DPL, 4>(args, num_seqs, wide, unroll, stream);
    default:
      return launch_decode<T, DPL, 8>(args, num_seqs, wide, unroll, stream);
  }
}

// Heads per CTA: the group rounded up to a power of two, at most 8 (larger groups take several
// CTAs per kv head).
int heads_per_cta(int64_t group) {
  int g = 1;
  while (g < group && g < 8) g *= 2;
  return g;
}

}  // namespace

bool decode_attention_supported(const PagedKvView& cache, DType dtype) {
  const int64_t d = cache.head_dim;
  const size_t element = dtype_size(dtype);
  const int64_t dpl = d / 32;
  const size_t vector_bytes = static_cast<size_t>(dpl) * element;
  const auto aligned = [&](const void* p, int64_t stride) {
    return reinterpret_cast<uintptr_t>(p) % vector_bytes == 0 &&
           (static_cast<size_t>(stride) * element) % vector_bytes == 0;
  };
  return (dtype == DType::kBF16 || dtype == DType::kF32) && cache.v_dim == d && d % 32 == 0 &&
         (dpl == 1 || dpl == 2 || dpl == 4 || dpl == 8) && cache.v != cache.k &&
         aligned(cache.k, cache.k_token_stride) && aligned(cache.v, cache.v_token_stride);
}

int decode_split_cap(int64_t max_context, int64_t min_keys) {
  int cap = 1;
  while (cap < kMaxSplits && min_keys * cap * 2 <= max_context) cap *= 2;
  return cap;
}

DecodeAttentionPlan decode_attention_plan(int64_t num_seqs, int64_t q_heads, int64_t kv_heads,
                                          int64_t head_dim, DType dtype, int64_t max_context,
                                          int num_sms, bool wide_keys) {
  DecodeAttentionPlan plan;
  const int64_t group = q_heads / kv_heads;
  plan.heads_per_cta = heads_per_cta(group);
  plan.head_chunks = static_cast<int>((group + plan.heads_per_cta - 1) / plan.heads_per_cta);
  plan.wide_keys = wide_keys;
  // The occupancy rules below are measured for the wide form with one head a CTA (MHA, the
  // DeepSeek-LLM 7B shape; ptxas, CUDA 13, sm_90, bf16 128-dim heads: 71 registers with four key
  // groups a warp in flight, 7 CTAs an SM; 55 with two, 9 CTAs an SM). The other forms (several
  // heads a CTA, one key a warp) keep the rules they were measured with: splits until two CTAs an
  // SM, four groups. The launch may still fall back to the one-key form (alignment) with this
  // plan's splits.
  const int64_t wide_epl = 16 / static_cast<int64_t>(dtype_size(dtype));
  const bool wide_one_head = wide_keys && wide_epl > head_dim / 32 && plan.heads_per_cta == 1;
  // At least 32 keys per split (8 per warp, two unrolled groups) so that the combine's extra pass
  // stays small beside the keys read. Then splits while the grid stays within about a wave:
  // for the one-head wide form while twice the CTAs fit in 8 an SM.
  const int64_t ctas = num_seqs * kv_heads * plan.head_chunks;
  const int cap = decode_split_cap(max_context, kDecodeMinSplitKeys);
  const auto split_more = [&](int64_t grid) {
    return wide_one_head ? 2 * grid <= 8 * static_cast<int64_t>(num_sms)
                         : grid < 2 * static_cast<int64_t>(num_sms);
  };
  plan.splits = 1;
  while (plan.splits < cap && split_more(ctas * plan.splits)) plan.splits *= 2;
  // Four key groups a warp while the grid fits in one wave of that form (few sequences: latency
  // decides); past it, two: more resident CTAs read faster.
  plan.unroll = wide_one_head && ctas * plan.splits > 7 * static_cast<int64_t>(num_sms) ? 2 : 4;
  return plan;
}

bool launch_decode_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                             int64_t num_seqs, int64_t q_heads, const PagedKvView& cache,
                             DType dtype, float scale, const DecodeAttentionPlan& plan,
                             float* partial, cudaStream_t stream) {
  if (num_seqs == 0) return false;
  DSHPC_CHECK(decode_attention_supported(cache, dtype)) << "decode attention: unsupported shape";
  DSHPC_CHECK(num_seqs * cache.kv_heads * plan.head_chunks <= 0x7fffffff &&
              plan.splits <= kMaxSplits && (plan.splits == 1 || partial != nullptr) &&
              (plan.unroll == 2 || plan.unroll == 4))
      << "decode attention: grid " << num_seqs << " x " << cache.kv_heads * plan.head_chunks
      << " x " << plan.splits;
  DecodeArgs args{};
  args.q = q.data;
  args.out = out.data;
  args.k = cache.k;
  args.v = cache.v;
  args.sequences = sequences;
  args.partial = partial;
  args.k_token_stride = cache.k_token_stride;
  args.v_token_stride = cache.v_token_stride;
  args.q_heads = static_cast<int>(q_heads);
  args.group = static_cast<int>(q_heads / cache.kv_heads);
  args.head_chunks = plan.head_chunks;
  args.block_size = static_cast<int>(cache.block_size);
  args.splits = plan.splits;
  args.head_ctas = static_cast<int>(cache.kv_heads) * plan.head_chunks;
  args.scale_log2 = scale * kLog2e;
  const int n = static_cast<int>(num_seqs);
  const int dpl = static_cast<int>(cache.head_dim / 32);
  // The wide form's 16-byte loads of q, K and V rows.
  const size_t element = dtype_size(dtype);
  const bool wide = plan.wide_keys && aligned_to(q.data, 16) && aligned_to(cache.k, 16) &&
                    aligned_to(cache.v, 16) && (cache.k_token_stride * element) % 16 == 0 &&
                    (cache.v_token_stride * element) % 16 == 0 &&
                    (cache.head_dim * element) % 16 == 0;
  bool used_wide = false;
  dispatch_float(dtype, "decode_attention", [&](auto tag) {
    using T = decltype(tag);
    switch (dpl) {
      case 1:
        used_wide = dispatch_group<T, 1>(args, plan.heads_per_cta, n, wide, plan.unroll, stream);
        return;
      case 2:
        used_wide = dispatch_group<T, 2>(args, plan.heads_per_cta, n, wide, plan.unroll, stream);
        return;
      case 4:
        used_wide = dispatch_group<T, 4>(args, plan.heads_per_cta, n, wide, plan.unroll, stream);
        return;
      default:
        used_wide = dispatch_group<T, 8>(args, plan.heads_per_cta, n, wide, plan.unroll, stream);
        return;
    }
  });
  return used_wide;
}

// MLA shapes the kernel takes: the DeepSeek models' latent 512 + rope 64 and the tiny fixtures'
// 64 + 16.
bool mla_decode_attention_supported(const Mat& q, const Mat& out, const PagedKvView& cache,
                                    DType dtype) {
  const int64_t latent = cache.v_dim, rope = cache.head_dim - cache.v_dim;
  const bool shape = (latent == 512 && rope == 64) || (latent == 64 && rope == 16);
  if (!shape || (dtype != DType::kBF16 && dtype != DType::kF32) || cache.kv_heads != 1 ||
      cache.v != cache.k || cache.v_token_stride != cache.k_token_stride) {
    return false;
  }
  const size_t element = dtype_size(dtype);
  const size_t vector_bytes = static_cast<size_t>(latent / 32) * element;
  const auto aligned = [&](const void* p, int64_t stride) {
    return reinterpret_cast<uintptr_t>(p) % vector_bytes == 0 &&
           (static_cast<size_t>(stride) * element) % vector_bytes == 0;
  };
  // The rope part is read in 2-element vectors (512 + 64) or by element (64 + 16): the latent
  // alignment covers both, as L + 2l is even.
  return aligned(cache.k, cache.k_token_stride) && q.contiguous() && out.contiguous() &&
         aligned(q.data, cache.head_dim) && aligned(out.data, latent);
}

DecodeAttentionPlan mla_decode_attention_plan(int64_t num_seqs, int64_t q_heads,
                                              int64_t max_context, int num_sms) {
  DecodeAttentionPlan plan;
  plan.heads_per_cta = kMlaHeads;
  plan.head_chunks = static_cast<int>((q_heads + kMlaHeads - 1) / kMlaHeads);
  // As decode_attention_plan, but with splits of at least 8 keys (2 per warp, one unrolled
  // iteration): at batch 1 a context of 160 tokens spreads over 8 splits of each 4-head chunk.
  const int64_t ctas = num_seqs * plan.head_chunks;
  const int cap = decode_split_cap(max_context, kMlaMinSplitKeys);
  plan.splits = 1;
  while (plan.splits < cap && ctas * plan.splits < 2 * static_cast<int64_t>(num_sms)) {
    plan.splits *= 2;
  }
  return plan;
}

bool mla_values_supported(const MlaValueProjection& proj, const PagedKvView& cache, DType dtype,
                          int64_t num_seqs) {
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(dtype));
  return num_seqs >= 1 && num_seqs <= kMlaValuesMaxSequences && proj.v_dim >= 1 &&
         proj.v_dim <= 65535 * kValueRows && proj.row_stride % vec == 0 &&
         proj.head_stride % vec == 0 && aligned_to(proj.w_uv, 16) && cache.v_dim % vec == 0;
}

void launch_mla_decode_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                                 int64_t num_seqs, int64_t q_heads, const PagedKvView& cache,
                                 DType dtype, float scale, const DecodeAttentionPlan& plan,
                                 float* partial, cudaStream_t stream,
                                 const MlaValueProjection* values) {
  if (num_seqs == 0) return;
  DSHPC_CHECK(mla_decode_attention_supported(q, out, cache, dtype) &&
              (values == nullptr || mla_values_supported(*values, cache, dtype, num_seqs)))
      << "MLA decode attention: unsupported shape";
  DSHPC_CHECK(num_seqs <= 0x7fffffff && plan.head_chunks <= 65535 && plan.splits <= kMaxSplits &&
              plan.heads_per_cta == kMlaHeads && (plan.splits == 1 || partial != nullptr))
      << "MLA decode attention: grid " << num_seqs << " x " << plan.head_chunks << " x "
      << plan.splits;
  MlaDecodeArgs args{};
  args.q = q.data;
  args.out = out.data;
  args.cache = cache.k;
  args.sequences = sequences;
  args.partial = partial;
  args.token_stride = cache.k_token_stride;
  args.q_heads = static_cast<int>(q_heads);
  args.rope = static_cast<int>(cache.head_dim - cache.v_dim);
  args.block_size = static_cast<int>(cache.block_size);
  args.splits = plan.splits;
  args.scale_log2 = scale * kLog2e;
  const int n = static_cast<int>(num_seqs);
  dispatch_float(dtype, "mla_decode_attention", [&](auto tag) {
    using T = decltype(tag);
    if (cache.v_dim == 512) {
      return launch_mla_decode<T, 16, 2>(args, n, plan.head_chunks, values, stream);
    }
    return launch_mla_decode<T, 2, 0>(args, n, plan.head_chunks, values, stream);
  });
}

}  // namespace dshpc::cuda
