#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "common/json_fields.h"
#include "worker/model_config.h"

namespace dshpc {
namespace {

std::string fixture_config(const std::string& model) {
  auto text = read_text_file(std::string(DSHPC_FIXTURES_DIR) + "/models/" + model + "/config.json");
  EXPECT_TRUE(text.ok()) << text.status().to_string();
  return text.ok() ? *text : "";
}

// Replaces the value of "key": … (up to the next comma or closing brace at depth 0) in JSON text.
std::string with_field(std::string json, const std::string& key, const std::string& value) {
  const std::string needle = "\"" + key + "\":";
  size_t pos = json.find(needle);
  if (pos == std::string::npos) {
    size_t brace = json.find('{');
    return json.insert(brace + 1, needle + " " + value + ",");
  }
  size_t start = pos + needle.size();
  size_t end = start;
  int depth = 0;
  for (; end < json.size(); ++end) {
    char c = json[end];
    if (c == '{' || c == '[') depth++;
    if (c == '}' || c == ']') {
      if (depth == 0) break;
      depth--;
    }
    if (c == ',' && depth == 0) break;
  }
  return json.replace(start, end - start, " " + value);
}

TEST(ModelConfig, LlamaMha) {
  auto c = parse_model_config(fixture_config("llama-mha"), "llama-mha/config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->family, ModelFamily::kLlama);
  EXPECT_EQ(c->num_layers, 4);
  EXPECT_EQ(c->num_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->rope.scaling, RopeScaling::kNone);
  EXPECT_EQ(c->rope_style, RopeStyle::kHalfSplit);
  EXPECT_FALSE(c->is_moe_layer(0));
  EXPECT_FLOAT_EQ(c->attention_scale(), 0.25f);
}

TEST(ModelConfig, LlamaGqaLinearRope) {
  auto c = parse_model_config(fixture_config("llama-gqa-linear"), "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->rope.scaling, RopeScaling::kLinear);
  EXPECT_DOUBLE_EQ(c->rope.factor, 4.0);
}

TEST(ModelConfig, DeepseekV2LiteTiny) {
  auto c = parse_model_config(fixture_config("deepseek-v2-lite-tiny"), "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->family, ModelFamily::kDeepseekV2);
  EXPECT_EQ(c->q_lora_rank, 0);  // null in the file
  EXPECT_EQ(c->kv_lora_rank, 64);
  EXPECT_EQ(c->rope.rot_dim, 16);
  EXPECT_EQ(c->rope_style, RopeStyle::kInterleaved);
  EXPECT_EQ(c->routing.scoring, MoeScoring::kSoftmax);
  EXPECT_EQ(c->routing.method, MoeTopkMethod::kGreedy);
  EXPECT_FALSE(c->is_moe_layer(0));  // first_k_dense_replace = 1
  EXPECT_TRUE(c->is_moe_layer(1));
  EXPECT_TRUE(c->is_moe_layer(2));
  EXPECT_FLOAT_EQ(c->attention_scale(), static_cast<float>(1.0 / std::sqrt(48.0)));
}

TEST(ModelConfig, DeepseekV3TinyYarnScale) {
  auto c = parse_model_config(fixture_config("deepseek-v3-tiny"), "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->family, ModelFamily::kDeepseekV3);
  EXPECT_EQ(c->q_lora_rank, 48);
  EXPECT_EQ(c->rope.scaling, RopeScaling::kYarn);
  EXPECT_EQ(c->rope.original_max_position, 128);
  EXPECT_EQ(c->routing.method, MoeTopkMethod::kNoauxTc);
  EXPECT_EQ(c->routing.scoring, MoeScoring::kSigmoid);
  EXPECT_EQ(c->routing.num_groups, 4);
  EXPECT_EQ(c->routing.topk_groups, 2);
  EXPECT_TRUE(c->routing.norm_topk_prob);
  EXPECT_FLOAT_EQ(c->routing.routed_scaling_factor, 2.5f);
  // qk_head_dim^-0.5 · mscale², mscale = 0.1 · mscale_all_dim · ln(factor) + 1.
  const double mscale = 0.1 * 1.0 * std::log(4.0) + 1.0;
  EXPECT_NEAR(c->attention_scale(), 1.0 / std::sqrt(48.0) * mscale * mscale, 1e-7);
}

TEST(ModelConfig, MoeLayerFrequency) {
  std::string json = fixture_config("deepseek-v3-tiny");
  json = with_field(json, "num_hidden_layers", "6");
  json = with_field(json, "moe_layer_freq", "2");
  auto c = parse_model_config(json, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  // Index >= first_k_dense_replace (1) and divisible by moe_layer_freq (2).
  EXPECT_FALSE(c->is_moe_layer(0));
  EXPECT_FALSE(c->is_moe_layer(1));
  EXPECT_TRUE(c->is_moe_layer(2));
  EXPECT_FALSE(c->is_moe_layer(3));
  EXPECT_TRUE(c->is_moe_layer(4));
}

struct BadCase {
  const char* model;
  const char* field;
  const char* value;
  const char* expected_in_message;
};

class ModelConfigErrors : public ::testing::TestWithParam<BadCase> {};

TEST_P(ModelConfigErrors, NamesTheField) {
  const BadCase& bad = GetParam();
  std::string json = with_field(fixture_config(bad.model), bad.field, bad.value);
  auto c = parse_model_config(json, "some/config.json");
  ASSERT_FALSE(c.ok()) << bad.field << " = " << bad.value << " was accepted";
  EXPECT_NE(c.status().message().find("some/config.json"), std::string::npos)
      << c.status().message();
  EXPECT_NE(c.status().message().find(bad.expected_in_message), std::string::npos)
      << c.status().message();
}

INSTANTIATE_TEST_SUITE_P(
    All, ModelConfigErrors,
    ::testing::Values(
        BadCase{"llama-mha", "architectures", "[\"MistralForCausalLM\"]", "MistralForCausalLM"},
        BadCase{"llama-mha", "architectures", "\"LlamaForCausalLM\"", "architectures"},
        BadCase{"llama-mha", "hidden_size", "\"128\"", "hidden_size"},
        BadCase{"llama-mha", "hidden_size", "-128", "hidden_size"},
        BadCase{"llama-mha", "hidden_size", "100", "hidden_size"},
        BadCase{"llama-mha", "num_key_value_heads", "3", "num_key_value_heads"},
        BadCase{"llama-mha", "vocab_size", "null", "vocab_size"},
        BadCase{"llama-mha", "rms_norm_eps", "0", "rms_norm_eps"},
        BadCase{"llama-mha", "hidden_act", "\"gelu\"", "hidden_act"},
        BadCase{"llama-mha", "attention_bias", "true", "attention_bias"},
        BadCase{"llama-mha", "rope_scaling", "{\"type\": \"dynamic\", \"factor\": 2.0}", "dynamic"},
        BadCase{"llama-mha", "rope_scaling", "{\"type\": \"linear\"}", "factor"},
        BadCase{"llama-mha", "rope_scaling", "[1, 2]", "rope_scaling"},
        BadCase{"deepseek-v3-tiny", "kv_lora_rank", "null", "kv_lora_rank"},
        BadCase{"deepseek-v3-tiny", "qk_rope_head_dim", "15", "qk_rope_head_dim"},
        BadCase{"deepseek-v3-tiny", "n_group", "3", "n_group"},
        BadCase{"deepseek-v3-tiny", "topk_group", "5", "topk_group"},
        BadCase{"deepseek-v3-tiny", "num_experts_per_tok", "17", "num_experts_per_tok"},
        BadCase{"deepseek-v3-tiny", "topk_method", "\"random\"", "topk_method"},
        BadCase{"deepseek-v3-tiny", "scoring_func", "\"softmax\"", "noaux_tc"},
        BadCase{"deepseek-v3-tiny", "scoring_func", "\"relu\"", "scoring_func"},
        BadCase{"deepseek-v3-tiny", "routed_scaling_factor", "-1", "routed_scaling_factor"},
        BadCase{"deepseek-v3-tiny", "moe_intermediate_size", "0", "moe_intermediate_size"},
        BadCase{"deepseek-v2-lite-tiny", "quantization_config", "{\"quant_method\": \"awq\"}",
                "quant_method"}));

TEST(ModelConfig, RejectsMalformedJson) {
  auto c = parse_model_config("{\"architectures\": [", "broken/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("broken/config.json"), std::string::npos);
  auto d = parse_model_config("[1, 2, 3]", "array/config.json");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("object"), std::string::npos);
}

TEST(ModelConfig, ReadsFp8QuantizationBlocks) {
  std::string json = with_field(fixture_config("deepseek-v3-tiny"), "quantization_config",
                                "{\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", "
                                "\"weight_block_size\": [64, 32]}");
  auto c = parse_model_config(json, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(c->fp8_weights);
  EXPECT_EQ(c->fp8_block_rows, 64);
  EXPECT_EQ(c->fp8_block_cols, 32);
}

TEST(ModelConfig, RealConfigsParse) {
  // The shapes of the published checkpoints, in configs/models/.
  for (const char* name :
       {"deepseek-llm-7b", "deepseek-llm-67b", "deepseek-v2-lite", "deepseek-v3"}) {
    auto c = load_model_config(std::string(DSHPC_SOURCE_DIR) + "/configs/models/" + name + ".json");
    ASSERT_TRUE(c.ok()) << name << ": " << c.status().to_string();
  }
}

}  // namespace
}  // namespace dshpc
