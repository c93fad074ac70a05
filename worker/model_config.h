// ModelConfig: one validated view of a Hugging Face config.json for the three DeepSeek families.
//
//   LlamaForCausalLM       DeepSeek-LLM 7B/67B, DeepSeek-Coder: GQA, half-split RoPE (linear
//   scaling) DeepseekV2ForCausalLM  MLA (q LoRA optional), interleaved RoPE + YaRN, softmax-routed
//   MoE DeepseekV3ForCausalLM  MLA with q LoRA, YaRN, sigmoid noaux_tc routing with correction bias
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/moe_routing.h"
#include "kernels/rope.h"

namespace dshpc {

enum class ModelFamily { kLlama, kDeepseekV2, kDeepseekV3 };
const char* model_family_name(ModelFamily family);

struct ModelConfig {
  ModelFamily family = ModelFamily::kLlama;
  std::string architecture;  // architectures[0]
  std::string model_type;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // dense MLP
  int64_t num_layers = 0;         // decoder layers actually run (V3's MTP layers excluded)
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // Llama GQA; MLA models have one latent "head"
  int64_t head_dim = 0;      // Llama: per-head q/k/v width
  float rms_norm_eps = 1e-6f;
  int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;

  // Rotary embedding. rope.rot_dim is head_dim (Llama) or qk_rope_head_dim (MLA).
  RopeParams rope;
  RopeStyle rope_style = RopeStyle::kHalfSplit;

  // Multi-head latent attention (V2/V3).
  int64_t q_lora_rank = 0;  // 0: q_proj directly (V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;

  // Mixture of experts (V2/V3).
  int64_t num_routed_experts = 0;  // 0: dense model
  int64_t num_shared_experts = 0;
  int64_t moe_intermediate_size = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  MoeRoutingParams routing;
  int64_t num_nextn_predict_layers = 0;  // V3 MTP layers in the checkpoint, skipped

  // FP8 checkpoints (DeepSeek-V3 as published): block size of weight_scale_inv.
  bool fp8_weights = false;
  int64_t fp8_block_rows = 128;
  int64_t fp8_block_cols = 128;

  bool is_mla() const { return family != ModelFamily::kLlama; }
  // Layers with index >= first_k_dense_replace and divisible by moe_layer_freq use MoE.
  bool is_moe_layer(int64_t layer) const;
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // The attention softmax scale: head_dim^-0.5 (qk_head_dim for MLA), times YaRN's mscale² for
  // DeepSeek-V3 with scaled rope.
  float attention_scale() const;
  // Parameter count of the whole model (all experts), for reports.
  int64_t num_parameters() const;
};

// Parses and validates config.json text. `where` labels messages (usually the file path).
StatusOr<ModelConfig> parse_model_config(const std::string& json_text, const std::string& where);
StatusOr<ModelConfig> load_model_config(const std::string& path);

}  // namespace dshpc
