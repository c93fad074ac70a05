// An independent, naive, double-precision reference of the three model families, written from the
// Hugging Face transformers semantics (LlamaForCausalLM, DeepseekV2ForCausalLM,
// DeepseekV3ForCausalLM; eager attention) and not from the engine's code. It reads config.json
// itself (not through worker/model_config) and every weight by its Hugging Face name through a
// WeightSource, checking each full shape against what the config implies.
//
// Deliberately simple: plain loops, double everywhere, no KV cache (every call recomputes K and V
// of the whole sequence), no paging, and MLA in its naive form (per head k = [W_UK·c ; k_pe],
// v = W_UV·c), as transformers' DeepseekV2Attention / DeepseekV3Attention compute it.
//
// Where transformers and DeepSeek's own code disagree, RefOptions picks (defaults: transformers).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "worker/weight_source.h"

namespace dshpc::ref {

enum class Family { kLlama, kDeepseekV2, kDeepseekV3 };

struct RefConfig {
  Family family = Family::kLlama;
  int64_t vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0;
  int64_t head_dim = 0;  // Llama
  double eps = 1e-6;
  bool tie = false;
  // RoPE ("default", "linear", "yarn").
  std::string rope_type = "default";
  double theta = 10000.0, factor = 1.0, beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 0.0, mscale_all_dim = 0.0;  // 0: not given
  int64_t max_pos = 4096, original_max_pos = 0;
  bool rope_interleave = true;  // V3 only (V2 always rotates adjacent pairs, as complex numbers)
  // MLA.
  int64_t q_lora = 0, kv_lora = 0, nope = 0, rope = 0, v_dim = 0;
  // MoE.
  int64_t experts = 0, shared = 0, moe_inter = 0, top_k = 0, first_dense = 0, freq = 1;
  int64_t n_group = 1, topk_group = 1;
  std::string topk_method = "greedy";
  bool norm_topk_prob = false;
  double routed_scaling = 1.0;
};

// Throws std::runtime_error naming the field on a missing or malformed one.
RefConfig parse_ref_config(const std::string& json_text);

struct RefOptions {
  // V2 routing: transformers' DeepseekV2MoEGate never normalises (always × routed_scaling_factor);
  // DeepSeek's original code divides by the sum when norm_topk_prob and top_k > 1 (and then does
  // not scale). true: the original semantics.
  bool v2_norm_like_deepseek = false;
  // V3 group mask value: −inf (transformers ≥ PR #45441, DeepSeek's inference code) or 0.0 (older
  // transformers).
  bool v3_mask_with_zero = false;
  // q_a_layernorm / kv_a_layernorm: transformers builds them with the default eps 1e-6, not
  // rms_norm_eps. true: use rms_norm_eps.
  bool latent_norm_uses_config_eps = false;
  // MoE layers: index >= first_k_dense_replace and index % moe_layer_freq == 0 (DeepSeek's
  // remote code and this project's contract). transformers' own classes ignore moe_layer_freq.
  bool honour_moe_layer_freq = true;
};

class RefModel {
 public:
  // Reads every weight (double). Throws std::runtime_error on a missing tensor or a shape that does
  // not fit the config.
  RefModel(const RefConfig& config, const WeightSource& source, RefOptions options = {});

  // Logits [tokens.size()][vocab]: row i after tokens[0..i] (positions 0, 1, …).
  std::vector<std::vector<double>> forward(const std::vector<int32_t>& tokens) const;

  bool is_moe_layer(int64_t layer) const;
  // Smallest margin seen by any routing decision so far (top-k cut and group cut), in score
  // units: a mismatch with a tiny margin may be a legitimate near tie rather than a bug.
  double min_routing_margin() const { return min_margin_; }

 private:
  struct Tensor {
    int64_t rows = 0, cols = 0;
    std::vector<double> v;
    double at(int64_t r, int64_t c) const { return v[r * cols + c]; }
  };
  using Vec = std::vector<double>;
  using Seq = std::vector<Vec>;

  const Tensor& w(const std::string& name) const;
  void load(const WeightSource& source, const std::string& name, int64_t rows, int64_t cols);
  Vec rope_inv_freq() const;
  double rope_attention_factor() const;
  Vec matvec(const std::string& name, const Vec& x) const;
  Vec rmsnorm(const Vec& x, const std::string& weight, double eps) const;
  Vec mlp(const std::string& prefix, const Vec& x) const;
  Vec moe(const std::string& prefix, const Vec& x) const;
  Seq attention_llama(const std::string& prefix, const Seq& x) const;
  Seq attention_mla(const std::string& prefix, const Seq& x) const;
  void rotate(double* v, int64_t dim, int64_t pos, bool interleaved) const;

  RefConfig c_;
  RefOptions opt_;
  std::map<std::string, Tensor> weights_;
  Vec inv_freq_;
  double rope_mult_ = 1.0;
  mutable double min_margin_ = 1e300;
};

}  // namespace dshpc::ref
