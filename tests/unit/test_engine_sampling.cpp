// Engine::compute_samples (the last stage's sampling where the logits are) against the host
// sampler on the very same logits: a random-weight model on the CPU backend, one step mixing a
// greedy decode, seeded top-k and top-p decodes, a prefill whose logits are all returned (its
// last row is the one sampled) and a prefill chunk that does not sample.
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/sampling.h"
#include "parallel/collectives.h"
#include "worker/engine.h"
#include "worker/model_runtime.h"

namespace dshpc {
namespace {

constexpr const char* kTinyLlama = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_act": "silu", "vocab_size": 1500, "hidden_size": 64, "intermediate_size": 96,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "max_position_embeddings": 128, "rope_theta": 10000.0})";

TEST(EngineSampling, ComputeSamplesDrawsWhatTheHostSamplerDrawsFromTheLogits) {
  const std::string path = ::testing::TempDir() + "engine_sampling_tiny_llama.json";
  std::ofstream(path) << kTinyLlama;
  SoloCollectives tp("tp");
  ModelRuntimeOptions options;
  options.model = path;
  options.random_weights = true;
  options.seed = 3;
  options.kv_block_size = 4;
  options.kv_blocks = 32;
  auto runtime = ModelRuntime::create(options, ModelShard{}, make_cpu_backend(), tp);
  ASSERT_TRUE(runtime.ok()) << runtime.status().to_string();
  Engine& engine = (*runtime)->engine();
  const int64_t vocab = (*runtime)->config().vocab_size;

  BlockPool pool((*runtime)->cache().num_blocks());
  StepPlan plan;
  auto add = [&](int64_t id, std::vector<int32_t> tokens, float temperature, int64_t top_k,
                 float top_p) -> SequenceStep& {
    SequenceStep s;
    s.sequence_id = id;
    s.tokens = std::move(tokens);
    EXPECT_TRUE(pool.reserve(s.block_table, static_cast<int64_t>(s.tokens.size()), 4));
    s.sampling.temperature = temperature;
    s.sampling.top_k = top_k;
    s.sampling.top_p = top_p;
    s.sampling.seed = 100 + static_cast<uint64_t>(id);
    plan.sequences.push_back(std::move(s));
    return plan.sequences.back();
  };
  add(0, {5}, 0.0f, 0, 1.0f);                           // greedy
  add(1, {17}, 0.9f, 40, 1.0f);                         // top-k
  add(2, {8, 9, 10}, 1.4f, 0, 0.9f).all_logits = true;  // top-p; samples from its last row
  add(3, {40, 41}, 1.0f, 0, 1.0f).sample = false;       // a prefill chunk that does not sample
  add(4, {99}, 2.0f, 0, 1.0f);                          // plain temperature over the vocabulary

  const StepTensors step = engine.prepare(plan);
  Mat hidden = engine.hidden_buffer(step.num_tokens);
  engine.run_stage(step, hidden);
  const StepOutput out = engine.compute_logits(plan, hidden);
  ASSERT_EQ(out.num_rows[2], 3);

  int sampled_not_greedy = 0;
  for (uint64_t counter = 0; counter < 16; ++counter) {
    for (SequenceStep& s : plan.sequences) s.sample_counter = counter * 3 + s.sequence_id;
    const std::vector<int32_t> ids = engine.compute_samples(plan, hidden);
    ASSERT_EQ(ids.size(), plan.sequences.size());
    for (size_t i = 0; i < plan.sequences.size(); ++i) {
      const SequenceStep& s = plan.sequences[i];
      if (!s.sample) {
        EXPECT_EQ(ids[i], 0) << "sequence " << i << " does not sample";
        continue;
      }
      const float* last = out.row(static_cast<int64_t>(i), out.num_rows[i] - 1);
      EXPECT_EQ(ids[i], sample_token_cpu(last, vocab, s.sampling, s.sample_counter))
          << "sequence " << i << " counter " << s.sample_counter;
      int32_t greedy = 0;
      argmax_rows_cpu(last, 1, vocab, &greedy);
      sampled_not_greedy += ids[i] != greedy;
    }
  }
  EXPECT_GT(sampled_not_greedy, 10);  // the seeded rows really sample
}

}  // namespace
}  // namespace dshpc
