// The routed experts' index of a small (decode) step, built by one CTA from the expert ids
// (launch_moe_index in launchers.h says what each output holds): moe_index_kernel runs it alone,
// moe_gate_kernel in the CTA that routes, right after the routing.
#pragma once

#include <cstdint>

namespace dshpc::cuda {

// Shared memory build_moe_index needs, in int32s.
__host__ __device__ inline int moe_index_shared_ints(int num_local) {
  return 2 * num_local + 1;
}

// Every thread of the CTA must call it (any block size); `shared`: moe_index_shared_ints ints.
// ids are read with plain loads, so the CTA may have written them itself before a barrier.
__device__ inline void build_moe_index(const int32_t* ids, int pairs, int expert_begin,
                                       int num_local, int shared_tokens, int32_t* offsets,
                                       int32_t* pair_of_row, int32_t* row_of_pair, int32_t* active,
                                       int32_t* shared) {
  // shared: counts[num_local], then base[num_local + 1]
  int32_t* counts = shared;
  int32_t* base = shared + num_local;
  for (int e = threadIdx.x; e < num_local; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int e = ids[p] - expert_begin;
    if (e >= 0 && e < num_local) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  if (threadIdx.x < 32) {  // warp 0 scans the counts, 32 experts a step
    const int lane = threadIdx.x;
    int32_t running = 0;  // rows of the experts before this step's
    int used = 0;         // experts with rows so far
    for (int e0 = 0; e0 < num_local; e0 += 32) {
      const int e = e0 + lane;
      const int32_t count = e < num_local ? counts[e] : 0;
      int32_t inclusive = count;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const int32_t v = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += v;
      }
      if (e < num_local) {
        base[e] = running + inclusive - count;
        offsets[e] = running + inclusive - count;
      }
      // The experts with rows, in order: the product kernels' grid rows, so that a decode
      // step's few experts do not launch a CTA column for every local expert.
      const unsigned with_rows = __ballot_sync(0xffffffffu, count > 0);
      if (count > 0) active[used + __popc(with_rows & ((1u << lane) - 1))] = e;
      used += __popc(with_rows);
      running += __shfl_sync(0xffffffffu, inclusive, 31);
    }
    // Then −1 up to min(pairs, num_local) slots.
    for (int i = used + lane; i < min(pairs, num_local); i += 32) active[i] = -1;
    if (lane == 0) {
      base[num_local] = running;
      offsets[num_local] = running;
      if (shared_tokens > 0) {  // the shared experts: one more expert, every token once
        offsets[num_local + 1] = running + shared_tokens;
        active[min(pairs, num_local)] = num_local;
      }
    }
  }
  __syncthreads();
  if (shared_tokens > 0) {  // its rows follow the routed ones; row → pair t · top_k (token t)
    const int top_k = pairs / shared_tokens;
    for (int t = threadIdx.x; t < shared_tokens; t += blockDim.x) {
      pair_of_row[base[num_local] + t] = t * top_k;
    }
  }
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int32_t id = ids[p];
    const int e = id - expert_begin;
    if (e < 0 || e >= num_local) {
      row_of_pair[p] = -1;
      continue;
    }
    int rank = 0;
    for (int q = 0; q < p; ++q) rank += ids[q] == id;
    const int32_t row = base[e] + rank;
    row_of_pair[p] = row;
    pair_of_row[row] = p;
  }
  __syncthreads();  // shared may be reused by the caller
}

}  // namespace dshpc::cuda
