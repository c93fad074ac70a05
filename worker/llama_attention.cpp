// Llama-family attention (DeepSeek-LLM 7B/67B, DeepSeek-Coder): grouped-query attention with
// half-split rotary embedding, over the paged K/V cache.
#include "common/check.h"
#include "worker/model.h"

namespace dshpc {

void Model::attention_llama(const LayerWeights& w, const StepTensors& step,
                            const PagedKvView& cache, Mat normed, Mat out) {
  const int64_t tokens = normed.rows;
  const int64_t d = config_.head_dim;
  const int64_t q_width = heads_local_ * d;
  const int64_t kv_width = kv_heads_local_ * d;

  Mat qkv = scratch(kWork0, tokens, q_width + 2 * kv_width);  // [T, (hq + 2 hkv) · d]
  backend_.matmul(normed, w.llama.qkv.mat, qkv);
  Mat q = qkv.col_slice(0, q_width);
  Mat k = qkv.col_slice(q_width, kv_width);
  Mat v = qkv.col_slice(q_width + kv_width, kv_width);

  // q's heads and then k's are adjacent heads of d columns in each row: one launch rotates both.
  backend_.rope(qkv.col_slice(0, q_width + kv_width), heads_local_ + kv_heads_local_, d, d,
                step.positions, rope_tables_, config_.rope_style);
  backend_.kv_cache_write(k, &v, step.slots, cache);

  Mat q_dense = scratch(kWork1, tokens, q_width);  // attention wants contiguous [T, hq, d]
  backend_.copy(q, q_dense);
  Mat attn = scratch(kWork2, tokens, q_width);
  backend_.paged_attention(q_dense, attn, step, heads_local_, cache, config_.attention_scale());
  backend_.matmul(attn, w.llama.o.mat, out);  // row-parallel: partial sum over tp
}

}  // namespace dshpc
