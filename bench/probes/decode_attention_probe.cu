// How fast does the split-key decode attention read the paged KV cache, and which of its forms
// reads it fastest? Times cuda::launch_decode_attention (bf16, head_dim 128) on a batch of
// sequences of one context length, blocks handed out round-robin across the sequences as the
// scheduler hands them out during decode, and prints µs per launch and the KV bytes read per
// second for the plan's choice and for each unroll (key groups a warp in flight) and key split.
//   dshpc_decode_attention_probe [seqs] [heads] [kv_heads] [context]   (default 64 32 32 192)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launchers.h"

using dshpc::DType;
using dshpc::Mat;
using dshpc::PagedKvView;
using dshpc::PagedSequence;

__global__ void fill(__nv_bfloat16* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    p[i] = __float2bfloat16((static_cast<int>(h & 0xffff) - 32768) / 32768.0f);
  }
}

int main(int argc, char** argv) {
  const int seqs = argc > 1 ? std::atoi(argv[1]) : 64;
  const int heads = argc > 2 ? std::atoi(argv[2]) : 32;
  const int kv_heads = argc > 3 ? std::atoi(argv[3]) : 32;
  const int context = argc > 4 ? std::atoi(argv[4]) : 192;
  constexpr int kDim = 128, kBlock = 16;
  const int blocks_per_seq = (context + kBlock - 1) / kBlock;
  const int64_t blocks = int64_t{seqs} * blocks_per_seq;
  const int64_t token_stride = int64_t{kv_heads} * kDim;
  const size_t cache_elems = static_cast<size_t>(blocks) * kBlock * token_stride;
  __nv_bfloat16 *k, *v, *q, *out;
  DSHPC_CUDA_CHECK(cudaMalloc(&k, cache_elems * 2));
  DSHPC_CUDA_CHECK(cudaMalloc(&v, cache_elems * 2));
  DSHPC_CUDA_CHECK(cudaMalloc(&q, size_t{2} * seqs * heads * kDim));
  DSHPC_CUDA_CHECK(cudaMalloc(&out, size_t{2} * seqs * heads * kDim));
  fill<<<1024, 256>>>(k, cache_elems, 1);
  fill<<<1024, 256>>>(v, cache_elems, 2);
  fill<<<64, 256>>>(q, size_t{1} * seqs * heads * kDim, 3);
  // Block j of sequence s is block j · seqs + s (decode hands the next block of every sequence
  // out in turn); the first eight blocks of each are consecutive (the prompt's, allocated at once).
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  int64_t next = 0;
  const int prompt_blocks = blocks_per_seq < 8 ? blocks_per_seq : 8;
  for (int s = 0; s < seqs; ++s) {
    for (int j = 0; j < prompt_blocks; ++j) table[size_t{1} * s * blocks_per_seq + j] = next++;
  }
  for (int j = prompt_blocks; j < blocks_per_seq; ++j) {
    for (int s = 0; s < seqs; ++s) table[size_t{1} * s * blocks_per_seq + j] = next++;
  }
  int32_t* d_table;
  DSHPC_CUDA_CHECK(cudaMalloc(&d_table, table.size() * 4));
  DSHPC_CUDA_CHECK(cudaMemcpy(d_table, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  std::vector<PagedSequence> host(seqs);
  for (int s = 0; s < seqs; ++s) host[s] = {s, 1, context, d_table + int64_t{s} * blocks_per_seq};
  PagedSequence* d_seqs;
  DSHPC_CUDA_CHECK(cudaMalloc(&d_seqs, seqs * sizeof(PagedSequence)));
  DSHPC_CUDA_CHECK(
      cudaMemcpy(d_seqs, host.data(), seqs * sizeof(PagedSequence), cudaMemcpyHostToDevice));
  float* partial;
  DSHPC_CUDA_CHECK(cudaMalloc(&partial, size_t{4} * seqs * heads * 64 * (kDim + 2)));
  // A buffer larger than L2, written between launches, so that no launch finds the cache in L2
  // from the one before (the model reads 30 layers' caches and weights between two of a layer).
  const size_t flush_bytes = size_t{256} << 20;
  void* flush;
  DSHPC_CUDA_CHECK(cudaMalloc(&flush, flush_bytes));

  PagedKvView cache;
  cache.k = reinterpret_cast<float*>(k);
  cache.v = reinterpret_cast<float*>(v);
  cache.block_size = kBlock;
  cache.k_token_stride = cache.v_token_stride = token_stride;
  cache.kv_heads = kv_heads;
  cache.head_dim = cache.v_dim = kDim;
  const Mat qm = Mat::of(q, DType::kBF16, seqs, int64_t{heads} * kDim);
  const Mat om = Mat::of(out, DType::kBF16, seqs, int64_t{heads} * kDim);
  int sms = 0;
  DSHPC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const double bytes = 2.0 * seqs * kv_heads * double(context) * kDim * 2;
  cudaStream_t stream;
  DSHPC_CUDA_CHECK(cudaStreamCreate(&stream));
  cudaEvent_t a, b;
  DSHPC_CUDA_CHECK(cudaEventCreate(&a));
  DSHPC_CUDA_CHECK(cudaEventCreate(&b));
  const dshpc::cuda::DecodeAttentionPlan base =
      dshpc::cuda::decode_attention_plan(seqs, heads, kv_heads, kDim, DType::kBF16, context, sms);
  std::printf(
      "seqs %d heads %d kv_heads %d context %d: %.1f MB of K and V; plan: splits %d, "
      "unroll %d\n",
      seqs, heads, kv_heads, context, bytes / 1e6, base.splits, base.unroll);
  // Mean and best µs of one launch of `plan`, each after the flush.
  auto time = [&](const dshpc::cuda::DecodeAttentionPlan& plan, const char* label) {
    float total = 0.0f, best = 1e30f;
    constexpr int kReps = 30;
    for (int rep = 0; rep < kReps + 3; ++rep) {
      DSHPC_CUDA_CHECK(cudaMemsetAsync(flush, rep & 0xff, flush_bytes, stream));
      DSHPC_CUDA_CHECK(cudaEventRecord(a, stream));
      dshpc::cuda::launch_decode_attention(qm, om, d_seqs, seqs, heads, cache, DType::kBF16, 0.088f,
                                           plan, partial, stream);
      DSHPC_CUDA_CHECK(cudaEventRecord(b, stream));
      DSHPC_CUDA_CHECK(cudaEventSynchronize(b));
      float ms = 0.0f;
      DSHPC_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      if (rep >= 3) {
        total += ms;
        best = ms < best ? ms : best;
      }
    }
    const double mean_us = 1e3 * total / kReps;
    std::printf(
        "%-6s unroll %d splits %2d: mean %7.2f us (%6.0f GB/s)  best %7.2f us (%6.0f GB/s)\n",
        label, plan.unroll, plan.splits, mean_us, bytes / mean_us / 1e3, 1e3 * best,
        bytes / (1e3 * best) / 1e3);
  };
  time(base, "plan");
  for (int unroll : {2, 4}) {
    for (int splits = 1; splits <= 16; splits *= 2) {
      dshpc::cuda::DecodeAttentionPlan plan = base;
      plan.unroll = unroll;
      plan.splits = splits;
      time(plan, "");
    }
  }
  return 0;
}
