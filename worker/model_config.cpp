#include "worker/model_config.h"

#include <cmath>

#include "common/json_fields.h"

namespace dshpc {
namespace {

namespace json = boost::json;

struct FamilyName {
  const char* architecture;
  const char* model_type;
  ModelFamily family;
};
constexpr FamilyName kFamilies[] = {
    {"LlamaForCausalLM", "llama", ModelFamily::kLlama},
    {"DeepseekV2ForCausalLM", "deepseek_v2", ModelFamily::kDeepseekV2},
    {"DeepseekV3ForCausalLM", "deepseek_v3", ModelFamily::kDeepseekV3},
};

Status require_positive(const JsonFields& f, std::string_view key, int64_t value) {
  if (value <= 0) return f.error(key, "must be positive, got " + std::to_string(value));
  return ok_status();
}

// rope_scaling (hub configs) or rope_parameters (configs written by transformers 5).
Status parse_rope(const JsonFields& fields, ModelConfig& config) {
  ASSIGN_OR_RETURN(config.rope.theta, fields.get_double("rope_theta", 10000.0));
  const json::value* scaling = fields.find("rope_scaling");
  std::string key = "rope_scaling";
  if (scaling == nullptr && fields.find("rope_parameters") != nullptr) {
    scaling = fields.find("rope_parameters");
    key = "rope_parameters";
  }
  config.rope.scaling = RopeScaling::kNone;
  if (scaling == nullptr) return ok_status();
  if (!scaling->is_object()) return fields.error(key, "must be an object or null");
  JsonFields rope(scaling->get_object(), fields.where() + ": " + key);
  const char* type_key = rope.has("type") ? "type" : "rope_type";
  ASSIGN_OR_RETURN(std::string type, rope.get_string(type_key, "default"));
  if (rope.has("rope_theta")) {
    ASSIGN_OR_RETURN(config.rope.theta, rope.get_double("rope_theta", 0));
  }
  if (type == "default") return ok_status();
  ASSIGN_OR_RETURN(config.rope.factor, rope.require_double("factor"));
  if (!(config.rope.factor >= 1.0) || !std::isfinite(config.rope.factor)) {
    return rope.error("factor", "must be a finite number >= 1");
  }
  if (type == "linear") {
    config.rope.scaling = RopeScaling::kLinear;
  } else if (type == "yarn") {
    config.rope.scaling = RopeScaling::kYarn;
    ASSIGN_OR_RETURN(
        config.rope.original_max_position,
        rope.get_int("original_max_position_embeddings", config.max_position_embeddings));
    RETURN_IF_ERROR(require_positive(rope, "original_max_position_embeddings",
                                     config.rope.original_max_position));
    ASSIGN_OR_RETURN(config.rope.beta_fast, rope.get_double("beta_fast", 32.0));
    ASSIGN_OR_RETURN(config.rope.beta_slow, rope.get_double("beta_slow", 1.0));
    ASSIGN_OR_RETURN(config.rope.mscale, rope.get_double("mscale", 1.0));
    ASSIGN_OR_RETURN(config.rope.mscale_all_dim, rope.get_double("mscale_all_dim", 0.0));
    if (rope.has("attention_factor")) {
      return rope.error("attention_factor", "is not supported (explicit YaRN attention factor)");
    }
  } else {
    return rope.error(type_key,
                      "\"" + type + "\" is not supported (supported: default, linear, yarn)");
  }
  if (!(config.rope.theta > 0)) return fields.error("rope_theta", "must be positive");
  return ok_status();
}

Status parse_eos(const JsonFields& fields, ModelConfig& config) {
  const json::value* eos = fields.find("eos_token_id");
  if (eos == nullptr) return ok_status();
  if (eos->is_array()) {
    for (const json::value& v : eos->get_array()) {
      if (!v.is_int64()) return fields.error("eos_token_id", "must hold integers");
      config.eos_token_ids.push_back(v.get_int64());
    }
    return ok_status();
  }
  ASSIGN_OR_RETURN(int64_t id, fields.get_int("eos_token_id", -1));
  config.eos_token_ids.push_back(id);
  return ok_status();
}

Status parse_llama(const JsonFields& f, ModelConfig& c) {
  ASSIGN_OR_RETURN(c.num_kv_heads, f.get_int("num_key_value_heads", c.num_heads));
  RETURN_IF_ERROR(require_positive(f, "num_key_value_heads", c.num_kv_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return f.error("num_key_value_heads", std::to_string(c.num_kv_heads) +
                                              " does not divide num_attention_heads " +
                                              std::to_string(c.num_heads));
  }
  if (f.has("head_dim")) {
    ASSIGN_OR_RETURN(c.head_dim, f.get_int("head_dim", 0));
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return f.error("hidden_size", std::to_string(c.hidden_size) +
                                        " is not a multiple of num_attention_heads " +
                                        std::to_string(c.num_heads));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  RETURN_IF_ERROR(require_positive(f, "head_dim", c.head_dim));
  if (c.head_dim % 2 != 0) return f.error("head_dim", "must be even for rotary embedding");
  ASSIGN_OR_RETURN(bool attention_bias, f.get_bool("attention_bias", false));
  if (attention_bias) return f.error("attention_bias", "true is not supported");
  ASSIGN_OR_RETURN(bool mlp_bias, f.get_bool("mlp_bias", false));
  if (mlp_bias) return f.error("mlp_bias", "true is not supported");
  c.rope.rot_dim = c.head_dim;
  c.rope_style = RopeStyle::kHalfSplit;
  return ok_status();
}

Status parse_moe(const JsonFields& f, ModelConfig& c) {
  ASSIGN_OR_RETURN(c.num_routed_experts, f.get_int("n_routed_experts", 0));
  if (c.num_routed_experts == 0) return ok_status();  // dense DeepSeek-V2-style model
  RETURN_IF_ERROR(require_positive(f, "n_routed_experts", c.num_routed_experts));
  ASSIGN_OR_RETURN(c.num_shared_experts, f.get_int("n_shared_experts", 0));
  if (c.num_shared_experts < 0) return f.error("n_shared_experts", "must not be negative");
  ASSIGN_OR_RETURN(c.moe_intermediate_size, f.require_int("moe_intermediate_size"));
  RETURN_IF_ERROR(require_positive(f, "moe_intermediate_size", c.moe_intermediate_size));
  ASSIGN_OR_RETURN(c.first_k_dense_replace, f.get_int("first_k_dense_replace", 0));
  if (c.first_k_dense_replace < 0) return f.error("first_k_dense_replace", "must not be negative");
  ASSIGN_OR_RETURN(c.moe_layer_freq, f.get_int("moe_layer_freq", 1));
  RETURN_IF_ERROR(require_positive(f, "moe_layer_freq", c.moe_layer_freq));

  MoeRoutingParams& r = c.routing;
  r.num_experts = c.num_routed_experts;
  ASSIGN_OR_RETURN(r.top_k, f.require_int("num_experts_per_tok"));
  if (r.top_k < 1 || r.top_k > r.num_experts) {
    return f.error("num_experts_per_tok",
                   "must be in [1, n_routed_experts = " + std::to_string(r.num_experts) + "]");
  }
  ASSIGN_OR_RETURN(r.num_groups, f.get_int("n_group", 1));
  ASSIGN_OR_RETURN(r.topk_groups, f.get_int("topk_group", 1));
  RETURN_IF_ERROR(require_positive(f, "n_group", r.num_groups));
  if (r.num_experts % r.num_groups != 0) {
    return f.error("n_group", std::to_string(r.num_groups) + " does not divide n_routed_experts " +
                                  std::to_string(r.num_experts));
  }
  if (r.topk_groups < 1 || r.topk_groups > r.num_groups) {
    return f.error("topk_group", "must be in [1, n_group = " + std::to_string(r.num_groups) + "]");
  }
  ASSIGN_OR_RETURN(
      std::string scoring,
      f.get_string("scoring_func", c.family == ModelFamily::kDeepseekV3 ? "sigmoid" : "softmax"));
  if (scoring == "softmax") {
    r.scoring = MoeScoring::kSoftmax;
  } else if (scoring == "sigmoid") {
    r.scoring = MoeScoring::kSigmoid;
  } else {
    return f.error("scoring_func", "\"" + scoring + "\" is not supported (softmax, sigmoid)");
  }
  ASSIGN_OR_RETURN(
      std::string method,
      f.get_string("topk_method", c.family == ModelFamily::kDeepseekV3 ? "noaux_tc" : "greedy"));
  if (method == "greedy") {
    r.method = MoeTopkMethod::kGreedy;
  } else if (method == "group_limited_greedy") {
    r.method = MoeTopkMethod::kGroupLimitedGreedy;
  } else if (method == "noaux_tc") {
    r.method = MoeTopkMethod::kNoauxTc;
    if (r.scoring != MoeScoring::kSigmoid) {
      return f.error("topk_method", "noaux_tc requires scoring_func sigmoid");
    }
  } else {
    return f.error("topk_method", "\"" + method +
                                      "\" is not supported (greedy, group_limited_greedy, "
                                      "noaux_tc)");
  }
  if (r.method != MoeTopkMethod::kGreedy) {
    int64_t per_group = r.num_experts / r.num_groups;
    if (r.top_k > r.topk_groups * per_group) {
      return f.error("num_experts_per_tok", "exceeds the experts in topk_group groups");
    }
    if (r.method == MoeTopkMethod::kNoauxTc && per_group < 2) {
      return f.error("n_group",
                     "noaux_tc scores groups by their top two experts; each group "
                     "needs at least 2 experts");
    }
  }
  ASSIGN_OR_RETURN(r.norm_topk_prob, f.get_bool("norm_topk_prob", false));
  ASSIGN_OR_RETURN(double scaling, f.get_double("routed_scaling_factor", 1.0));
  if (!std::isfinite(scaling) || scaling <= 0) {
    return f.error("routed_scaling_factor", "must be a positive number");
  }
  r.routed_scaling_factor = static_cast<float>(scaling);
  return ok_status();
}

Status parse_mla(const JsonFields& f, ModelConfig& c) {
  ASSIGN_OR_RETURN(c.q_lora_rank, f.get_int("q_lora_rank", 0));
  if (c.q_lora_rank < 0) return f.error("q_lora_rank", "must not be negative");
  ASSIGN_OR_RETURN(c.kv_lora_rank, f.require_int("kv_lora_rank"));
  ASSIGN_OR_RETURN(c.qk_nope_head_dim, f.require_int("qk_nope_head_dim"));
  ASSIGN_OR_RETURN(c.qk_rope_head_dim, f.require_int("qk_rope_head_dim"));
  ASSIGN_OR_RETURN(c.v_head_dim, f.require_int("v_head_dim"));
  RETURN_IF_ERROR(require_positive(f, "kv_lora_rank", c.kv_lora_rank));
  RETURN_IF_ERROR(require_positive(f, "qk_nope_head_dim", c.qk_nope_head_dim));
  RETURN_IF_ERROR(require_positive(f, "qk_rope_head_dim", c.qk_rope_head_dim));
  RETURN_IF_ERROR(require_positive(f, "v_head_dim", c.v_head_dim));
  if (c.qk_rope_head_dim % 2 != 0) return f.error("qk_rope_head_dim", "must be even");
  c.num_kv_heads = c.num_heads;
  c.head_dim = c.qk_head_dim();
  c.rope.rot_dim = c.qk_rope_head_dim;
  ASSIGN_OR_RETURN(bool interleave, f.get_bool("rope_interleave", true));
  c.rope_style = interleave ? RopeStyle::kInterleaved : RopeStyle::kHalfSplit;
  ASSIGN_OR_RETURN(bool attention_bias, f.get_bool("attention_bias", false));
  if (attention_bias) return f.error("attention_bias", "true is not supported");
  ASSIGN_OR_RETURN(c.num_nextn_predict_layers, f.get_int("num_nextn_predict_layers", 0));
  RETURN_IF_ERROR(parse_moe(f, c));

  if (f.has("quantization_config")) {
    const json::value* q = f.find("quantization_config");
    if (!q->is_object()) return f.error("quantization_config", "must be an object");
    JsonFields quant(q->get_object(), f.where() + ": quantization_config");
    ASSIGN_OR_RETURN(std::string method, quant.get_string("quant_method", ""));
    if (method != "fp8") {
      return quant.error("quant_method", "\"" + method + "\" is not supported (fp8)");
    }
    c.fp8_weights = true;
    if (const json::value* block = quant.find("weight_block_size")) {
      if (!block->is_array() || block->get_array().size() != 2 ||
          !block->get_array()[0].is_int64() || !block->get_array()[1].is_int64() ||
          block->get_array()[0].get_int64() <= 0 || block->get_array()[1].get_int64() <= 0) {
        return quant.error("weight_block_size", "must be two positive integers");
      }
      c.fp8_block_rows = block->get_array()[0].get_int64();
      c.fp8_block_cols = block->get_array()[1].get_int64();
    }
  }
  return ok_status();
}

}  // namespace

const char* model_family_name(ModelFamily family) {
  switch (family) {
    case ModelFamily::kLlama:
      return "llama";
    case ModelFamily::kDeepseekV2:
      return "deepseek_v2";
    case ModelFamily::kDeepseekV3:
      return "deepseek_v3";
  }
  return "?";
}

bool ModelConfig::is_moe_layer(int64_t layer) const {
  return num_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
}

float ModelConfig::attention_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(is_mla() ? qk_head_dim() : head_dim));
  // DeepSeek-V3 folds YaRN's magnitude correction into the softmax scale: mscale(factor,
  // mscale_all_dim)² for any scaled rope. The reference implementation of DeepSeek-V2
  // (transformers' DeepseekV2Attention) does not, and we match the reference.
  if (family == ModelFamily::kDeepseekV3 && rope.scaling != RopeScaling::kNone &&
      rope.mscale_all_dim != 0.0) {
    const double m = yarn_get_mscale(rope.factor, rope.mscale_all_dim);
    scale *= m * m;
  }
  return static_cast<float>(scale);
}

int64_t ModelConfig::num_parameters() const {
  const int64_t h = hidden_size;
  int64_t attention;
  if (is_mla()) {
    int64_t q = q_lora_rank > 0 ? h * q_lora_rank + q_lora_rank * num_heads * qk_head_dim()
                                : h * num_heads * qk_head_dim();
    attention = q + h * (kv_lora_rank + qk_rope_head_dim) +
                kv_lora_rank * num_heads * (qk_nope_head_dim + v_head_dim) +
                num_heads * v_head_dim * h;
  } else {
    attention = h * head_dim * (2 * num_heads + 2 * num_kv_heads);
  }
  int64_t total = 2 * vocab_size * h;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    total += attention + 2 * h;
    if (is_moe_layer(layer)) {
      total += (num_routed_experts + num_shared_experts) * 3 * h * moe_intermediate_size +
               num_routed_experts * h;
    } else {
      total += 3 * h * intermediate_size;
    }
  }
  return total;
}

StatusOr<ModelConfig> parse_model_config(const std::string& json_text, const std::string& where) {
  ASSIGN_OR_RETURN(json::value root, parse_json(json_text, where));
  if (!root.is_object()) return invalid_argument(where + ": config must be a JSON object");
  JsonFields f(root.get_object(), where);
  ModelConfig c;

  ASSIGN_OR_RETURN(c.model_type, f.get_string("model_type", ""));
  if (const json::value* arch = f.find("architectures")) {
    if (!arch->is_array() || arch->get_array().empty() || !arch->get_array()[0].is_string()) {
      return f.error("architectures", "must be a non-empty list of strings");
    }
    c.architecture = std::string(arch->get_array()[0].get_string());
  }
  bool known = false;
  for (const FamilyName& entry : kFamilies) {
    if (c.architecture == entry.architecture ||
        (c.architecture.empty() && c.model_type == entry.model_type)) {
      c.family = entry.family;
      c.architecture = entry.architecture;
      known = true;
    }
  }
  if (!known) {
    std::string got = c.architecture.empty() ? "model_type \"" + c.model_type + "\""
                                             : "\"" + c.architecture + "\"";
    return f.error("architectures",
                   got +
                       " is not supported (LlamaForCausalLM, DeepseekV2ForCausalLM, "
                       "DeepseekV3ForCausalLM)");
  }

  ASSIGN_OR_RETURN(c.vocab_size, f.require_int("vocab_size"));
  ASSIGN_OR_RETURN(c.hidden_size, f.require_int("hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, f.require_int("intermediate_size"));
  ASSIGN_OR_RETURN(c.num_layers, f.require_int("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_heads, f.require_int("num_attention_heads"));
  RETURN_IF_ERROR(require_positive(f, "vocab_size", c.vocab_size));
  RETURN_IF_ERROR(require_positive(f, "hidden_size", c.hidden_size));
  RETURN_IF_ERROR(require_positive(f, "intermediate_size", c.intermediate_size));
  RETURN_IF_ERROR(require_positive(f, "num_hidden_layers", c.num_layers));
  RETURN_IF_ERROR(require_positive(f, "num_attention_heads", c.num_heads));
  if (c.vocab_size > (int64_t{1} << 31)) return f.error("vocab_size", "is too large");

  ASSIGN_OR_RETURN(double eps, f.get_double("rms_norm_eps", 1e-6));
  if (!(eps > 0) || !std::isfinite(eps)) return f.error("rms_norm_eps", "must be positive");
  c.rms_norm_eps = static_cast<float>(eps);
  ASSIGN_OR_RETURN(c.max_position_embeddings, f.get_int("max_position_embeddings", 4096));
  RETURN_IF_ERROR(require_positive(f, "max_position_embeddings", c.max_position_embeddings));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, f.get_bool("tie_word_embeddings", false));
  ASSIGN_OR_RETURN(c.bos_token_id, f.get_int("bos_token_id", -1));
  RETURN_IF_ERROR(parse_eos(f, c));
  ASSIGN_OR_RETURN(std::string act, f.get_string("hidden_act", "silu"));
  if (act != "silu") return f.error("hidden_act", "\"" + act + "\" is not supported (silu)");
  RETURN_IF_ERROR(parse_rope(f, c));

  if (c.family == ModelFamily::kLlama) {
    RETURN_IF_ERROR(parse_llama(f, c));
  } else {
    RETURN_IF_ERROR(parse_mla(f, c));
  }
  return c;
}

StatusOr<ModelConfig> load_model_config(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  return parse_model_config(text, path);
}

}  // namespace dshpc
