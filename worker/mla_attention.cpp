// Multi-head latent attention (DeepSeek-V2/V3) in the absorbed form.
//
// The cache holds, per token, the normalised compressed KV c (kv_lora_rank) and the rotated k_pe
// (rope dims) — not per-head K and V. With W_UK / W_UV the per-head blocks of kv_b_proj:
//   score(t, j) = q_nope · (W_UK c_j) + q_pe · k_pe_j = (W_UKᵀ q_nope) · c_j + q_pe · k_pe_j
//   out_h       = W_UV Σ_j p_j c_j
// so the query is absorbed into latent space once per token and attention runs as multi-query
// attention over [c | k_pe] entries.
#include "common/check.h"
#include "worker/model.h"

namespace dshpc {

void Model::attention_mla(const LayerWeights& w, const StepTensors& step, const PagedKvView& cache,
                          Mat normed, Mat out) {
  const ModelConfig& c = config_;
  const int64_t tokens = normed.rows;
  const int64_t heads = heads_local_;
  const int64_t nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, vdim = c.v_head_dim;
  const int64_t qk = nope + rope;
  const int64_t lora = c.kv_lora_rank;
  const int64_t entry = lora + rope;  // one latent cache entry
  // q_a_layernorm and kv_a_layernorm are built without the config's eps in both DeepSeek's and
  // transformers' code, so they keep RMSNorm's default.
  constexpr float kLatentNormEps = 1e-6f;

  // q: [T, heads, nope + rope]
  Mat q = scratch(kWork1, tokens, heads * qk);
  if (c.q_lora_rank > 0) {
    Mat q_a = scratch(kWork0, tokens, c.q_lora_rank);
    backend_.matmul(normed, w.mla.q_a.mat, q_a);
    backend_.rmsnorm(q_a, w.mla.q_a_norm.data(), kLatentNormEps, q_a);
    backend_.matmul(q_a, w.mla.q_b.mat, q);
  } else {
    backend_.matmul(normed, w.mla.q_b.mat, q);
  }

  // Latent entry [T, lora + rope]: kv_a_layernorm covers only c, never k_pe.
  Mat latent = scratch(kWork2, tokens, entry);
  backend_.matmul(normed, w.mla.kv_a.mat, latent);
  Mat c_kv = latent.col_slice(0, lora);
  backend_.rmsnorm(c_kv, w.mla.kv_a_norm.data(), kLatentNormEps, c_kv);
  backend_.rope(latent.col_slice(lora, rope), 1, 0, rope, step.positions, rope_tables_,
                c.rope_style);
  backend_.kv_cache_write(latent, nullptr, step.slots, cache);

  // Absorbed query [T, heads, lora + rope] = [W_UKᵀ q_nope | rotated q_pe].
  backend_.rope(q.col_slice(nope, q.cols - nope), heads, qk, rope, step.positions, rope_tables_,
                c.rope_style);
  Mat q_absorbed = scratch(kWork3, tokens, heads * entry);
  const Mat& kv_b = w.mla.kv_b.mat;  // [heads · (nope + v), lora]
  const int64_t head_rows = (nope + vdim) * kv_b.stride;  // kv_b elements from head to head
  // Head h: q_nope_h [T, nope] · W_UK_h [nope, lora] → q_absorbed columns [h·entry, +lora).
  backend_.matmul_heads(q.col_slice(0, nope), kv_b.row_slice(0, nope),
                        q_absorbed.col_slice(0, lora), heads, qk, head_rows, entry,
                        /*w_transposed=*/false);
  // The rotated q_pe of every head in one copy: q and q_absorbed as one row per (token, head).
  DSHPC_CHECK(q.contiguous() && q_absorbed.contiguous());
  const Mat q_rows = Mat::of(q.data, q.dtype, tokens * heads, qk);
  const Mat absorbed_rows = Mat::of(q_absorbed.data, q_absorbed.dtype, tokens * heads, entry);
  backend_.copy(q_rows.col_slice(nope, rope), absorbed_rows.col_slice(lora, rope));

  // Attention in latent space: [T, heads, lora].
  Mat attn_latent = scratch(kWork4, tokens, heads * lora);
  backend_.paged_attention(q_absorbed, attn_latent, step, heads, cache, c.attention_scale());

  // Back to per-head values [T, heads, v] with W_UV, then the row-parallel o_proj.
  Mat values = scratch(kWork5, tokens, heads * vdim);
  // Head h: latent_h [T, lora] · W_UV_hᵀ ([v, lora]) → values columns [h·v, +v).
  backend_.matmul_heads(attn_latent.col_slice(0, lora), kv_b.row_slice(nope, vdim),
                        values.col_slice(0, vdim), heads, lora, head_rows, vdim);
  backend_.matmul(values, w.mla.o.mat, out);  // partial sum over tp
}

}  // namespace dshpc
