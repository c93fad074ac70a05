// The fixture models end to end on the CUDA backend against the CPU backend through the step
// engine: a batched prefill of three prompts, then decode steps, with the paged cache. Also the
// memory pool's promise: once the largest step has run, a step allocates no device memory.
#include <algorithm>
#include <cmath>
#include <string>

#include "gpu_test_util.h"
#include "parallel/collectives.h"
#include "worker/model_runtime.h"

namespace dshpc::gpu_test {
namespace {

// Logits tolerances against the CPU (float32) reference. float32 mode: summation order through a
// few layers (measured ~7e-6 on the fixtures). bf16 mode, smooth part: every weight and activation
// rounded by up to 2^-9, ~30 roundings per token through 3-4 layers, errors growing like
// √30 · 2^-9 ≈ 1.1 % of the logits' scale (rms ≈ 2 on the fixtures), worst of ~10^4 logits about
// 4.5σ: ≈ 0.1; we allow 0.25. MoE models are not smooth: when two experts' choice values are
// closer than the bf16 noise of the router input, the two sides pick different experts and that
// token's logits move by O(1) (as fp32 and bf16 runs of the Hugging Face model do). So for MoE
// models the smooth bound must hold for most positions (kMoeSmoothFraction), and every position
// must keep the shape of its logits (cosine similarity ≥ kMinCosine; a flip measured 0.96).
constexpr double kF32LogitsAtol = 2e-4;
constexpr double kBf16LogitsAtol = 0.25;
constexpr double kMoeSmoothFraction = 0.75;
constexpr double kMinCosine = 0.9;

struct Trace {
  std::vector<std::vector<float>> logits;  // per step, all rows
  int64_t allocations_after_warmup = -1;
  int64_t allocations_at_end = -1;
  int64_t graph_launches = 0;
  int64_t moe_small = 0;                 // MoE layers run through the small-step path
  int64_t moe_shared_side = 0;           // … whose shared experts ran beside the router
  int64_t moe_shared_side_captured = 0;  // … of which recorded in a graph
};

Trace run_model(const std::string& model_dir, std::unique_ptr<Backend> backend,
                const std::vector<std::vector<int32_t>>& prompts, int decode_steps,
                const std::vector<std::vector<int32_t>>* forced_tokens, bool random_weights = false,
                bool graphs = true) {
  SoloCollectives tp("tp");
  ModelRuntimeOptions options;
  options.model = model_dir;
  options.random_weights = random_weights;
  options.kv_blocks = 64;
  options.kv_block_size = 16;
  const bool is_cuda = backend->name().rfind("cuda", 0) == 0;
  auto runtime = ModelRuntime::create(options, ModelShard{}, std::move(backend), tp);
  EXPECT_TRUE(runtime.ok()) << runtime.status().message();
  Trace trace;
  if (!runtime.ok()) return trace;
  ModelRuntime& rt = **runtime;
  rt.engine().set_graphs_enabled(graphs);
  BlockPool pool(rt.cache().num_blocks());
  std::vector<std::vector<int32_t>> tables(prompts.size());
  std::vector<int32_t> lengths(prompts.size(), 0);
  std::vector<int32_t> last(prompts.size(), 0);
  for (int step = 0; step <= decode_steps; ++step) {
    StepPlan plan;
    for (size_t s = 0; s < prompts.size(); ++s) {
      SequenceStep seq;
      seq.sequence_id = static_cast<int64_t>(s);
      seq.tokens = step == 0 ? prompts[s] : std::vector<int32_t>{last[s]};
      seq.start_position = lengths[s];
      seq.all_logits = step == 0;
      EXPECT_TRUE(pool.reserve(tables[s], lengths[s] + seq.tokens.size(), 16));
      seq.block_table = tables[s];
      lengths[s] += static_cast<int32_t>(seq.tokens.size());
      plan.sequences.push_back(seq);
    }
    const StepOutput out = rt.engine().run(plan);
    trace.logits.push_back(out.logits);
    for (size_t s = 0; s < prompts.size(); ++s) {
      const float* row = out.row(static_cast<int64_t>(s), out.num_rows[s] - 1);
      last[s] = forced_tokens ? (*forced_tokens)[s][step]
                              : static_cast<int32_t>(std::max_element(row, row + out.vocab) - row);
    }
    if (is_cuda && step == 1)
      trace.allocations_after_warmup = cuda_memory_stats(rt.backend()).device_allocations;
  }
  if (is_cuda) {
    trace.allocations_at_end = cuda_memory_stats(rt.backend()).device_allocations;
    trace.graph_launches = cuda_path_counters(rt.backend()).graph_launches;
    trace.moe_small = cuda_path_counters(rt.backend()).moe_small;
    trace.moe_shared_side = cuda_path_counters(rt.backend()).moe_shared_side;
    trace.moe_shared_side_captured = cuda_path_counters(rt.backend()).moe_shared_side_captured;
  }
  return trace;
}

class GpuModel : public ::testing::TestWithParam<std::tuple<std::string, DType>> {};

TEST_P(GpuModel, LogitsMatchCpuAndStepsAllocateNothing) {
  const auto [model, dtype] = GetParam();
  const std::string dir = std::string(DSHPC_FIXTURES_DIR) + "/models/" + model;
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 17, 300, 5, 999},
      {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
      {900, 800, 700, 600, 500, 400, 300, 200, 100, 50, 25, 12, 6, 3, 1, 0, 1023}};
  constexpr int kDecodeSteps = 6;
  const Trace cpu = run_model(dir, make_cpu_backend(), prompts, kDecodeSteps, nullptr);
  // The GPU is fed the CPU's greedy tokens, so both see the same sequences.
  std::vector<std::vector<int32_t>> forced(prompts.size());
  for (int step = 0; step <= kDecodeSteps && step < static_cast<int>(cpu.logits.size()); ++step) {
    const int64_t vocab = 1024;
    // Last row of each sequence: prefill has all rows, decode one per sequence.
    int64_t row = 0;
    for (size_t s = 0; s < prompts.size(); ++s) {
      row += step == 0 ? static_cast<int64_t>(prompts[s].size()) : 1;
      const float* r = cpu.logits[step].data() + (row - 1) * vocab;
      forced[s].push_back(static_cast<int32_t>(std::max_element(r, r + vocab) - r));
    }
  }
  std::unique_ptr<Backend> backend = cuda_backend(dtype);
  ASSERT_NE(backend, nullptr);
  const Trace gpu = run_model(dir, std::move(backend), prompts, kDecodeSteps, &forced);
  ASSERT_EQ(gpu.logits.size(), cpu.logits.size());
  const bool moe = model.rfind("deepseek", 0) == 0;
  const double atol = dtype == DType::kF32 ? kF32LogitsAtol : kBf16LogitsAtol;
  const int64_t vocab = 1024;
  int64_t positions = 0, smooth = 0;
  double worst = 0.0, min_cosine = 1.0;
  for (size_t step = 0; step < cpu.logits.size(); ++step) {
    ASSERT_EQ(gpu.logits[step].size(), cpu.logits[step].size());
    for (size_t row = 0; row * vocab < cpu.logits[step].size(); ++row) {
      const float* g = gpu.logits[step].data() + row * vocab;
      const float* c = cpu.logits[step].data() + row * vocab;
      double row_err = 0.0, dot = 0.0, gg = 0.0, cc = 0.0;
      for (int64_t i = 0; i < vocab; ++i) {
        const double d = std::fabs(static_cast<double>(g[i]) - c[i]);
        if (!(d <= row_err)) row_err = std::isnan(d) ? INFINITY : d;
        dot += static_cast<double>(g[i]) * c[i];
        gg += static_cast<double>(g[i]) * g[i];
        cc += static_cast<double>(c[i]) * c[i];
      }
      const double cosine = dot / std::sqrt(gg * cc);
      ++positions;
      smooth += row_err <= atol;
      worst = std::max(worst, row_err);
      min_cosine = std::min(min_cosine, std::isnan(cosine) ? -1.0 : cosine);
      if (dtype == DType::kF32 || !moe) {
        EXPECT_LE(row_err, atol) << "step " << step << " row " << row;
      }
    }
  }
  std::printf(
      "[ model ] %s %s: %lld positions, max |gpu - cpu| %.3g, %lld within %.3g, min cosine %.6f\n",
      model.c_str(), dtype == DType::kF32 ? "f32" : "bf16", static_cast<long long>(positions),
      worst, static_cast<long long>(smooth), atol, min_cosine);
  if (dtype == DType::kBF16 && moe) {
    EXPECT_GE(static_cast<double>(smooth), kMoeSmoothFraction * positions)
        << "positions within the smooth bf16 bound " << atol;
  }
  EXPECT_GE(min_cosine, kMinCosine);
  // Steps 2 … 6 are no larger than step 1: the pool serves them all from its cache.
  EXPECT_GT(gpu.allocations_after_warmup, 0);
  EXPECT_EQ(gpu.allocations_at_end, gpu.allocations_after_warmup)
      << "cudaMalloc ran during steady-state decode steps";
}

// Decode steps replayed from CUDA graphs give bit-identical logits to the same steps run eagerly
// (the same kernels on the same data), and replays do happen. Random-weight configs: a Llama with
// head_dim 64 (split-key decode attention), and a DeepSeek-V2 with MLA (latent 64 + rope 16: the
// split-key MLA decode kernel over the latent cache) and MoE (the device-only small-step path,
// 3 of 8 experts per token, the shared experts on a branch of their own beside the router).
void expect_graph_replay_equals_eager(const std::string& name, const char* config_json,
                                      int64_t vocab, bool expect_moe_small) {
  const std::string config = testing::TempDir() + "/graph_" + name + "_config.json";
  {
    std::FILE* f = std::fopen(config.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(config_json, f);
    std::fclose(f);
  }
  const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4, 5, 6, 7}, {9, 8, 7}, {100}};
  constexpr int kDecodeSteps = 12;
  std::unique_ptr<Backend> eager_backend = cuda_backend(DType::kBF16);
  ASSERT_NE(eager_backend, nullptr);
  const Trace eager = run_model(config, std::move(eager_backend), prompts, kDecodeSteps, nullptr,
                                /*random_weights=*/true, /*graphs=*/false);
  std::vector<std::vector<int32_t>> forced(prompts.size());
  for (size_t step = 0; step < eager.logits.size(); ++step) {
    int64_t row = 0;
    for (size_t s = 0; s < prompts.size(); ++s) {
      row += step == 0 ? static_cast<int64_t>(prompts[s].size()) : 1;
      const float* r = eager.logits[step].data() + (row - 1) * vocab;
      forced[s].push_back(static_cast<int32_t>(std::max_element(r, r + vocab) - r));
    }
  }
  std::unique_ptr<Backend> graph_backend = cuda_backend(DType::kBF16);
  const Trace graphed = run_model(config, std::move(graph_backend), prompts, kDecodeSteps, &forced,
                                  /*random_weights=*/true, /*graphs=*/true);
  ASSERT_EQ(graphed.logits.size(), eager.logits.size());
  for (size_t step = 0; step < eager.logits.size(); ++step) {
    EXPECT_EQ(graphed.logits[step], eager.logits[step]) << name << ", step " << step;
  }
  EXPECT_GE(graphed.graph_launches, kDecodeSteps - 2) << name << ": decode steps were not replayed";
  EXPECT_EQ(eager.graph_launches, 0);
  if (expect_moe_small) {
    EXPECT_GT(eager.moe_small, 0) << name << ": the MoE layers did not take the small-step path";
    // The shared experts' side branch, eager and captured (a fork and join inside the graph).
    EXPECT_GT(eager.moe_shared_side, 0) << name;
    EXPECT_EQ(eager.moe_shared_side_captured, 0) << name;
    EXPECT_GT(graphed.moe_shared_side_captured, 0) << name;
  }
}

TEST(GpuGraphs, DecodeReplayEqualsEagerBitForBitLlama) {
  expect_graph_replay_equals_eager("llama", R"({"architectures": ["LlamaForCausalLM"],
      "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
      "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 3,
      "vocab_size": 1000, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
      "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": false,
      "torch_dtype": "bfloat16"})",
                                   1000, false);
}

TEST(GpuGraphs, DecodeReplayEqualsEagerBitForBitDeepseekV2MlaMoe) {
  expect_graph_replay_equals_eager("deepseek_v2", R"({"architectures": ["DeepseekV2ForCausalLM"],
      "model_type": "deepseek_v2", "vocab_size": 1024, "hidden_size": 256,
      "intermediate_size": 512, "moe_intermediate_size": 128, "num_hidden_layers": 3,
      "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": null,
      "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
      "n_routed_experts": 8, "n_shared_experts": 2, "num_experts_per_tok": 3,
      "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1, "topk_group": 1,
      "topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": false,
      "routed_scaling_factor": 1.0, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
      "rope_theta": 10000.0, "rope_scaling": null, "hidden_act": "silu",
      "tie_word_embeddings": false, "torch_dtype": "bfloat16"})",
                                   1024, true);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuModel,
                         ::testing::Combine(::testing::Values("llama-mha", "llama-gqa-linear",
                                                              "deepseek-v2-lite-tiny",
                                                              "deepseek-v3-tiny"),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         [](const ::testing::TestParamInfo<std::tuple<std::string, DType>>& info) {
                           std::string name =
                               std::get<0>(info.param) + "_" +
                               (std::get<1>(info.param) == DType::kF32 ? "f32" : "bf16");
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace dshpc::gpu_test
