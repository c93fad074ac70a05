// Weights into the L2 cache ahead of the op that reads them (Backend::prefetch_weights).
//
// Why: a decode step of an MoE model alternates ops bound by latency (the attention side, the
// router: small kernels that leave HBM mostly idle) with ops bound by bandwidth (the experts'
// weights). Weights known before the latency-bound stretch (the shared experts', which every
// token uses) can move into L2 during it, and the expert products then read them from there.
// One thread per 128-byte line: `prefetch.global.L2` is a hint with no result to wait for, so the
// kernel ends once its prefetches are issued. With evict_last the lines are kept over the
// streaming (evict-first) loads of the routed experts' weights.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kLine = 128;

struct PrefetchArgs {
  const char* data[kMaxPrefetchRanges];
  int64_t first_line[kMaxPrefetchRanges + 1];  // prefix sums of the ranges' line counts
  int count;
  int evict_last;
};

__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(PrefetchArgs a) {
  // After the wait, so that the prefetches start once the kernel before has finished (the
  // projections that read the layer's first weights), not during it.
  pdl_begin();
  const int64_t lines = a.first_line[a.count];
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < lines;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    int r = 0;
    while (i >= a.first_line[r + 1]) ++r;
    const char* p = a.data[r] + (i - a.first_line[r]) * kLine;
    if (a.evict_last) {
      asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p));
    } else {
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
    }
  }
}

}  // namespace

int64_t launch_l2_prefetch(const WeightRange* ranges, int count, int64_t max_bytes,
                           bool evict_last, int num_sms, cudaStream_t stream) {
  DSHPC_CHECK(count >= 0 && count <= kMaxPrefetchRanges && max_bytes >= 0 && num_sms > 0)
      << "l2_prefetch: " << count << " ranges, " << max_bytes << " bytes";
  PrefetchArgs args{};
  int64_t bytes = 0;
  for (int i = 0; i < count && bytes < max_bytes; ++i) {
    if (ranges[i].data == nullptr || ranges[i].bytes == 0) continue;
    // Whole lines, the range's first byte's line first; a range cut at the cap keeps its front
    // (read first).
    const auto begin = reinterpret_cast<uintptr_t>(ranges[i].data);
    const uintptr_t first = begin / kLine * kLine;
    const int64_t span = static_cast<int64_t>(begin + ranges[i].bytes - first);
    const int64_t take = std::min(span, max_bytes - bytes);
    args.data[args.count] = reinterpret_cast<const char*>(first);
    args.first_line[args.count + 1] = args.first_line[args.count] + (take + kLine - 1) / kLine;
    ++args.count;
    bytes += take;
  }
  if (args.count == 0) return 0;
  args.evict_last = evict_last ? 1 : 0;
  const int64_t lines = args.first_line[args.count];
  const int64_t ctas = std::min<int64_t>(num_sms, (lines + kThreads - 1) / kThreads);
  launch_pdl("l2_prefetch_kernel", l2_prefetch_kernel, static_cast<unsigned>(ctas), kThreads, 0,
             stream, args);
  DSHPC_CUDA_LAUNCH_CHECK("l2_prefetch_kernel");
  return bytes;
}

}  // namespace dshpc::cuda
