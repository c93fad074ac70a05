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

  // q: [T, heads, nope + rope]; latent entry [T, lora + rope] (c, then k_pe).
  Mat q = scratch(kWork1, tokens, heads * qk);
  Mat latent = scratch(kWork2, tokens, entry);
  if (c.q_lora_rank > 0) {
    Mat q_a = scratch(kWork0, tokens, c.q_lora_rank);
    backend_.matmul_pair(normed, w.mla.q_a.mat, q_a, w.mla.kv_a.mat, latent);
    backend_.rmsnorm(q_a, w.mla.q_a_norm.data(), kLatentNormEps, q_a);
    backend_.matmul(q_a, w.mla.q_b.mat, q);
  } else {
    backend_.matmul_pair(normed, w.mla.q_b.mat, q, w.mla.kv_a.mat, latent);
  }

  const Mat& kv_b = w.mla.kv_b.mat;  // [heads · (nope + v), lora]
  Mat q_absorbed = scratch(kWork3, tokens, heads * entry);
  MlaPrepareArgs prepare;
  prepare.q = q;
  prepare.latent = latent;
  prepare.kv_norm = w.mla.kv_a_norm.data();
  prepare.eps = kLatentNormEps;
  prepare.kv_b = kv_b;
  prepare.heads = heads;
  prepare.nope = nope;
  prepare.rope = rope;
  prepare.v_dim = vdim;
  prepare.positions = step.positions;
  prepare.slots = step.slots;
  prepare.tables = rope_tables_;
  prepare.style = c.rope_style;
  prepare.cache = cache;
  prepare.q_absorbed = q_absorbed;
  backend_.mla_prepare(prepare);

  // Attention in latent space [T, heads, lora], then back to per-head values [T, heads, v] with
  // W_UV, then the row-parallel o_proj.
  Mat attn_latent = scratch(kWork4, tokens, heads * lora);
  Mat values = scratch(kWork5, tokens, heads * vdim);
  backend_.mla_attention(q_absorbed, attn_latent, step, heads, cache, c.attention_scale(), kv_b,
                         nope, vdim, values);
  backend_.matmul(values, w.mla.o.mat, out);  // partial sum over tp
}

}  // namespace dshpc
