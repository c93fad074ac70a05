// Attention over a paged KV cache, for prefill, chunked prefill and decode alike.
//
// Cache layout: a pool of blocks of `block_size` token slots; slot s = block · block_size + offset.
// Token slot s of key head h starts at k + s · k_token_stride + h · head_dim; of value head h at
// v + s · v_token_stride + h · v_dim. A sequence's logical position p lives in slot
// block_table[p / block_size] · block_size + p % block_size.
//
// Multi-head latent attention in the absorbed form is the special case kv_heads = 1,
// head_dim = kv_lora_rank + rope_dim, v = k (same pointer and stride), v_dim = kv_lora_rank:
// the cache holds [c_kv | k_pe] per token and the query [q_nope·W_UK | q_pe].
#pragma once

#include <cstdint>

namespace dshpc {

struct PagedKvView {
  float* k = nullptr;
  float* v = nullptr;
  int64_t block_size = 16;
  int64_t k_token_stride = 0;
  int64_t v_token_stride = 0;
  int64_t kv_heads = 1;
  int64_t head_dim = 0;
  int64_t v_dim = 0;
};

// One sequence's part of a step: its new tokens are rows [query_begin, query_begin + query_len)
// of q / out; after this step the cache holds context_len tokens of it (so new token i is at
// position context_len − query_len + i and attends to positions 0 … that position).
struct PagedSequence {
  int32_t query_begin = 0;
  int32_t query_len = 0;
  int32_t context_len = 0;
  const int32_t* block_table = nullptr;
};

// Stores new keys and values: token t goes to slot slots[t]. k rows are `k_row_stride` apart and
// hold kv_heads · head_dim values; v rows `v_row_stride` apart with kv_heads · v_dim values.
// With v == nullptr only k is written (the MLA latent cache). A negative slot skips its token
// (padding rows of a step).
void kv_cache_write_cpu(const float* k, int64_t k_row_stride, const float* v, int64_t v_row_stride,
                        int64_t tokens, const int64_t* slots, const PagedKvView& cache);

// out[t, h, :v_dim] = softmax_j(scale · q[t, h] · k[j, h / group]) · v[j, h / group], causal,
// group = q_heads / kv_heads. q is [tokens, q_heads, head_dim] contiguous; out is
// [tokens, q_heads, v_dim] contiguous. Softmax in float32 with max subtraction.
void paged_attention_cpu(const float* q, float* out, const PagedSequence* seqs, int64_t num_seqs,
                         int64_t q_heads, const PagedKvView& cache, float scale);

}  // namespace dshpc
