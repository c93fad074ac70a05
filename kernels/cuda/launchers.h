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

// attention_decode.cu: decode steps (one new token per sequence), split along the keys
// (flash-decoding) so that a batch of one still fills the GPU; head_dim = v_dim ∈ {32, 64, 128,
// 256}, separate K and V caches (not the MLA latent cache, which attention.cu handles).
struct DecodeAttentionPlan {
  int heads_per_cta = 1;  // query heads of a group per CTA (power of two ≤ 8)
  int head_chunks = 1;    // CTAs per kv head along the group
  int splits = 1;         // key ranges per (sequence, head); > 1 needs the partial workspace
  // 16-byte loads: where a head row is narrower than a warp's 512 bytes (bf16 head_dim ≤ 128),
  // each warp takes several keys at once, 16 bytes of a row per lane (up to 2 bf16 heads per CTA;
  // more keep one key per warp). false: one key per warp always (for comparison).
  bool wide_keys = true;
  // Key groups a warp of the wide form has in flight per iteration: 4, or 2 (fewer registers,
  // more CTAs an SM) for grids larger than a wave (one head a CTA; see decode_attention_plan).
  int unroll = 4;
};
bool decode_attention_supported(const PagedKvView& cache, DType dtype);
// The most key splits a step whose longest context is max_context may use: a power of two ≤ 64
// with at least min_keys keys per split (kDecodeMinSplitKeys for the kernel above,
// kMlaMinSplitKeys for MLA's); a plan depends on the context only through it.
inline constexpr int64_t kDecodeMinSplitKeys = 32;
inline constexpr int64_t kMlaMinSplitKeys = 8;
int decode_split_cap(int64_t max_context, int64_t min_keys);
// The plan of a decode step: heads per CTA, key splits and the wide form's unroll, from the
// step's shape (the form the launch takes for head_dim in dtype with wide_keys).
DecodeAttentionPlan decode_attention_plan(int64_t num_seqs, int64_t q_heads, int64_t kv_heads,
                                          int64_t head_dim, DType dtype, int64_t max_context,
                                          int num_sms, bool wide_keys = true);
// Workspace floats for a plan with splits > 1: num_seqs · q_heads · splits · (v_dim + 2).
// Returns whether the wide form (DecodeAttentionPlan::wide_keys) ran.
bool launch_decode_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                             int64_t num_seqs, int64_t q_heads, const PagedKvView& cache,
                             DType dtype, float scale, const DecodeAttentionPlan& plan,
                             float* partial, cudaStream_t stream);

// MLA decode steps (attention_decode.cu): the latent cache (kv_heads 1, v = the first v_dim dims
// of each k entry) with latent 512 + rope 64 (DeepSeek-V2/V3) or 64 + 16 (the tiny fixtures), the
// absorbed query [tokens, q_heads, head_dim] and output [tokens, q_heads, v_dim]; split along the
// keys as above (heads_per_cta 4; workspace q_heads · splits · (v_dim + 2) floats per sequence).
bool mla_decode_attention_supported(const Mat& q, const Mat& out, const PagedKvView& cache,
                                    DType dtype);
DecodeAttentionPlan mla_decode_attention_plan(int64_t num_seqs, int64_t q_heads,
                                              int64_t max_context, int num_sms);
// MLA's value projection in the launch after the attention (Backend::mla_attention): values[t,
// h] = W_UV_h · out[t, h], the split combine included; out is then written only with one split.
// W_UV_h's row v is at w_uv + h · head_stride + v · row_stride (elements of the cache's type).
struct MlaValueProjection {
  const void* w_uv = nullptr;
  int64_t row_stride = 0;
  int64_t head_stride = 0;
  int64_t v_dim = 0;
  void* values = nullptr;  // [tokens, q_heads · v_dim], rows values_stride apart
  int64_t values_stride = 0;
};
inline constexpr int64_t kMlaValuesMaxSequences = 16;
bool mla_values_supported(const MlaValueProjection& proj, const PagedKvView& cache, DType dtype,
                          int64_t num_seqs);
void launch_mla_decode_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                                 int64_t num_seqs, int64_t q_heads, const PagedKvView& cache,
                                 DType dtype, float scale, const DecodeAttentionPlan& plan,
                                 float* partial, cudaStream_t stream,
                                 const MlaValueProjection* values = nullptr);

// mla_prepare.cu: Backend::mla_prepare in one launch for steps of up to kMlaPrepareMaxTokens
// tokens (float32 or bf16; latent width a multiple of 64).
inline constexpr int64_t kMlaPrepareMaxTokens = 16;
bool mla_prepare_supported(const MlaPrepareArgs& args, DType dtype);
void launch_mla_prepare(const MlaPrepareArgs& args, DType dtype, cudaStream_t stream);

// attention_prefill.cu: prefill and mixed steps on the tensor cores (FlashAttention-2 schedule,
// mma.sync), bf16, head_dim = v_dim ∈ {64, 128}, separate K and V caches; a CTA takes
// prefill_attention_rows_per_cta() query rows of one sequence (attention_tiles) and one head.
int prefill_attention_rows_per_cta();
bool prefill_attention_supported(const Mat& q, const PagedKvView& cache, DType dtype);
void launch_prefill_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                              const AttentionTile* tiles, int64_t num_tiles, int64_t q_heads,
                              const PagedKvView& cache, float scale, cudaStream_t stream);

// attention_mla_prefill.cu: MLA's absorbed attention (one cache entry of latent + rope values per
// token, the value its latent part; 512 + 64 or the tiny fixtures' 64 + 16) for any step, bf16,
// on the tensor cores. A CTA takes mla_prefill_tokens_per_cta(q_heads) tokens of one sequence
// (attention_tiles) and up to 64 of their heads; q [tokens, q_heads, head_dim] and out
// [tokens, q_heads, v_dim] contiguous.
int mla_prefill_tokens_per_cta(int64_t q_heads);
bool mla_prefill_attention_supported(const Mat& q, const Mat& out, int64_t q_heads,
                                     const PagedKvView& cache, DType dtype);
// split: each score computed once, shared between the two warps of a row group.
void launch_mla_prefill_attention(const Mat& q, const Mat& out, const PagedSequence* sequences,
                                  const AttentionTile* tiles, int64_t num_tiles, int64_t q_heads,
                                  const PagedKvView& cache, float scale, bool split,
                                  cudaStream_t stream);

// gemv.cu: y = x · wᵀ for a few rows of x (decode), bf16 inputs, float32 accumulation, y bf16 or
// float32; reads each weight once with 16-byte loads. gemv_supported says whether the shapes
// and alignment allow it (else use gemm).
constexpr int64_t kGemvMaxRows = 8;
bool gemv_supported(const Mat& x, const Mat& w, const Mat& y, bool w_transposed);
void launch_gemv(const Mat& x, const Mat& w, const Mat& y, bool accumulate, cudaStream_t stream);
// y1 = x · w1ᵀ and y2 = x · w2ᵀ in one launch (the rows of both products as one grid).
// matmul_heads's product with the same kernel, one grid row per head (x, w and y of head h moved
// by h times the offsets, in elements). Like every GEMV launch it loads w before pdl_wait, so w
// must be weights, never data a kernel of the step writes.
bool gemv_heads_supported(const Mat& x, const Mat& w, const Mat& y, int64_t heads, int64_t x_offset,
                          int64_t w_offset, int64_t y_offset, bool w_transposed);
void launch_gemv_heads(const Mat& x, const Mat& w, const Mat& y, int64_t heads, int64_t x_offset,
                       int64_t w_offset, int64_t y_offset, cudaStream_t stream);
bool gemv_pair_supported(const Mat& x, const Mat& w1, const Mat& y1, const Mat& w2, const Mat& y2);
void launch_gemv_pair(const Mat& x, const Mat& w1, const Mat& y1, const Mat& w2, const Mat& y2,
                      cudaStream_t stream);

// moe_routing.cu: expert ids and weights per token (semantics of kernels/moe_routing.h).
void launch_moe_route(const Mat& logits, const float* bias, const MoeRoutingParams& params,
                      int32_t* expert_ids, float* weights, cudaStream_t stream);
// Backend::moe_gate in one launch for up to kMoeGateMaxTokens tokens (x and router of one type,
// float32 logits): `done` is a device counter, zero before the launch and left zero after it.
// Two optional parts of the same launch:
//   MoeGateNorm: the add_rmsnorm before it (residual += delta; out = rmsnorm(residual) · weight,
//     launch_add_rmsnorm's arithmetic). Every CTA normalises the rows into shared memory for its
//     product; the CTA that routes writes residual and out. x is then `out` (shapes only).
//   MoeGateIndex: launch_moe_index's outputs for the routed ids, built by the routing CTA.
inline constexpr int kMoeGateMaxTokens = 8;
struct MoeGateNorm {
  Mat residual;
  Mat delta;
  const void* weight;  // [cols] of the activation type (the CUDA backend stores norms so)
  float eps;
  Mat out;
};
struct MoeGateIndex {
  int64_t expert_begin = 0, num_local = 0, shared_tokens = 0;
  int32_t* offsets = nullptr;
  int32_t* pair_of_row = nullptr;
  int32_t* row_of_pair = nullptr;
  int32_t* active = nullptr;
};
bool moe_gate_supported(const Mat& x, const Mat& router, const Mat& logits,
                        const MoeRoutingParams& params, const MoeGateNorm* norm = nullptr,
                        const MoeGateIndex* index = nullptr);
// cluster (the device launches thread block clusters and moe_gate_cluster_compiled()): routers
// of up to kMoeGateClusterMaxExperts experts in up to 32 groups, without the norm, run as one
// cluster of up to 8 CTAs, the logits passed to the routing CTA through distributed shared
// memory. Returns whether they did.
inline constexpr int64_t kMoeGateClusterMaxExperts = 128;
// Whether this binary holds the cluster form for the current device (sm_90 code, not sm_80 PTX).
bool moe_gate_cluster_compiled();
bool launch_moe_gate(const Mat& x, const Mat& router, const Mat& logits, const float* bias,
                     const MoeRoutingParams& params, int32_t* expert_ids, float* weights,
                     unsigned int* done, cudaStream_t stream, const MoeGateNorm* norm = nullptr,
                     const MoeGateIndex* index = nullptr, bool cluster = false);

// moe_experts.cu: the permutation kernels around the per-expert matrix products.
// out[i] = x[token_of_row[i]] for i < out.rows.
void launch_gather_rows(const Mat& x, const int32_t* token_of_row, const Mat& out,
                        cudaStream_t stream);
// out[t] += Σ_j weights[t, j] · expert_out[row_of_pair[t, j]] over pairs with a row (≥ 0).
// shared_row0: nullptr, or where the shared experts' first row index lies (their row of token t
// is *shared_row0 + t): out[t] = that row + the weighted routed rows, out not read.
// base (without shared_row0): out[t] = base[t] + the weighted routed rows, out not read.
// With `then`: then also residual += out and normed = rmsnorm(residual) · weight, in the same
// launch where the rows allow (else launch_add_rmsnorm after), values as the two launches give.
// Returns whether `then` ran in the combine's launch.
struct MoeCombineNorm {
  Mat residual;
  const void* weight;  // [cols] of the activation type, as MoeGateNorm's
  float eps;
  Mat normed;
};
bool launch_moe_combine(const Mat& expert_out, const int32_t* row_of_pair, const float* weights,
                        int64_t top_k, const int32_t* shared_row0, const Mat& out,
                        cudaStream_t stream, const MoeCombineNorm* then = nullptr,
                        const Mat* base = nullptr);

// The small-step path (decode): everything on the device, no host round trip, so graphs can
// capture it. moe_small_supported says whether a step qualifies; then
//   launch_moe_index: offsets[num_local + 1] of each local expert's rows, pair_of_row[rows] and
//     row_of_pair[pairs] (−1: not local), rows sorted by expert, stable (the host path's order);
//   launch_moe_gate_up_small: act[row] = swiglu(W_gate_up[e] · x[pair_of_row[row] / top_k]);
//   launch_moe_down_small: y[row] = W_down[e] · act[row];
// then launch_moe_combine(y, row_of_pair, …). gate_up / down: device arrays of the local
// experts' contiguous weight matrices ([2·inter, hidden] and [hidden, inter]).
inline constexpr int64_t kMoeSmallMaxPairs = 512;
inline constexpr int64_t kMoeSmallMaxExperts = 1024;
bool moe_small_supported(int64_t pairs, int64_t num_local, int64_t hidden, int64_t inter,
                         DType dtype);
// active[moe_active_slots(pairs, num_local)]: the local experts with rows, in order, then −1
// (the product kernels' grid rows).
inline int64_t moe_active_slots(int64_t pairs, int64_t num_local) {
  return pairs < num_local ? pairs : num_local;
}
// The shared experts on the small path: one more expert (index `slot` = num_local in the pointer
// tables and the active list) with its own inter, which every token enters once. With
// shared_tokens > 0 launch_moe_index appends their rows after the routed ones (offsets then has
// num_local + 2 entries, pair_of_row pairs + shared_tokens, active one more slot).
// Steps of up to this many tokens take the shared experts into the routed experts' launches
// (one pass of the tensor-core kernels).
inline constexpr int64_t kMoeSharedFuseMaxTokens = 16;
struct MoeSharedExpert {
  int32_t slot;
  int64_t inter;
};
void launch_moe_index(const int32_t* expert_ids, int64_t pairs, int64_t expert_begin,
                      int64_t num_local, int64_t shared_tokens, int32_t* offsets,
                      int32_t* pair_of_row, int32_t* row_of_pair, int32_t* active,
                      cudaStream_t stream);
// tensor_cores: the mma.sync kernels (moe_small_mma_supported: bf16, hidden and inter multiples
// of 32), else the CUDA-core ones.
bool moe_small_mma_supported(int64_t hidden, int64_t inter, DType dtype);
// shared: nullptr or the shared experts (tensor-core kernels only); act's row pitch then covers
// the wider inter. down reads `inter` columns of act for routed rows.
void launch_moe_gate_up_small(const Mat& x, const void* const* gate_up, int64_t inter,
                              int64_t num_local, const int32_t* offsets, const int32_t* active,
                              const int32_t* pair_of_row, int64_t top_k, const Mat& act,
                              bool tensor_cores, const MoeSharedExpert* shared,
                              cudaStream_t stream);
void launch_moe_down_small(const Mat& act, const void* const* down, int64_t num_local,
                           const int32_t* offsets, const int32_t* active, int64_t inter,
                           int64_t routed_pairs, const Mat& y, bool tensor_cores,
                           const MoeSharedExpert* shared, cudaStream_t stream);

// sampling.cu: ids[r] = argmax of row r (ties to the lowest index, NaN never wins).
// Rows of up to kArgmaxSlicedMaxRows are cut into slices of 4,096 over many CTAs (at most
// kArgmaxMaxSlices) when `partial` (8 bytes a slice of each row) and `done` (one counter a row,
// zero before the launch and left zero) are given; other steps take one CTA per row.
inline constexpr int64_t kArgmaxSlicedMaxRows = 64;
inline constexpr int64_t kArgmaxMaxSlices = 128;
inline constexpr size_t kArgmaxPartialBytes = kArgmaxSlicedMaxRows * kArgmaxMaxSlices * 8;
// The slices launch_argmax would use for these logits (0: one CTA per row).
int64_t argmax_slices(const Mat& logits);
void launch_argmax(const Mat& logits, int32_t* ids, cudaStream_t stream, void* partial = nullptr,
                   unsigned int* done = nullptr);
// ids[r] = the token sample_token_cpu draws from float32 row r with rows[r] (device memory).
void launch_sample(const Mat& logits, const SamplingRow* rows, int32_t* ids, cudaStream_t stream);

// matmul.cu: y = x · wᵀ (w [n, k]) or x · w (w [k, n]), y += … with accumulate; cuBLAS with
// float32 accumulation. x and w share a type; y is that type or float32.
void gemm(cublasHandle_t handle, const Mat& x, const Mat& w, const Mat& y, bool w_transposed,
          bool accumulate);
// y_g [rows[g], n] = x_g [rows[g], k] · w_gᵀ (w_g [n, k]) for g < count in one cuBLAS call
// (cublasGemmGroupedBatchedEx), every matrix of type dtype; w, x, y are arrays of count device
// pointers in device memory, rows a host array. False where cuBLAS does not take the call
// (nothing was launched): run gemm per problem instead.
bool gemm_grouped(cublasHandle_t handle, DType dtype, int count, const int* rows, int64_t n,
                  int64_t k, const void* const* w, int64_t w_stride, const void* const* x,
                  int64_t x_stride, void* const* y, int64_t y_stride);
// Backend::matmul_heads in one strided-batched cuBLAS call (one head per batch entry).
void gemm_heads(cublasHandle_t handle, const Mat& x, const Mat& w, const Mat& y, int64_t heads,
                int64_t x_offset, int64_t w_offset, int64_t y_offset, bool w_transposed);

}  // namespace dshpc::cuda
