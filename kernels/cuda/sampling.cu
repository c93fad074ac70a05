// Token selection on the GPU (CPU reference: kernels/sampling_cpu.cpp). One CTA per logits row.
//
// argmax: per row the largest value, ties to the lowest index, NaN never wins (an all-NaN row
// gives 0); (value, index) pairs reduced by warp shuffles, then across warps in shared memory.
//
// sample: the token sample_token_cpu draws for the row's SamplingRow, without the row leaving
// the device. Tokens are ranked by logit descending, ties to the lower index; on the GPU a
// token's rank is the pair (order_key(logit) descending, index ascending), where order_key maps
// a float to a uint32 that orders like the float (−0 and +0 share one key, as they compare equal).
// Every selection below is a search in that rank order:
//
// - top-k: the k-th ranked token by a count search (find_crossing<false>): the key range is cut
//   into 16 sub-ranges per pass, counted with register accumulators and block reductions, until
//   at most kSortCapacity tokens remain (gathered and sorted in shared memory) or one key remains
//   (a run of equal logits: the j-th lowest index among them is found by a scan in index order).
//   The candidates are then exactly "rank ≤ that token": the CPU's partial_sort prefix.
// - Few candidates (top-k with k ≤ kSortCapacity, or a vocabulary that small): they are gathered,
//   sorted, and thread 0 replays sample_token_cpu's arithmetic literally — weights
//   exp((double(l) − max) / T), the sequential double sum, p = w / sum, the top-p prefix with
//   mass ≥ top_p, the sums again over the survivors and the inverse CDF with u. Identical
//   operations in identical order, so the token is the CPU's unless CUDA's double exp and glibc's
//   differ in the last bit (both are within 1 ulp) exactly where it flips a comparison.
// - Many candidates (top-k off or k > kSortCapacity): the same search weighted by exp
//   ((l − max) / T) (find_crossing<true>) finds the first ranked token whose cumulative mass
//   reaches top_p · S (the top-p cut) or exceeds u · S' (the draw). The masses are sums in a
//   different order than the CPU's sequential sum over the sorted candidates, so the two agree
//   unless the CPU's normalised cumulative mass lies within a rounding distance (~1e-11
//   relative for 10^5 terms) of top_p or of u: a set of measure zero for continuous inputs,
//   which the GPU test excludes explicitly (near_cpu_boundary) and counts. When the top-p
//   survivors are few (≤ kSortCapacity) the draw among them again replays the CPU exactly.
//
// Degenerate rows follow the CPU: with a maximum of ±inf its probabilities are NaN and it returns
// the last candidate (rank keep − 1); −inf entries have weight 0. NaN logits are outside the
// contract of the sampled path (the CPU's sort is then undefined); the kernel still writes an id
// inside [0, vocab) for them.
#include <climits>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

// ---- greedy

constexpr int kArgmaxThreads = 1024;

struct Best {
  float value;
  int index;
};

// The better of two candidates under the CPU's rule.
__device__ __forceinline__ Best better(Best a, Best b) {
  const bool a_nan = isnan(a.value), b_nan = isnan(b.value);
  if (a_nan != b_nan) return a_nan ? b : a;
  if (!a_nan && a.value != b.value) return a.value > b.value ? a : b;
  return a.index < b.index ? a : b;
}

// argmax_rows_cpu's choice for row[0, vocab), computed by the whole block; every thread gets it.
// `scratch` holds 32 entries of shared memory.
template <typename T>
__device__ Best block_best(const T* row, int vocab, Best* scratch) {
  Best best{NAN, INT_MAX};  // loses to every element
  // `better` is associative and commutative, so any visiting order gives the CPU's choice. The
  // row is read in 16-byte vectors, kUnroll loads in flight per thread: one CTA must pull a whole
  // vocabulary's logits (400 KB for 102,400 floats), and scalar loads left it latency-bound.
  int tail = 0;
  if (reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    constexpr int kVec = 16 / static_cast<int>(sizeof(T));
    constexpr int kUnroll = 4;
    const int vecs = vocab / kVec;
    const uint4* v = reinterpret_cast<const uint4*>(row);
    for (int base = threadIdx.x; base < vecs; base += kUnroll * blockDim.x) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * static_cast<int>(blockDim.x);
        if (i < vecs) raw[u] = __ldg(v + i);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * static_cast<int>(blockDim.x);
        if (i >= vecs) break;
        const T* e = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
        for (int j = 0; j < kVec; ++j) best = better(best, Best{to_float(e[j]), i * kVec + j});
      }
    }
    tail = vecs * kVec;
  }
  for (int i = tail + threadIdx.x; i < vocab; i += blockDim.x) {
    best = better(best, Best{to_float(row[i]), i});
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    Best other;
    other.value = __shfl_xor_sync(0xffffffffu, best.value, offset);
    other.index = __shfl_xor_sync(0xffffffffu, best.index, offset);
    best = better(best, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // scratch may still be read by an earlier use
  if (lane == 0) scratch[warp] = best;
  __syncthreads();
  Best result = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) result = better(result, scratch[w]);
  return result;  // index INT_MAX: the row is empty or all NaN
}

template <typename T>
__device__ int block_argmax(const T* row, int vocab, Best* scratch) {
  const Best best = block_best(row, vocab, scratch);
  return best.index == INT_MAX ? 0 : best.index;
}

template <typename T>
__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_kernel(const T* logits, int64_t stride, int vocab, int32_t* ids) {
  pdl_begin();
  __shared__ Best scratch[32];
  const int index = block_argmax(logits + blockIdx.x * stride, vocab, scratch);
  if (threadIdx.x == 0) ids[blockIdx.x] = index;
}

// The argmax of a few rows over many CTAs: CTA (s, r) takes slice s of row r (kArgmaxSlice
// elements, so slices stay 16-byte aligned) and stores its best; the row's last CTA to finish
// (a per-row counter, reset by that CTA for the next launch or graph replay) reduces the
// slices' bests in slice order. `better` is associative and commutative, so the choice is
// argmax_kernel's.
constexpr int kArgmaxSliceThreads = 256;
constexpr int kArgmaxSlice = 4096;

template <typename T>
__global__ void __launch_bounds__(kArgmaxSliceThreads)
    argmax_sliced_kernel(const T* logits, int64_t stride, int vocab, int32_t* ids, Best* partial,
                         unsigned int* done) {
  pdl_begin();
  __shared__ Best scratch[32];
  __shared__ bool last;
  const int slice = blockIdx.x, row = blockIdx.y, slices = gridDim.x;
  const int begin = slice * kArgmaxSlice, len = min(kArgmaxSlice, vocab - begin);
  Best best = block_best(logits + row * stride + begin, len, scratch);
  if (best.index != INT_MAX) best.index += begin;
  if (threadIdx.x == 0) {
    partial[row * slices + slice] = best;
    __threadfence();  // the best before the count
    last = atomicAdd(done + row, 1u) == static_cast<unsigned int>(slices) - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (threadIdx.x < 32) {
    Best b{NAN, INT_MAX};
    for (int s = threadIdx.x; s < slices; s += 32) {
      const Best* p = partial + row * slices + s;
      b = better(b, Best{__ldcg(&p->value), __ldcg(&p->index)});  // L2: other CTAs wrote them
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      Best other;
      other.value = __shfl_xor_sync(0xffffffffu, b.value, offset);
      other.index = __shfl_xor_sync(0xffffffffu, b.index, offset);
      b = better(b, other);
    }
    if (threadIdx.x == 0) {
      ids[row] = b.index == INT_MAX ? 0 : b.index;
      done[row] = 0;
    }
  }
}

// ---- seeded sampling

constexpr int kSampleThreads = 512;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kSortCapacity = 1024;  // tokens sorted in shared memory at once
constexpr int kBinBits = 4;
constexpr int kBins = 1 << kBinBits;  // sub-ranges per search pass
constexpr int kMaxSearchPasses = 48;  // ≤ 11 splits of a 32-bit key range suffice

// A uint32 that orders like the float (NaN excluded); −0 and +0 get the key of +0.
__device__ __forceinline__ uint32_t order_key(float x) {
  if (x == 0.0f) x = 0.0f;
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// The tokens ranked at or before (key, index): a prefix of the rank order.
struct RankBound {
  uint32_t key;
  int index;
};
constexpr RankBound kEverything{0u, INT_MAX};

__device__ __forceinline__ bool within(RankBound bound, uint32_t key, int index) {
  return key > bound.key || (key == bound.key && index <= bound.index);
}

// A token as one sortable word: descending order of the word is rank order.
__device__ __forceinline__ uint64_t pack_item(uint32_t key, int index) {
  return (static_cast<uint64_t>(key) << 32) | (0xffffffffu - static_cast<uint32_t>(index));
}
__device__ __forceinline__ int item_index(uint64_t item) {
  return static_cast<int>(0xffffffffu - static_cast<uint32_t>(item));
}
__device__ __forceinline__ uint32_t item_key(uint64_t item) {
  return static_cast<uint32_t>(item >> 32);
}

// philox_uniform of kernels/sampling_cpu.cpp, bit for bit: Philox4x32-10 on counter
// (counter, 0) with key seed, the first two words' top 53 bits as a double in [0, 1).
__device__ double philox_uniform_device(uint64_t seed, uint64_t counter) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kMul0, c0), lo0 = kMul0 * c0;
    const uint32_t hi1 = __umulhi(kMul1, c2), lo1 = kMul1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  const uint64_t bits = ((static_cast<uint64_t>(c0) << 32) | c1) >> 11;  // 53 bits
  return static_cast<double>(bits) * 0x1.0p-53;
}

// Calls fn(i, row[i]) for the indices i ≡ threadIdx.x (mod blockDim.x) below vocab, loading
// kLoadsInFlight logits before using any: one CTA streams a whole row per pass, and one load in
// flight per thread would leave it waiting on memory latency.
template <typename Fn>
__device__ __forceinline__ void for_each_logit(const float* row, int vocab, Fn&& fn) {
  constexpr int kLoadsInFlight = 4;
  const int step = static_cast<int>(blockDim.x);
  int i = static_cast<int>(threadIdx.x);
  for (; i + (kLoadsInFlight - 1) * step < vocab; i += kLoadsInFlight * step) {
    float x[kLoadsInFlight];
#pragma unroll
    for (int k = 0; k < kLoadsInFlight; ++k) x[k] = row[i + k * step];
#pragma unroll
    for (int k = 0; k < kLoadsInFlight; ++k) fn(i + k * step, x[k]);
  }
  for (; i < vocab; i += step) fn(i, row[i]);
}

struct SampleShared {
  uint64_t items[kSortCapacity];  // gathered tokens, sorted into rank order
  double weight[kSortCapacity];   // their weights exp((l − max) / T)
  double prob[kSortCapacity];     // weight / sum
  double warp_mass[kSampleWarps][kBins];
  int warp_count[kSampleWarps][kBins];
  double bin_mass[kBins];
  int bin_count[kBins];
  uint32_t warp_keys[kSampleWarps][2];
  int warp_flags[kSampleWarps];
  double scalar;  // a value thread 0 computed, for every thread
  int count;      // gather cursor
  int pick;       // a position or index thread 0 (or one finder) chose
  Best best[32];
};

struct RowContext {
  const float* row;
  int vocab;
  double max_logit;    // the top-ranked logit, as the CPU's candidate_probs reads it
  double temperature;  // the float temperature, promoted as the CPU promotes it
  double inv_temperature;
};

// The CPU's weight, operation for operation (candidate_probs).
__device__ __forceinline__ double exact_weight(const RowContext& c, float logit) {
  return exp((static_cast<double>(logit) - c.max_logit) / c.temperature);
}
// The weight the mass search sums: a multiplication instead of the division (≤ 1 ulp of the
// exponent apart, far below the search's own summation-order differences).
__device__ __forceinline__ double search_weight(const RowContext& c, float logit) {
  return exp((static_cast<double>(logit) - c.max_logit) * c.inv_temperature);
}

// Gathers the tokens with key in [klo, khi] and within `bound` (at most kSortCapacity of them)
// into sh.items and sorts them into rank order (bitonic, descending words). Returns their count.
__device__ int gather_sorted(const RowContext& c, RankBound bound, uint32_t klo, uint32_t khi,
                             SampleShared& sh) {
  if (threadIdx.x == 0) sh.count = 0;
  __syncthreads();
  for_each_logit(c.row, c.vocab, [&](int i, float logit) {
    const uint32_t key = order_key(logit);
    if (key < klo || key > khi || !within(bound, key, i)) return;
    const int slot = atomicAdd(&sh.count, 1);
    if (slot < kSortCapacity) sh.items[slot] = pack_item(key, i);
  });
  __syncthreads();
  const int n = min(sh.count, kSortCapacity);
  int padded = 1;
  while (padded < n) padded <<= 1;
  for (int i = n + threadIdx.x; i < padded; i += blockDim.x) sh.items[i] = 0;  // sorts last
  __syncthreads();
  for (int size = 2; size <= padded; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < padded; i += blockDim.x) {
        const int partner = i ^ stride;
        if (partner <= i) continue;
        const uint64_t a = sh.items[i], b = sh.items[partner];
        const bool descending = (i & size) == 0;
        if (descending ? a < b : a > b) {
          sh.items[i] = b;
          sh.items[partner] = a;
        }
      }
      __syncthreads();
    }
  }
  return n;
}

// sample_token_cpu's arithmetic on the n sorted candidates in sh.items: the top-p prefix (when
// top_p < 1) and the inverse-CDF draw with u, sequential sums in rank order on thread 0, the
// independent divisions spread over the block. Returns the token.
__device__ int replay_cpu_draw(const RowContext& c, int n, bool apply_top_p, float top_p, double u,
                               SampleShared& sh) {
  if (n <= 0) return 0;  // unreachable for rows without NaN
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    sh.weight[i] = exact_weight(c, c.row[item_index(sh.items[i])]);
  }
  __syncthreads();
  if (apply_top_p) {
    if (threadIdx.x == 0) {
      double sum = 0.0;
      for (int i = 0; i < n; ++i) sum += sh.weight[i];
      sh.scalar = sum;
    }
    __syncthreads();
    const double sum = sh.scalar;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sh.prob[i] = sh.weight[i] / sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      double mass = 0.0;
      int kept = 0;
      while (kept < n) {
        mass += sh.prob[kept++];
        if (mass >= static_cast<double>(top_p)) break;
      }
      sh.pick = kept;
    }
    __syncthreads();
    n = sh.pick;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int i = 0; i < n; ++i) sum += sh.weight[i];
    sh.scalar = sum;
  }
  __syncthreads();
  const double sum = sh.scalar;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sh.prob[i] = sh.weight[i] / sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double cumulative = 0.0;
    int pick = n - 1;  // the last candidate takes any rounding remainder
    for (int i = 0; i + 1 < n; ++i) {
      cumulative += sh.prob[i];
      if (u < cumulative) {
        pick = i;
        break;
      }
    }
    sh.pick = item_index(sh.items[pick]);
  }
  __syncthreads();
  const int token = sh.pick;
  __syncthreads();
  return token;
}

// The j-th (1-based) lowest index among the tokens with key `key` within `bound`, by a scan of
// the row in index order (tiles of blockDim tokens, ballots per warp). 0 if there is none.
__device__ int select_tied_index(const RowContext& c, uint32_t key, RankBound bound, int j,
                                 SampleShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) sh.pick = 0;
  int seen = 0;
  for (int base = 0; base < c.vocab; base += blockDim.x) {
    const int i = base + static_cast<int>(threadIdx.x);
    const bool flag = i < c.vocab && order_key(c.row[i]) == key && within(bound, key, i);
    const uint32_t ballot = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) sh.warp_flags[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
      before += w < warp ? sh.warp_flags[w] : 0;
      total += sh.warp_flags[w];
    }
    const int rank = seen + before + __popc(ballot & ((1u << lane) - 1u)) + 1;
    if (flag && rank == j) sh.pick = i;
    seen += total;
    __syncthreads();
    if (seen >= j) break;  // block-uniform
  }
  const int index = sh.pick;
  __syncthreads();
  return index;
}

// The first token in rank order, among those within `bound` with key in [klo, khi] (in_count of
// them), whose cumulative weight — weight exp((l − max) / T) with kMass, 1 per token without —
// reaches the target: ≥ target when `inclusive`, > target otherwise. A `relative` target is a
// fraction of the total weight of those tokens. If no token reaches it (rounding), the last one.
struct Found {
  uint32_t key;
  int index;
  double mass_through;  // cumulative weight up to and including the token
  int count_through;    // its rank + 1 among the searched tokens
};

template <bool kMass>
__device__ Found find_crossing(const RowContext& c, RankBound bound, uint32_t klo, uint32_t khi,
                               int in_count, double target, bool relative, bool inclusive,
                               SampleShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double mass_above = 0.0;  // weight of the searched tokens with keys above khi
  int count_above = 0;
  bool take_last = false;  // nothing reaches the target: follow the last token
  auto crosses = [&](double mass) {
    return !take_last && (inclusive ? mass >= target : mass > target);
  };
  for (int pass = 0; pass < kMaxSearchPasses; ++pass) {
    if (in_count <= kSortCapacity) {
      // Few enough: sort them and walk in rank order.
      const int n = gather_sorted(c, bound, klo, khi, sh);
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        sh.weight[i] = kMass ? search_weight(c, c.row[item_index(sh.items[i])]) : 1.0;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        double goal = target;
        if (relative) {
          double total = mass_above;
          for (int i = 0; i < n; ++i) total += sh.weight[i];
          goal = target * total;
        }
        double mass = mass_above;
        int pick = n - 1;
        for (int i = 0; i < n; ++i) {
          mass += sh.weight[i];
          if (!take_last && (inclusive ? mass >= goal : mass > goal)) {
            pick = i;
            break;
          }
        }
        sh.pick = max(pick, 0);
        sh.scalar = mass;
      }
      __syncthreads();
      const uint64_t item = sh.items[sh.pick];
      const Found found{item_key(item), n > 0 ? item_index(item) : 0, sh.scalar,
                        count_above + sh.pick + 1};
      __syncthreads();
      return found;
    }
    if (klo == khi) {
      // More than kSortCapacity equal logits: equal weights, ranked by index.
      const double w = kMass ? search_weight(c, key_value(klo)) : 1.0;
      if (relative) {
        target *= mass_above + in_count * w;
        relative = false;
      }
      int j = in_count;
      if (!take_last && w > 0.0) {
        const double r = (target - mass_above) / w;
        double jd = inclusive ? ceil(r) : floor(r) + 1.0;
        jd = fmax(1.0, fmin(jd, static_cast<double>(in_count)));
        j = static_cast<int>(jd);
      }
      const int index = select_tied_index(c, klo, bound, j, sh);
      return Found{klo, index, mass_above + j * w, count_above + j};
    }

    // Cut [klo, khi] into kBins sub-ranges of 2^shift keys; count and weigh each.
    const uint32_t span = khi - klo;
    const int shift = max(0, 32 - __clz(span) - kBinBits);
    int count[kBins];
    double mass[kBins];
#pragma unroll
    for (int b = 0; b < kBins; ++b) {
      count[b] = 0;
      mass[b] = 0.0;
    }
    for_each_logit(c.row, c.vocab, [&](int i, float logit) {
      const uint32_t key = order_key(logit);
      if (key < klo || key > khi || !within(bound, key, i)) return;
      const uint32_t bin = (key - klo) >> shift;
      const double w = kMass ? search_weight(c, logit) : 0.0;
#pragma unroll
      for (int b = 0; b < kBins; ++b) {
        if (bin == static_cast<uint32_t>(b)) {
          ++count[b];
          if (kMass) mass[b] += w;
        }
      }
    });
#pragma unroll
    for (int b = 0; b < kBins; ++b) {
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        count[b] += __shfl_xor_sync(0xffffffffu, count[b], offset);
        if (kMass) mass[b] += __shfl_xor_sync(0xffffffffu, mass[b], offset);
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int b = 0; b < kBins; ++b) {
        sh.warp_count[warp][b] = count[b];
        sh.warp_mass[warp][b] = mass[b];
      }
    }
    __syncthreads();
    if (threadIdx.x < kBins) {
      int n = 0;
      double m = 0.0;
      for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
        n += sh.warp_count[w][threadIdx.x];
        m += sh.warp_mass[w][threadIdx.x];
      }
      sh.bin_count[threadIdx.x] = n;
      sh.bin_mass[threadIdx.x] = kMass ? m : static_cast<double>(n);
    }
    __syncthreads();

    // Every thread makes the same choice from the same shared totals.
    if (relative) {
      double total = mass_above;
      for (int b = kBins - 1; b >= 0; --b) total += sh.bin_mass[b];
      target *= total;
      relative = false;
    }
    double mass_so_far = mass_above;
    int count_so_far = count_above;
    int chosen = -1, lowest = -1;
    double chosen_mass = 0.0, lowest_mass = 0.0;
    int chosen_count = 0, lowest_count = 0;
    for (int b = kBins - 1; b >= 0; --b) {  // higher keys rank first
      const int n = sh.bin_count[b];
      if (n == 0) continue;
      if (crosses(mass_so_far + sh.bin_mass[b])) {
        chosen = b;
        chosen_mass = mass_so_far;
        chosen_count = count_so_far;
        break;
      }
      lowest = b;
      lowest_mass = mass_so_far;
      lowest_count = count_so_far;
      mass_so_far += sh.bin_mass[b];
      count_so_far += n;
    }
    if (chosen < 0) {
      if (lowest < 0) break;  // nothing in range: unreachable for rows without NaN
      chosen = lowest;
      chosen_mass = lowest_mass;
      chosen_count = lowest_count;
      take_last = true;
    }
    const uint64_t new_lo = static_cast<uint64_t>(klo) + (static_cast<uint64_t>(chosen) << shift);
    const uint64_t new_hi = new_lo + ((uint64_t{1} << shift) - 1);
    klo = static_cast<uint32_t>(new_lo);
    khi = new_hi < khi ? static_cast<uint32_t>(new_hi) : khi;
    in_count = sh.bin_count[chosen];
    mass_above = chosen_mass;
    count_above = chosen_count;
    __syncthreads();  // the totals are read; the next pass may overwrite them
  }
  return Found{klo, 0, mass_above, count_above};
}

__global__ void __launch_bounds__(kSampleThreads)
    sample_kernel(const float* logits, int64_t stride, int vocab, const SamplingRow* rows,
                  int32_t* ids) {
  pdl_begin();
  __shared__ SampleShared sh;
  const float* row = logits + blockIdx.x * stride;
  const SamplingRow params = rows[blockIdx.x];
  if (params.temperature <= 0.0f) {  // greedy, as sample_token_cpu
    const int index = block_argmax(row, vocab, sh.best);
    if (threadIdx.x == 0) ids[blockIdx.x] = index;
    return;
  }

  // The key range of the row.
  uint32_t key_max = 0u, key_min = 0xffffffffu;
  for_each_logit(row, vocab, [&](int, float logit) {
    const uint32_t key = order_key(logit);
    key_max = max(key_max, key);
    key_min = min(key_min, key);
  });
  key_max = __reduce_max_sync(0xffffffffu, key_max);
  key_min = __reduce_min_sync(0xffffffffu, key_min);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sh.warp_keys[warp][0] = key_max;
    sh.warp_keys[warp][1] = key_min;
  }
  __syncthreads();
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
    key_max = max(key_max, sh.warp_keys[w][0]);
    key_min = min(key_min, sh.warp_keys[w][1]);
  }
  __syncthreads();

  const float top = key_value(key_max);
  const double temperature = static_cast<double>(params.temperature);
  const RowContext c{row, vocab, static_cast<double>(top), temperature, 1.0 / temperature};
  const int keep =
      params.top_k > 0 && params.top_k < vocab ? static_cast<int>(params.top_k) : vocab;

  // top-k: the candidates are the tokens ranked at or before the keep-th.
  RankBound candidates = kEverything;
  uint32_t candidates_lo = key_min;
  Found kth{key_min, vocab - 1, 0.0, vocab};
  if (keep < vocab) {
    kth = find_crossing<false>(c, kEverything, key_min, key_max, vocab,
                               static_cast<double>(keep - 1), false, false, sh);
    candidates = RankBound{kth.key, kth.index};
    candidates_lo = kth.key;
  }

  int token = 0;
  if (isinf(top)) {
    // The CPU's probabilities are NaN (inf − inf): it returns its last candidate.
    token = keep < vocab ? kth.index
                         : find_crossing<false>(c, kEverything, key_min, key_max, vocab,
                                                static_cast<double>(vocab - 1), false, false, sh)
                               .index;
  } else {
    const double u = philox_uniform_device(params.seed, params.counter);
    const bool top_p_on = params.top_p < 1.0f;
    if (keep <= kSortCapacity) {
      const int n = gather_sorted(c, candidates, candidates_lo, key_max, sh);
      token = replay_cpu_draw(c, n, top_p_on, params.top_p, u, sh);
    } else {
      RankBound survivors = candidates;
      uint32_t survivors_lo = candidates_lo;
      int num_survivors = keep;
      double survivors_mass = 0.0;
      if (top_p_on) {
        // The shortest rank prefix whose mass reaches top_p of the candidates' mass.
        const Found cut = find_crossing<true>(c, candidates, candidates_lo, key_max, keep,
                                              static_cast<double>(params.top_p), true, true, sh);
        survivors = RankBound{cut.key, cut.index};
        survivors_lo = cut.key;
        num_survivors = cut.count_through;
        survivors_mass = cut.mass_through;
      }
      if (num_survivors <= kSortCapacity) {
        const int n = gather_sorted(c, survivors, survivors_lo, key_max, sh);
        token = replay_cpu_draw(c, n, false, 1.0f, u, sh);
      } else if (top_p_on) {
        token = find_crossing<true>(c, survivors, survivors_lo, key_max, num_survivors,
                                    u * survivors_mass, false, false, sh)
                    .index;
      } else {
        token = find_crossing<true>(c, survivors, survivors_lo, key_max, num_survivors, u, true,
                                    false, sh)
                    .index;
      }
    }
  }
  if (threadIdx.x == 0) ids[blockIdx.x] = token >= 0 && token < vocab ? token : 0;
}

}  // namespace

int64_t argmax_slices(const Mat& logits) {
  if (logits.rows > kArgmaxSlicedMaxRows || logits.cols <= kArgmaxSlice) return 0;
  const int64_t slices = (logits.cols + kArgmaxSlice - 1) / kArgmaxSlice;
  return slices <= kArgmaxMaxSlices ? slices : 0;
}

void launch_argmax(const Mat& logits, int32_t* ids, cudaStream_t stream, void* partial,
                   unsigned int* done) {
  if (logits.rows == 0) return;
  DSHPC_CHECK(logits.cols > 0 && logits.cols <= 0x7fffffff && logits.rows <= 0x7fffffff)
      << "argmax: " << logits.rows << " rows of " << logits.cols;
  dispatch_float(logits.dtype, "argmax", [&](auto tag) {
    using T = decltype(tag);
    const int64_t slices = argmax_slices(logits);
    if (slices > 0 && partial != nullptr && done != nullptr) {
      launch_pdl("argmax_sliced_kernel", argmax_sliced_kernel<T>,
                 dim3(static_cast<unsigned int>(slices), static_cast<unsigned int>(logits.rows)),
                 kArgmaxSliceThreads, 0, stream, static_cast<const T*>(logits.data), logits.stride,
                 static_cast<int>(logits.cols), ids, static_cast<Best*>(partial), done);
      DSHPC_CUDA_LAUNCH_CHECK("argmax_sliced_kernel");
      return;
    }
    launch_pdl("argmax_kernel", argmax_kernel<T>, static_cast<unsigned int>(logits.rows),
               kArgmaxThreads, 0, stream, static_cast<const T*>(logits.data), logits.stride,
               static_cast<int>(logits.cols), ids);
    DSHPC_CUDA_LAUNCH_CHECK("argmax_kernel");
  });
}

void launch_sample(const Mat& logits, const SamplingRow* rows, int32_t* ids, cudaStream_t stream) {
  if (logits.rows == 0) return;
  DSHPC_CHECK(logits.dtype == DType::kF32)
      << "sample: logits are float32, got " << dtype_name(logits.dtype);
  DSHPC_CHECK(logits.cols > 0 && logits.cols <= 0x7fffffff && logits.rows <= 0x7fffffff &&
              logits.stride >= logits.cols)
      << "sample: " << logits.rows << " rows of " << logits.cols << ", stride " << logits.stride;
  DSHPC_CHECK(rows != nullptr && ids != nullptr) << "sample: no parameters or output";
  launch_pdl("sample_kernel", sample_kernel, static_cast<unsigned int>(logits.rows), kSampleThreads,
             0, stream, static_cast<const float*>(logits.data), logits.stride,
             static_cast<int>(logits.cols), rows, ids);
  DSHPC_CUDA_LAUNCH_CHECK("sample_kernel");
}

}  // namespace dshpc::cuda
