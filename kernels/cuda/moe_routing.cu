// Mixture-of-experts routing (CPU reference: kernels/moe_routing_cpu.cpp; semantics in
// kernels/moe_routing.h). Up to 256 experts and 32 groups one warp routes a token from
// registers (route_token_warp); otherwise one CTA per token, the token's scores in shared memory:
//   1. scores = softmax (max-subtracted, sum in double as the CPU) or sigmoid of the logits;
//   2. choice = scores (+ e_score_correction_bias for noaux_tc);
//   3. group-limited methods: group score = max (V2) or sum of the top two (V3); the top
//      topk_groups groups are kept, every expert of a dropped group gets −inf;
//   4. the top_k experts by choice, found by rank (the number of experts that beat it: larger
//      value, or equal value and lower index), which reproduces the CPU's order exactly;
//   5. weights = unbiased scores of the chosen, normalised and scaled by the CPU's rule.
// The gate of a decode step (launch_moe_gate: router product, routing, optionally the norm before
// and the experts' index after) runs as one launch in two forms: moe_gate_kernel, where the CTA
// that finishes its products last (a device counter) routes; and on sm_90, for routers of up to
// kMoeGateClusterMaxExperts experts without the norm, moe_gate_cluster_kernel, one thread block
// cluster whose logits meet in the first CTA's shared memory.
#include <cooperative_groups.h>

#include <algorithm>
#include <cfloat>
#include <climits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/moe_index.cuh"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

struct RouteArgs {
  int num_experts;
  int top_k;
  int num_groups;
  int topk_groups;
  bool softmax;
  int method;  // MoeTopkMethod
  bool norm_topk_prob;
  float routed_scaling_factor;
};

__device__ double block_sum_double(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) total += scratch[w];
  return total;
}

// Larger value first; equal values by lower index.
__device__ __forceinline__ bool beats(float a, int ia, float b, int ib) {
  return a > b || (a == b && ia < ib);
}

// Shared memory of route_token: scores and choice [n], group scores and flags [num_groups],
// the selected [top_k].
__host__ __device__ size_t route_shared_bytes(const RouteArgs& a) {
  return sizeof(float) * 2 * a.num_experts + (sizeof(float) + sizeof(int)) * a.num_groups +
         sizeof(int) * a.top_k;
}

// Routes one token (its logits `row`) with the whole CTA: expert_ids and weights of the token.
// `smem`: route_shared_bytes(a). Every thread of the CTA must call it.
template <typename T>
__device__ void route_token(const T* row, const float* bias, const RouteArgs& a,
                            unsigned char* smem, int32_t* ids, float* w) {
  __shared__ float scratch[32];
  __shared__ double scratch_d[32];
  const int n = a.num_experts;
  float* scores = reinterpret_cast<float*>(smem);  // [n] unbiased: they weight the experts
  float* choice = scores + n;                      // [n] what experts are ranked by
  float* group_score = choice + n;                 // [num_groups]
  int* group_keep = reinterpret_cast<int*>(group_score + a.num_groups);  // [num_groups]
  int* selected = group_keep + a.num_groups;                             // [top_k]
  if (a.softmax) {
    float local_max = -INFINITY;
    for (int e = threadIdx.x; e < n; e += blockDim.x)
      local_max = fmaxf(local_max, to_float(row[e]));
    const float max_logit = block_max(local_max, scratch);
    double local_sum = 0.0;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
      const float v = expf(to_float(row[e]) - max_logit);
      scores[e] = v;
      local_sum += v;
    }
    const double sum = block_sum_double(local_sum, scratch_d);
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
      scores[e] = static_cast<float>(scores[e] / sum);
    }
  } else {
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
      scores[e] = 1.0f / (1.0f + expf(-to_float(row[e])));
    }
  }
  const bool noaux = a.method == static_cast<int>(MoeTopkMethod::kNoauxTc);
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    choice[e] = noaux ? scores[e] + bias[e] : scores[e];
  }
  __syncthreads();

  if (a.method != static_cast<int>(MoeTopkMethod::kGreedy)) {
    const int per_group = n / a.num_groups;
    for (int g = threadIdx.x; g < a.num_groups; g += blockDim.x) {
      const float* c = choice + g * per_group;
      if (!noaux) {
        float best = -INFINITY;
        for (int e = 0; e < per_group; ++e) best = fmaxf(best, c[e]);
        group_score[g] = best;
      } else {  // the sum of the two largest (the only one if a group has one expert)
        float first = -INFINITY, second = -INFINITY;
        for (int e = 0; e < per_group; ++e) {
          if (c[e] > first) {
            second = first;
            first = c[e];
          } else if (c[e] > second) {
            second = c[e];
          }
        }
        group_score[g] = per_group >= 2 ? first + second : first;
      }
    }
    __syncthreads();
    for (int g = threadIdx.x; g < a.num_groups; g += blockDim.x) {
      int rank = 0;
      for (int o = 0; o < a.num_groups; ++o) rank += beats(group_score[o], o, group_score[g], g);
      group_keep[g] = rank < a.topk_groups;
    }
    __syncthreads();
    // Dropped groups get −inf, never 0: biased choice values can be negative.
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
      if (!group_keep[e / per_group]) choice[e] = -INFINITY;
    }
    __syncthreads();
  }

  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const float mine = choice[e];
    int rank = 0;
    for (int o = 0; o < n && rank < a.top_k; ++o) rank += beats(choice[o], o, mine, e);
    if (rank < a.top_k) selected[rank] = e;
  }
  __syncthreads();

  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int r = 0; r < a.top_k; ++r) {
      ids[r] = selected[r];
      w[r] = scores[selected[r]];
      sum += w[r];
    }
    const bool normalise = a.norm_topk_prob && (!a.softmax || a.top_k > 1);
    const double factor = normalise ? 1.0 / (sum + 1e-20) : 1.0;
    const double scaling = (normalise && a.softmax) ? 1.0 : a.routed_scaling_factor;
    for (int r = 0; r < a.top_k; ++r) {
      w[r] = static_cast<float>(static_cast<double>(w[r]) * factor * scaling);
    }
  }
  __syncthreads();  // the shared memory may be reused by the caller
}

// route_token's result from one warp, for up to kWarpRouteMaxExperts experts and 32 groups: the
// same steps and arithmetic, the scores in registers (expert lane + 32 j), no CTA barrier. The
// top k are found by k rounds of a warp argmax under `beats` with the chosen removed, which
// gives the rank order exactly. `group_choice`: n floats of shared memory of this warp's own
// (grouped methods only). `load(e)`: logit e as a float.
constexpr int kWarpRouteMaxExperts = 256;
static_assert(kMoeGateMaxTokens <= kThreads / 32, "the gate routes a token per warp");
constexpr int kWarpRouteJ = kWarpRouteMaxExperts / 32;

__device__ __forceinline__ double warp_sum_double(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__host__ __device__ inline bool warp_routable(const RouteArgs& a) {
  return a.num_experts <= kWarpRouteMaxExperts && a.num_groups <= 32;
}

// kJ: experts a lane holds (n ≤ 32 · kJ; the default takes every routable n).
template <int kJ = kWarpRouteJ, typename Load>
__device__ void route_token_warp(Load load, const float* bias, const RouteArgs& a,
                                 float* group_choice, int32_t* ids, float* w) {
  const int lane = threadIdx.x & 31;
  const int n = a.num_experts;
  float score[kJ], choice[kJ];
  if (a.softmax) {
    float logit[kJ];
    float local_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int e = lane + 32 * j;
      logit[j] = e < n ? load(e) : -INFINITY;
      local_max = fmaxf(local_max, logit[j]);
    }
    const float max_logit = warp_max(local_max);
    // block_sum_double's order exactly: expert lane + 32 j sits where the CTA form has it (warp
    // j), so each j is one warp's xor tree and the trees add in j order from 0.
    double sum = 0.0;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      score[j] = lane + 32 * j < n ? expf(logit[j] - max_logit) : 0.0f;
      sum += warp_sum_double(score[j]);
    }
#pragma unroll
    for (int j = 0; j < kJ; ++j) score[j] = static_cast<float>(score[j] / sum);
  } else {
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int e = lane + 32 * j;
      score[j] = e < n ? 1.0f / (1.0f + expf(-load(e))) : 0.0f;
    }
  }
  const bool noaux = a.method == static_cast<int>(MoeTopkMethod::kNoauxTc);
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int e = lane + 32 * j;
    choice[j] = e >= n ? -INFINITY : (noaux ? score[j] + bias[e] : score[j]);
  }

  if (a.method != static_cast<int>(MoeTopkMethod::kGreedy)) {
    const int per_group = n / a.num_groups;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      if (lane + 32 * j < n) group_choice[lane + 32 * j] = choice[j];
    }
    __syncwarp();
    float group_score = -INFINITY;  // lane g: group g's
    if (lane < a.num_groups) {
      const float* c = group_choice + lane * per_group;
      if (!noaux) {
        for (int e = 0; e < per_group; ++e) group_score = fmaxf(group_score, c[e]);
      } else {  // the sum of the two largest (the only one if a group has one expert)
        float first = -INFINITY, second = -INFINITY;
        for (int e = 0; e < per_group; ++e) {
          if (c[e] > first) {
            second = first;
            first = c[e];
          } else if (c[e] > second) {
            second = c[e];
          }
        }
        group_score = per_group >= 2 ? first + second : first;
      }
    }
    int rank = 0;
    for (int o = 0; o < a.num_groups; ++o) {
      const float other = __shfl_sync(0xffffffffu, group_score, o);
      rank += beats(other, o, group_score, lane);
    }
    const bool keep = lane < a.num_groups && rank < a.topk_groups;
    // Dropped groups get −inf, never 0: biased choice values can be negative.
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int e = lane + 32 * j;
      const bool kept = __shfl_sync(0xffffffffu, keep, e < n ? e / per_group : 0);
      if (e < n && !kept) choice[j] = -INFINITY;
    }
    __syncwarp();  // group_choice may be reused by the caller
  }

  unsigned int taken = 0;  // bit j: expert lane + 32 j chosen already
  double sum = 0.0;
  for (int r = 0; r < a.top_k; ++r) {
    float best = -INFINITY, best_score = 0.0f;
    int best_e = INT_MAX;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int e = lane + 32 * j;
      if (e < n && !(taken >> j & 1u) && (best_e == INT_MAX || beats(choice[j], e, best, best_e))) {
        best = choice[j];
        best_e = e;
        best_score = score[j];
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float other = __shfl_xor_sync(0xffffffffu, best, offset);
      const int other_e = __shfl_xor_sync(0xffffffffu, best_e, offset);
      const float other_score = __shfl_xor_sync(0xffffffffu, best_score, offset);
      if (other_e != INT_MAX && (best_e == INT_MAX || beats(other, other_e, best, best_e))) {
        best = other;
        best_e = other_e;
        best_score = other_score;
      }
    }
    if ((best_e & 31) == lane) taken |= 1u << (best_e >> 5);
    if (lane == 0) {
      ids[r] = best_e;
      w[r] = best_score;
      sum += w[r];
    }
  }
  if (lane == 0) {
    const bool normalise = a.norm_topk_prob && (!a.softmax || a.top_k > 1);
    const double factor = normalise ? 1.0 / (sum + 1e-20) : 1.0;
    const double scaling = (normalise && a.softmax) ? 1.0 : a.routed_scaling_factor;
    for (int r = 0; r < a.top_k; ++r) {
      w[r] = static_cast<float>(static_cast<double>(w[r]) * factor * scaling);
    }
  }
  __syncwarp();
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    moe_route_kernel(const T* logits, int64_t stride, const float* bias, RouteArgs a,
                     int32_t* expert_ids, float* weights) {
  pdl_begin();
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t t = blockIdx.x;
  const T* row = logits + t * stride;
  if (warp_routable(a)) {
    if (threadIdx.x < 32) {
      route_token_warp([&](int e) { return to_float(row[e]); }, bias, a,
                       reinterpret_cast<float*>(smem), expert_ids + t * a.top_k,
                       weights + t * a.top_k);
    }
    return;
  }
  route_token(row, bias, a, smem, expert_ids + t * a.top_k, weights + t * a.top_k);
}

// The add_rmsnorm of MoeGateNorm, on the device: rows in the activation type T.
template <typename T>
struct GateNormArgs {
  T* residual = nullptr;  // nullptr: no norm, the gate reads x
  int64_t residual_stride = 0;
  const T* delta = nullptr;
  int64_t delta_stride = 0;
  const T* weight = nullptr;
  T* out = nullptr;
  int64_t out_stride = 0;
  float eps = 0.0f;
};

// xs[t] = rmsnorm(residual[t] + delta[t]) · weight for t < tokens, into shared memory, with
// rmsnorm_vec_kernel's arithmetic and summation order (same thread ↔ chunk mapping and block
// size, the same reduction tree), so the values equal those of the separate launch.
template <typename T>
__device__ void gate_norm_rows(const GateNormArgs<T>& n, int tokens, int hidden, T* xs) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float partial[kMoeGateMaxTokens][kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int chunks = hidden / kVec;
  float ss[kMoeGateMaxTokens];
#pragma unroll
  for (int t = 0; t < kMoeGateMaxTokens; ++t) {
    ss[t] = 0.0f;
    if (t >= tokens) continue;
    const uint4* r = reinterpret_cast<const uint4*>(n.residual + t * n.residual_stride);
    const uint4* d = reinterpret_cast<const uint4*>(n.delta + t * n.delta_stride);
    Vec16<T> x[kNormChunks], y[kNormChunks];
#pragma unroll
    for (int i = 0; i < kNormChunks; ++i) {
      const int c = threadIdx.x + i * kThreads;
      if (c < chunks) {
        x[i].raw = r[c];
        y[i].raw = d[c];
      }
    }
#pragma unroll
    for (int i = 0; i < kNormChunks; ++i) {
      const int c = threadIdx.x + i * kThreads;
      if (c >= chunks) continue;
      x[i] = add_rounded(x[i], y[i]);
      add_squares(x[i], ss[t]);
      reinterpret_cast<uint4*>(xs + t * hidden)[c] = x[i].raw;
    }
  }
  // block_sum's tree for every token at once: warp sums, then warp 0's sum of them.
#pragma unroll
  for (int t = 0; t < kMoeGateMaxTokens; ++t) {
    if (t >= tokens) break;
    const float v = warp_sum(ss[t]);
    if (lane == 0) partial[t][warp] = v;
  }
  __syncthreads();
#pragma unroll
  for (int t = 0; t < kMoeGateMaxTokens; ++t) {
    if (t >= tokens) break;
    const float total = warp_sum(lane < kThreads / 32 ? partial[t][lane] : 0.0f);
    const float inv = inverse_rms(total, hidden, n.eps);
#pragma unroll
    for (int i = 0; i < kNormChunks; ++i) {
      const int c = threadIdx.x + i * kThreads;
      if (c >= chunks) continue;
      Vec16<T> v;
      v.raw = reinterpret_cast<const uint4*>(xs + t * hidden)[c];  // this thread's own chunk
      reinterpret_cast<uint4*>(xs + t * hidden)[c] = scale_chunk(v, n.weight, c, inv).raw;
    }
  }
  __syncthreads();  // every warp reads every chunk
}

// The router and the routing of a few tokens in one launch: warp e of the grid computes expert
// e's logit for every token (float32 accumulation, stored in float32 as the matmul would), then
// the CTA that finishes last (a counter in device memory, reset by that CTA for the next launch
// or graph replay) routes each token from the logits, read back through L2.
// kNorm: x is rmsnorm(residual + delta), made by every CTA in shared memory (norm_bytes of it,
// before the routing's), and written out with the new residual by the routing CTA, which only
// runs once every other CTA has read residual. index.offsets != nullptr: that CTA then builds
// the experts' index (moe_index.cuh) from the ids it wrote.
template <typename T, bool kNorm>
__global__ void __launch_bounds__(kThreads)
    moe_gate_kernel(const T* x, int64_t x_stride, int tokens, const T* router,
                    int64_t router_stride, int hidden, float* logits, int64_t logits_stride,
                    const float* bias, RouteArgs a, int32_t* expert_ids, float* weights,
                    unsigned int* done, GateNormArgs<T> norm, size_t norm_bytes,
                    MoeGateIndex index) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kVec = 16 / sizeof(T);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned char* route_smem = smem + norm_bytes;
  const int e = blockIdx.x * (kThreads / 32) + warp;
  // The expert's first router loads (a 2,048-wide row whole) before pdl_wait: weights only.
  constexpr int kPreload = 8;
  const uint4* w =
      e < a.num_experts
          ? reinterpret_cast<const uint4*>(router + static_cast<int64_t>(e) * router_stride)
          : nullptr;
  uint4 preload[kPreload];
#pragma unroll
  for (int i = 0; i < kPreload; ++i) {
    const int c = lane + 32 * i;
    if (w != nullptr && c < hidden / kVec) preload[i] = __ldg(w + c);
  }
  pdl_begin();
  if constexpr (kNorm) {
    gate_norm_rows(norm, tokens, hidden, reinterpret_cast<T*>(smem));
    x = reinterpret_cast<const T*>(smem);
    x_stride = hidden;
  }
  if (w != nullptr) {
    float acc[kMoeGateMaxTokens] = {};
    auto dot = [&](const uint4& raw, int c) {  // acc[t] += w[c] · x[t][c], 16 bytes of each
      Vec16<T> wc, xc;
      wc.raw = raw;
#pragma unroll
      for (int t = 0; t < kMoeGateMaxTokens; ++t) {
        if (t >= tokens) break;
        const uint4* xr = reinterpret_cast<const uint4*>(x + t * x_stride) + c;
        if constexpr (kNorm) {
          xc.raw = *xr;  // shared memory
        } else {
          xc.raw = __ldg(xr);
        }
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[t] = fmaf(to_float(wc.e[j]), to_float(xc.e[j]), acc[t]);
      }
    };
    const int chunks = hidden / kVec;
#pragma unroll
    for (int i = 0; i < kPreload; ++i) {
      if (lane + 32 * i < chunks) dot(preload[i], lane + 32 * i);
    }
#pragma unroll 8
    for (int c = lane + 32 * kPreload; c < chunks; c += 32) {  // eight loads in flight per lane
      dot(__ldg(w + c), c);
    }
#pragma unroll
    for (int t = 0; t < kMoeGateMaxTokens; ++t) {
      if (t >= tokens) break;
      const float sum = warp_sum(acc[t]);
      if (lane == 0) logits[t * logits_stride + e] = sum;
    }
  }
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // this CTA's logits before its count
    last = atomicAdd(done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  if constexpr (kNorm) {
    // Every other CTA has read residual and delta (they counted after their products).
    const int chunks = hidden / kVec;
    for (int t = 0; t < tokens; ++t) {
      const uint4* d = reinterpret_cast<const uint4*>(norm.delta + t * norm.delta_stride);
      uint4* r = reinterpret_cast<uint4*>(norm.residual + t * norm.residual_stride);
      const uint4* xs = reinterpret_cast<const uint4*>(x + t * hidden);
      uint4* out = reinterpret_cast<uint4*>(norm.out + t * norm.out_stride);
      for (int c = threadIdx.x; c < chunks; c += kThreads) {
        Vec16<T> rc, dc;
        rc.raw = r[c];
        dc.raw = d[c];
#pragma unroll
        for (int j = 0; j < kVec; ++j)
          rc.e[j] = from_float<T>(to_float(rc.e[j]) + to_float(dc.e[j]));
        r[c] = rc.raw;
        out[c] = xs[c];
      }
    }
  }
  if (warp_routable(a)) {
    // Warp t routes token t (tokens ≤ kMoeGateMaxTokens = the CTA's warps), each with its own
    // shared memory, the logits read through L2 (written by other CTAs).
    if (warp < tokens) {
      const float* row = logits + warp * logits_stride;
      route_token_warp([&](int e) { return __ldcg(row + e); }, bias, a,
                       reinterpret_cast<float*>(route_smem) + warp * a.num_experts,
                       expert_ids + warp * a.top_k, weights + warp * a.top_k);
    }
    __syncthreads();  // the ids, for the index
  } else {
    float* row = reinterpret_cast<float*>(route_smem + route_shared_bytes(a));
    for (int t = 0; t < tokens; ++t) {
      for (int i = threadIdx.x; i < a.num_experts; i += blockDim.x) {
        row[i] = __ldcg(logits + t * logits_stride + i);  // L2: written by other CTAs
      }
      __syncthreads();
      route_token(row, bias, a, route_smem, expert_ids + t * a.top_k, weights + t * a.top_k);
    }
  }
  if (index.offsets != nullptr) {  // after a barrier: the ids are visible
    build_moe_index(expert_ids, tokens * a.top_k, static_cast<int>(index.expert_begin),
                    static_cast<int>(index.num_local), static_cast<int>(index.shared_tokens),
                    index.offsets, index.pair_of_row, index.row_of_pair, index.active,
                    reinterpret_cast<int32_t*>(route_smem));
  }
  if (threadIdx.x == 0) *done = 0;
}

// The gate of a small router (kMoeGateClusterMaxExperts) as one thread block cluster (sm_90):
// warp w of the cluster's C CTAs computes the logits of experts w, w + 8C, … with
// moe_gate_kernel's arithmetic and order, and stores them into the first CTA's shared memory as
// well as to `logits`; after the cluster barrier that CTA routes each token from shared memory
// (warp t, token t) and builds the experts' index from ids kept in shared memory. No device
// counter, no fence and no trip through L2 between the product and the routing: in the one-CTA
// form those dependent steps made the gate 19 µs of a V2-Lite decode layer (one H200, session 9;
// Nsight Compute: 23.6 µs alone, one SM busy 22 µs of it).
// kTokens: the most tokens of the instance (1 or kMoeGateMaxTokens); kJ: route_token_warp's.
template <typename T, int kTokens, int kJ>
__global__ void __launch_bounds__(kThreads)
    moe_gate_cluster_kernel(const T* x, int64_t x_stride, int tokens, const T* router,
                            int64_t router_stride, int hidden, float* logits, int64_t logits_stride,
                            const float* bias, RouteArgs a, int32_t* expert_ids, float* weights,
                            MoeGateIndex index) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = a.num_experts;
  const int pairs = tokens * a.top_k;
  // Shared memory (the same layout in every CTA; only the first CTA's is used past the product):
  // logits [tokens][n] | each warp's group choice [kWarps][n] | ids [pairs] | weights [pairs] |
  // build_moe_index's ints.
  float* shared_logits = reinterpret_cast<float*>(smem);
  float* group_choice = shared_logits + kTokens * n;
  int32_t* ids = reinterpret_cast<int32_t*>(group_choice + kWarps * n);
  float* w = reinterpret_cast<float*>(ids + pairs);
  int32_t* index_ints = reinterpret_cast<int32_t*>(w + pairs);

  // Arrive now, wait before the first store into another CTA's shared memory: by then every CTA
  // of the cluster has started.
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
  const int first = blockIdx.x * kWarps + warp;
  const int warps = gridDim.x * kWarps;
  const int chunks = hidden / kVec;
  constexpr int kPreload = 8;
  uint4 preload[kPreload];
  if (first < n) {
    const uint4* row =
        reinterpret_cast<const uint4*>(router + static_cast<int64_t>(first) * router_stride);
#pragma unroll
    for (int i = 0; i < kPreload; ++i) {
      if (lane + 32 * i < chunks) preload[i] = __ldg(row + lane + 32 * i);
    }
  }
  pdl_begin();
  float* leader_logits = cooperative_groups::this_cluster().map_shared_rank(shared_logits, 0);
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
  for (int e = first; e < n; e += warps) {
    const uint4* row =
        reinterpret_cast<const uint4*>(router + static_cast<int64_t>(e) * router_stride);
    float acc[kTokens] = {};
    auto dot = [&](const uint4& raw, int c) {  // acc[t] += w[c] · x[t][c], 16 bytes of each
      Vec16<T> wc, xc;
      wc.raw = raw;
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        if (t >= tokens) break;
        xc.raw = __ldg(reinterpret_cast<const uint4*>(x + t * x_stride) + c);
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[t] = fmaf(to_float(wc.e[j]), to_float(xc.e[j]), acc[t]);
      }
    };
    if (e != first) {
#pragma unroll
      for (int i = 0; i < kPreload; ++i) {
        if (lane + 32 * i < chunks) preload[i] = __ldg(row + lane + 32 * i);
      }
    }
#pragma unroll
    for (int i = 0; i < kPreload; ++i) {
      if (lane + 32 * i < chunks) dot(preload[i], lane + 32 * i);
    }
#pragma unroll 8
    for (int c = lane + 32 * kPreload; c < chunks; c += 32) dot(__ldg(row + c), c);
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      if (t >= tokens) break;
      const float sum = warp_sum(acc[t]);
      if (lane == 0) {
        logits[t * logits_stride + e] = sum;
        leader_logits[t * n + e] = sum;
      }
    }
  }
  // Release the stores into the first CTA's shared memory; it acquires them. (.aligned: every
  // lane of the warp executes it together, hence the __syncwarp after lane 0's stores.)
  __syncwarp();
  asm volatile("barrier.cluster.arrive.aligned;" ::: "memory");
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
  if (blockIdx.x != 0) return;
  if (warp < tokens) {
    const float* row = shared_logits + warp * n;
    route_token_warp<kJ>([&](int e) { return row[e]; }, bias, a, group_choice + warp * n,
                         ids + warp * a.top_k, w + warp * a.top_k);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < pairs; i += kThreads) {
    expert_ids[i] = ids[i];
    weights[i] = w[i];
  }
  if (index.offsets != nullptr) {
    build_moe_index(ids, pairs, static_cast<int>(index.expert_begin),
                    static_cast<int>(index.num_local), static_cast<int>(index.shared_tokens),
                    index.offsets, index.pair_of_row, index.row_of_pair, index.active, index_ints);
  }
#else
  __trap();  // launched only where cluster_launch_supported()
#endif
}

RouteArgs route_args(const MoeRoutingParams& p, const float* bias) {
  DSHPC_CHECK(p.num_experts > 0 && p.num_experts <= 4096 && p.top_k > 0 && p.top_k <= p.num_experts)
      << "moe_route: num_experts " << p.num_experts << ", top_k " << p.top_k;
  const bool grouped = p.method != MoeTopkMethod::kGreedy;
  if (grouped) {
    DSHPC_CHECK(p.num_groups > 0 && p.num_experts % p.num_groups == 0)
        << "num_experts " << p.num_experts << " is not a multiple of num_groups " << p.num_groups;
    DSHPC_CHECK(p.topk_groups > 0 && p.topk_groups <= p.num_groups)
        << "topk_groups " << p.topk_groups << ", num_groups " << p.num_groups;
    DSHPC_CHECK(p.top_k <= p.topk_groups * (p.num_experts / p.num_groups))
        << "top_k " << p.top_k << " exceeds the experts of the kept groups";
  }
  if (p.method == MoeTopkMethod::kNoauxTc) {
    DSHPC_CHECK(bias != nullptr) << "noaux_tc needs e_score_correction_bias";
  }
  RouteArgs args{};
  args.num_experts = static_cast<int>(p.num_experts);
  args.top_k = static_cast<int>(p.top_k);
  args.num_groups = grouped ? static_cast<int>(p.num_groups) : 1;
  args.topk_groups = grouped ? static_cast<int>(p.topk_groups) : 1;
  args.softmax = p.scoring == MoeScoring::kSoftmax;
  args.method = static_cast<int>(p.method);
  args.norm_topk_prob = p.norm_topk_prob;
  args.routed_scaling_factor = p.routed_scaling_factor;
  return args;
}

}  // namespace

void launch_moe_route(const Mat& logits, const float* bias, const MoeRoutingParams& p,
                      int32_t* expert_ids, float* weights, cudaStream_t stream) {
  if (logits.rows == 0) return;
  const RouteArgs args = route_args(p, bias);
  DSHPC_CHECK_LE(logits.rows, int64_t{0x7fffffff}) << "moe_route: tokens exceed gridDim.x";
  dispatch_float(logits.dtype, "moe_route", [&](auto tag) {
    using T = decltype(tag);
    // One warp a token where it can route alone.
    launch_pdl("moe_route_kernel", moe_route_kernel<T>, static_cast<unsigned int>(logits.rows),
               warp_routable(args) ? 32 : kThreads, route_shared_bytes(args), stream,
               static_cast<const T*>(logits.data), logits.stride, bias, args, expert_ids, weights);
    DSHPC_CUDA_LAUNCH_CHECK("moe_route_kernel");
  });
}

namespace {

bool overlapping(const Mat& a, const Mat& b) {
  const auto begin = [](const Mat& m) { return static_cast<const char*>(m.data); };
  const auto end = [](const Mat& m) {
    return static_cast<const char*>(m.data) +
           ((m.rows - 1) * m.stride + m.cols) * static_cast<int64_t>(dtype_size(m.dtype));
  };
  return begin(a) < end(b) && begin(b) < end(a);
}

// The launch's dynamic shared memory: the normalised rows, then the routing's (scores, groups,
// the selection and one logits row) or, after it, the index's.
size_t gate_shared_bytes(const Mat& x, const MoeRoutingParams& p, const MoeGateNorm* norm,
                         const MoeGateIndex* index) {
  const size_t norm_bytes =
      norm != nullptr ? (x.rows * x.cols * dtype_size(x.dtype) + 15) / 16 * 16 : 0;
  RouteArgs shape{};
  shape.num_experts = static_cast<int>(p.num_experts);
  shape.top_k = static_cast<int>(p.top_k);
  shape.num_groups = p.method != MoeTopkMethod::kGreedy ? static_cast<int>(p.num_groups) : 1;
  // The CTA routing's scores, groups and a logits row, or each routing warp's choice values.
  size_t tail = std::max(route_shared_bytes(shape) + sizeof(float) * p.num_experts,
                         sizeof(float) * p.num_experts * x.rows);
  if (index != nullptr) {
    tail =
        std::max(tail, moe_index_shared_ints(static_cast<int>(index->num_local)) * sizeof(int32_t));
  }
  return norm_bytes + tail;
}

// What the launch may use without opting in to more (the kernel's static part is under 1 KB).
constexpr size_t kGateSharedLimit = 47 * 1024;

}  // namespace

bool moe_gate_supported(const Mat& x, const Mat& router, const Mat& logits,
                        const MoeRoutingParams& p, const MoeGateNorm* norm,
                        const MoeGateIndex* index) {
  if (x.dtype != router.dtype || (x.dtype != DType::kF32 && x.dtype != DType::kBF16)) {
    return false;
  }
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(x.dtype));
  const bool shapes = x.rows >= 1 && x.rows <= kMoeGateMaxTokens && logits.dtype == DType::kF32 &&
                      router.rows >= 1 && router.rows <= 2048 && p.num_experts == router.rows &&
                      p.top_k >= 1 && p.top_k <= p.num_experts && p.num_groups >= 1 &&
                      logits.rows == x.rows && logits.cols == router.rows &&
                      router.cols == x.cols && x.cols % vec == 0 && x.stride % vec == 0 &&
                      router.stride % vec == 0 && aligned_to(x.data, 16) &&
                      aligned_to(router.data, 16) && x.cols <= 0x7fffffff;
  if (!shapes) return false;
  if (norm != nullptr) {
    // rmsnorm_vec_kernel's conditions, the rows in one piece each, nothing aliased.
    const Mat* rows[] = {&norm->residual, &norm->delta, &norm->out};
    for (const Mat* m : rows) {
      if (m->dtype != x.dtype || m->rows != x.rows || m->cols != x.cols || m->stride % vec != 0 ||
          !aligned_to(m->data, 16)) {
        return false;
      }
    }
    if (norm->out.data != x.data || norm->out.stride != x.stride ||
        x.cols / vec > int64_t{kThreads} * kNormChunks || norm->weight == nullptr ||
        overlapping(norm->residual, norm->delta) || overlapping(norm->residual, norm->out) ||
        overlapping(norm->delta, norm->out)) {
      return false;
    }
  }
  if (index != nullptr) {
    const int64_t pairs = x.rows * p.top_k;
    if (index->num_local < 1 || index->num_local > kMoeSmallMaxExperts ||
        pairs > kMoeSmallMaxPairs || index->expert_begin < 0 ||
        (index->shared_tokens != 0 && index->shared_tokens != x.rows) ||
        index->offsets == nullptr || index->pair_of_row == nullptr ||
        index->row_of_pair == nullptr || index->active == nullptr) {
      return false;
    }
  }
  return gate_shared_bytes(x, p, norm, index) <= kGateSharedLimit;
}

bool moe_gate_cluster_compiled() {
  // A binary built for sm_80 only runs that PTX on an sm_90 device: the kernel then has no
  // cluster code (it traps), although the device launches clusters.
  cudaFuncAttributes attributes{};
  DSHPC_CUDA_CHECK(
      cudaFuncGetAttributes(&attributes, moe_gate_cluster_kernel<__nv_bfloat16, 1, 2>));
  return attributes.ptxVersion >= 90;
}

bool launch_moe_gate(const Mat& x, const Mat& router, const Mat& logits, const float* bias,
                     const MoeRoutingParams& p, int32_t* expert_ids, float* weights,
                     unsigned int* done, cudaStream_t stream, const MoeGateNorm* norm,
                     const MoeGateIndex* index, bool cluster) {
  DSHPC_CHECK(moe_gate_supported(x, router, logits, p, norm, index))
      << "moe_gate: x [" << x.rows << ", " << x.cols << "], router [" << router.rows << ", "
      << router.cols << "], " << p.num_experts << " experts" << (norm ? ", with the norm" : "")
      << (index ? ", with the index" : "");
  const RouteArgs args = route_args(p, bias);
  const MoeGateIndex no_index{};
  if (cluster && norm == nullptr && p.num_experts <= kMoeGateClusterMaxExperts &&
      warp_routable(args)) {
    const int n = static_cast<int>(p.num_experts);
    const int warps = kThreads / 32;
    const unsigned ctas = static_cast<unsigned>(std::min(8, (n + warps - 1) / warps));
    const int tokens = static_cast<int>(x.rows);
    const int token_slots = tokens == 1 ? 1 : kMoeGateMaxTokens;
    const size_t pairs = static_cast<size_t>(tokens) * p.top_k;
    const size_t smem =
        sizeof(float) * (static_cast<size_t>(token_slots + warps) * n + 2 * pairs) +
        (index != nullptr
             ? sizeof(int32_t) * moe_index_shared_ints(static_cast<int>(index->num_local))
             : 0);
    DSHPC_CHECK_LE(smem, kGateSharedLimit) << "moe_gate_cluster: shared memory";
    dispatch_float(x.dtype, "moe_gate", [&](auto tag) {
      using T = decltype(tag);
      auto kernel =
          tokens == 1
              ? (n <= 64 ? moe_gate_cluster_kernel<T, 1, 2> : moe_gate_cluster_kernel<T, 1, 4>)
              : (n <= 64 ? moe_gate_cluster_kernel<T, kMoeGateMaxTokens, 2>
                         : moe_gate_cluster_kernel<T, kMoeGateMaxTokens, 4>);
      launch_pdl_cluster("moe_gate_cluster_kernel", kernel, ctas, ctas, kThreads, smem, stream,
                         static_cast<const T*>(x.data), x.stride, tokens,
                         static_cast<const T*>(router.data), router.stride,
                         static_cast<int>(x.cols), static_cast<float*>(logits.data), logits.stride,
                         bias, args, expert_ids, weights, index != nullptr ? *index : no_index);
      DSHPC_CUDA_LAUNCH_CHECK("moe_gate_cluster_kernel");
    });
    return true;
  }
  const unsigned int blocks =
      static_cast<unsigned int>((router.rows + kThreads / 32 - 1) / (kThreads / 32));
  const size_t smem = gate_shared_bytes(x, p, norm, index);
  const size_t norm_bytes = norm != nullptr ? smem - gate_shared_bytes(x, p, nullptr, index) : 0;
  dispatch_float(x.dtype, "moe_gate", [&](auto tag) {
    using T = decltype(tag);
    GateNormArgs<T> n;
    if (norm != nullptr) {
      n.residual = static_cast<T*>(norm->residual.data);
      n.residual_stride = norm->residual.stride;
      n.delta = static_cast<const T*>(norm->delta.data);
      n.delta_stride = norm->delta.stride;
      n.weight = static_cast<const T*>(norm->weight);
      n.out = static_cast<T*>(norm->out.data);
      n.out_stride = norm->out.stride;
      n.eps = norm->eps;
    }
    auto kernel = norm != nullptr ? moe_gate_kernel<T, true> : moe_gate_kernel<T, false>;
    launch_pdl("moe_gate_kernel", kernel, blocks, kThreads, smem, stream,
               static_cast<const T*>(x.data), x.stride, static_cast<int>(x.rows),
               static_cast<const T*>(router.data), router.stride, static_cast<int>(x.cols),
               static_cast<float*>(logits.data), logits.stride, bias, args, expert_ids, weights,
               done, n, norm_bytes, index != nullptr ? *index : no_index);
    DSHPC_CUDA_LAUNCH_CHECK("moe_gate_kernel");
  });
  return false;
}

}  // namespace dshpc::cuda
