// Host launchers of the CUDA kernels, one operation per .cu file beside its CPU reference
// (embedding.cu ↔ embedding_cpu.cpp, …). A launcher takes device pointers, sizes and the stream,
// checks what the grid depends on, launches on that stream and checks the launch; the backend
// (cuda_backend.cu) has already checked shapes against the Backend contract. Element types are
// chosen at run time (float32 or bf16 storage; arithmetic in float32).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace dshpc::cuda {

// embedding.cu: out[t] = table[ids[t] − vocab_begin] or zeros outside the slice.
void launch_embedding(const Mat& table, int64_t vocab_begin, const int32_t* ids, const Mat& out,
                      cudaStream_t stream);

// rmsnorm.cu: out = rmsnorm(x) · weight; out may alias x.
void launch_rmsnorm(const Mat& x, const void* weight, DType weight_dtype, float eps, const Mat& out,
                    cudaStream_t stream);
// residual += delta (rounded to the residual's type), out = rmsnorm(residual) · weight.
void launch_add_rmsnorm(const Mat& residual, const Mat& delta, const void* weight,
                        DType weight_dtype, float eps, const Mat& out, cudaStream_t stream);

// elementwise.cu: strided 2-D copy with type conversion, and a += b.
void launch_copy(const Mat& src, const Mat& dst, cudaStream_t stream);
void launch_add(const Mat& a, const Mat& b, cudaStream_t stream);

// rope.cu: rotates dims [0, rot_dim) of `heads` heads of every row in place.
void launch_rope(const Mat& x, int64_t heads, int64_t head_stride, int64_t rot_dim,
                 const int32_t* positions, const RopeTables& tables, RopeStyle style,
                 cudaStream_t stream);

// swiglu.cu: out = silu(gate_up[:, :inter]) · gate_up[:, inter:].
void launch_swiglu(const Mat& gate_up, const Mat& out, cudaStream_t stream);

// kv_cache_write.cu: row t of k (and v) to cache slot slots[t]; negative slots are skipped.
void launch_kv_cache_write(const Mat& k, const Mat* v, const int64_t* slots,
                           const PagedKvView& cache, DType cache_dtype, cudaStream_t stream);

// attention.cu: paged attention for any mix of prefill, chunked prefill and decode.
// A CTA computes `rows` = heads_per_cta × tokens_per_cta query rows of one kv head: the query
// heads of a group (decode, GQA, MLA) and/or consecutive tokens of one sequence (prefill), so
// that every key row read from the cache serves all of them.
struct AttentionShape {
  int heads_per_cta = 1;
  int tokens_per_cta = 1;
  int head_chunks = 1;  // CTAs per kv head along the group
};
AttentionShape attention_shape(int64_t q_heads, int64_t kv_heads, int64_t v_dim);
// One CTA's queries: rows [first, first + tokens_per_cta) of sequence `sequence` (clipped).
struct AttentionTile {
  int32_t sequence = 0;
  int32_t first = 0;
};
std::vector<AttentionTile> attention_tiles(const std::vector<PagedSequence>& sequences,
                                           int tokens_per_cta);
void launch_paged_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                            const AttentionTile* tiles, int64_t num_tiles, int64_t q_heads,
                            const PagedKvView& cache, DType cache_dtype, float scale,
                            const AttentionShape& shape, cudaStream_t stream);

// moe_routing.cu: expert ids and weights per token (semantics of kernels/moe_routing.h).
void launch_moe_route(const Mat& logits, const float* bias, const MoeRoutingParams& params,
                      int32_t* expert_ids, float* weights, cudaStream_t stream);

// moe_experts.cu: the permutation kernels around the per-expert matrix products.
// out[i] = x[token_of_row[i]] for i < out.rows.
void launch_gather_rows(const Mat& x, const int32_t* token_of_row, const Mat& out,
                        cudaStream_t stream);
// out[t] += Σ_j weights[t, j] · expert_out[row_of_pair[t, j]] over pairs with a row (≥ 0).
void launch_moe_combine(const Mat& expert_out, const int32_t* row_of_pair, const float* weights,
                        int64_t top_k, const Mat& out, cudaStream_t stream);

// sampling.cu: ids[r] = argmax of row r (ties to the lowest index, NaN never wins).
void launch_argmax(const Mat& logits, int32_t* ids, cudaStream_t stream);
// ids[r] = the token sample_token_cpu draws from float32 row r with rows[r] (device memory).
void launch_sample(const Mat& logits, const SamplingRow* rows, int32_t* ids, cudaStream_t stream);

// matmul.cu: y = x · wᵀ (w [n, k]) or x · w (w [k, n]), y += … with accumulate; cuBLAS with
// float32 accumulation. x and w share a type; y is that type or float32.
void gemm(cublasHandle_t handle, const Mat& x, const Mat& w, const Mat& y, bool w_transposed,
          bool accumulate);

}  // namespace dshpc::cuda
