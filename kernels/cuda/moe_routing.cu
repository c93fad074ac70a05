// Mixture-of-experts routing (CPU reference: kernels/moe_routing_cpu.cpp; semantics in
// kernels/moe_routing.h). One CTA per token, the token's scores in shared memory:
//   1. scores = softmax (max-subtracted, sum in double as the CPU) or sigmoid of the logits;
//   2. choice = scores (+ e_score_correction_bias for noaux_tc);
//   3. group-limited methods: group score = max (V2) or sum of the top two (V3); the top
//      topk_groups groups are kept, every expert of a dropped group gets −inf;
//   4. the top_k experts by choice, found by rank (the number of experts that beat it: larger
//      value, or equal value and lower index), which reproduces the CPU's order exactly;
//   5. weights = unbiased scores of the chosen, normalised and scaled by the CPU's rule.
#include <cfloat>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"

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

template <typename T>
__global__ void __launch_bounds__(kThreads)
    moe_route_kernel(const T* logits, int64_t stride, const float* bias, RouteArgs a,
                     int32_t* expert_ids, float* weights) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t t = blockIdx.x;
  route_token(logits + t * stride, bias, a, smem, expert_ids + t * a.top_k,
              weights + t * a.top_k);
}

// The router and the routing of a few tokens in one launch: warp e of the grid computes expert
// e's logit for every token (float32 accumulation, stored in float32 as the matmul would), then
// the CTA that finishes last (a counter in device memory, reset by that CTA for the next launch
// or graph replay) routes each token from the logits, read back through L2.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    moe_gate_kernel(const T* x, int64_t x_stride, int tokens, const T* router,
                    int64_t router_stride, int hidden, float* logits, int64_t logits_stride,
                    const float* bias, RouteArgs a, int32_t* expert_ids, float* weights,
                    unsigned int* done) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kVec = 16 / sizeof(T);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int e = blockIdx.x * (kThreads / 32) + warp;
  if (e < a.num_experts) {
    const uint4* w = reinterpret_cast<const uint4*>(router + static_cast<int64_t>(e) * router_stride);
    float acc[kMoeGateMaxTokens] = {};
#pragma unroll 8
    for (int c = lane; c < hidden / kVec; c += 32) {  // unrolled: eight loads in flight per lane
      union {
        uint4 raw;
        T v[kVec];
      } wc, xc;
      wc.raw = __ldg(w + c);
#pragma unroll
      for (int t = 0; t < kMoeGateMaxTokens; ++t) {
        if (t >= tokens) break;
        xc.raw = __ldg(reinterpret_cast<const uint4*>(x + t * x_stride) + c);
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[t] = fmaf(to_float(wc.v[j]), to_float(xc.v[j]), acc[t]);
      }
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
  float* row = reinterpret_cast<float*>(smem + route_shared_bytes(a));
  for (int t = 0; t < tokens; ++t) {
    for (int i = threadIdx.x; i < a.num_experts; i += blockDim.x) {
      row[i] = __ldcg(logits + t * logits_stride + i);  // L2: written by other CTAs
    }
    __syncthreads();
    route_token(row, bias, a, smem, expert_ids + t * a.top_k, weights + t * a.top_k);
  }
  if (threadIdx.x == 0) *done = 0;
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
    moe_route_kernel<T>
        <<<static_cast<unsigned int>(logits.rows), kThreads, route_shared_bytes(args), stream>>>(
            static_cast<const T*>(logits.data), logits.stride, bias, args, expert_ids, weights);
    DSHPC_CUDA_LAUNCH_CHECK("moe_route_kernel");
  });
}

bool moe_gate_supported(const Mat& x, const Mat& router, const Mat& logits) {
  if (x.dtype != router.dtype || (x.dtype != DType::kF32 && x.dtype != DType::kBF16)) {
    return false;
  }
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(x.dtype));
  // Up to 2048 experts: the routing's shared memory (12 bytes an expert) stays under 48 KB.
  return x.rows >= 1 && x.rows <= kMoeGateMaxTokens && logits.dtype == DType::kF32 &&
         router.rows >= 1 && router.rows <= 2048 &&
         logits.rows == x.rows && logits.cols == router.rows && router.cols == x.cols &&
         x.cols % vec == 0 && x.stride % vec == 0 && router.stride % vec == 0 &&
         aligned_to(x.data, 16) && aligned_to(router.data, 16) && x.cols <= 0x7fffffff;
}

void launch_moe_gate(const Mat& x, const Mat& router, const Mat& logits, const float* bias,
                     const MoeRoutingParams& p, int32_t* expert_ids, float* weights,
                     unsigned int* done, cudaStream_t stream) {
  DSHPC_CHECK(moe_gate_supported(x, router, logits))
      << "moe_gate: x [" << x.rows << ", " << x.cols << "], router [" << router.rows << ", "
      << router.cols << "]";
  const RouteArgs args = route_args(p, bias);
  const unsigned int blocks = static_cast<unsigned int>((router.rows + kThreads / 32 - 1) /
                                                        (kThreads / 32));
  const size_t smem = route_shared_bytes(args) + sizeof(float) * args.num_experts;
  dispatch_float(x.dtype, "moe_gate", [&](auto tag) {
    using T = decltype(tag);
    moe_gate_kernel<T><<<blocks, kThreads, smem, stream>>>(
        static_cast<const T*>(x.data), x.stride, static_cast<int>(x.rows),
        static_cast<const T*>(router.data), router.stride, static_cast<int>(x.cols),
        static_cast<float*>(logits.data), logits.stride, bias, args, expert_ids, weights, done);
    DSHPC_CUDA_LAUNCH_CHECK("moe_gate_kernel");
  });
}

}  // namespace dshpc::cuda
