// Memory (issue 9): a step's workspace reserved up front (Engine::reserve) so that the step then
// allocates nothing, and a reservation the host cannot satisfy answered with RESOURCE_EXHAUSTED
// instead of a crash; each rank's memory figures on their way to rank 0; the /debug/memory
// report built from them; the batch cap and memory failures on /metrics.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/memory_report.h"
#include "coordinator/metrics.h"
#include "gateway_test_fixture.h"
#include "kernels/backend.h"
#include "parallel/collectives.h"
#include "worker/engine.h"
#include "worker/model_runtime.h"
#include "worker/rank_figures.h"

namespace dshpc {
namespace {

using ::testing::HasSubstr;
namespace json = boost::json;

constexpr const char* kTinyLlama = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_act": "silu", "vocab_size": 1500, "hidden_size": 64, "intermediate_size": 96,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "max_position_embeddings": 128, "rope_theta": 10000.0})";

std::unique_ptr<ModelRuntime> random_model(const std::string& config_path, Collectives& tp) {
  ModelRuntimeOptions options;
  options.model = config_path;
  options.random_weights = true;
  options.seed = 7;
  options.kv_block_size = 4;
  options.kv_blocks = 32;
  auto runtime = ModelRuntime::create(options, ModelShard{}, make_cpu_backend(), tp);
  EXPECT_TRUE(runtime.ok()) << runtime.status().to_string();
  return runtime.ok() ? std::move(*runtime) : nullptr;
}

// Three sequences, 9 tokens, 5 logits rows (one prefill returns all its rows).
StepPlan mixed_plan(BlockPool& pool) {
  StepPlan plan;
  plan.return_logits = true;
  int64_t id = 0;
  for (std::vector<int32_t> tokens : {std::vector<int32_t>{3, 4, 5}, {6}, {7, 8, 9, 10, 11}}) {
    SequenceStep s;
    s.sequence_id = id++;
    s.tokens = tokens;
    EXPECT_TRUE(pool.reserve(s.block_table, static_cast<int64_t>(tokens.size()), 4));
    plan.sequences.push_back(std::move(s));
  }
  plan.sequences[0].all_logits = true;
  return plan;
}

// A step within the reservation allocates nothing (Model::scratch would stop the test if a
// reserved width were too small); a reservation the host cannot give fails cleanly, gives the
// workspace back, and the engine still runs afterwards.
void check_reservation(ModelRuntime& runtime) {
  Engine& engine = runtime.engine();
  BlockPool pool(runtime.cache().num_blocks());
  const StepPlan plan = mixed_plan(pool);
  const StepCapacity capacity = step_capacity({plan});
  EXPECT_EQ(capacity.tokens, 9);
  EXPECT_EQ(capacity.sequences, 3);
  EXPECT_EQ(capacity.logits_rows, 5);
  ASSERT_TRUE(engine.reserve(capacity).ok());
  const int64_t reserved = engine.workspace_bytes();
  EXPECT_GT(reserved, 0);
  const StepOutput reference = engine.run(plan);
  EXPECT_EQ(engine.workspace_bytes(), reserved) << "the step grew its workspace";
  EXPECT_EQ(engine.workspace_high_water_bytes(), reserved);

  StepCapacity huge = capacity;
  huge.tokens = int64_t{1} << 40;
  const Status failed = engine.reserve(huge);
  EXPECT_EQ(failed.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(failed.message(), HasSubstr("1099511627776 tokens"));
  engine.release_workspace();
  EXPECT_EQ(engine.workspace_bytes(), 0);
  EXPECT_EQ(engine.workspace_high_water_bytes(), reserved);

  // Without a reservation buffers grow on demand again, to the same results.
  const StepOutput again = engine.run(plan);
  EXPECT_EQ(again.logits, reference.logits);
}

TEST(Workspace, ReservedStepAllocatesNothingLlama) {
  const std::string path = ::testing::TempDir() + "workspace_tiny_llama.json";
  std::ofstream(path) << kTinyLlama;
  SoloCollectives tp("tp");
  std::unique_ptr<ModelRuntime> runtime = random_model(path, tp);
  ASSERT_NE(runtime, nullptr);
  check_reservation(*runtime);
}

TEST(Workspace, ReservedStepAllocatesNothingMlaMoe) {
  SoloCollectives tp("tp");
  std::unique_ptr<ModelRuntime> runtime =
      random_model(std::string(DSHPC_FIXTURES_DIR) + "/models/deepseek-v3-tiny/config.json", tp);
  ASSERT_NE(runtime, nullptr);
  check_reservation(*runtime);
}

MemoryFigures some_memory() {
  MemoryFigures m;
  m.present = true;
  m.dp = 1;
  m.pp = 0;
  m.tp = 1;
  m.host = "node7";
  m.backend = "cpu";
  m.weight_bytes = 1000;
  m.kv_cache_bytes = 64 * 512;
  m.kv_cache_blocks = 64;
  m.workspace_bytes = 300;
  m.workspace_high_water_bytes = 900;
  m.workspace_failures = 2;
  m.process_rss_bytes = 5000;
  m.host_total_bytes = 8000;
  m.host_available_bytes = 6000;
  return m;
}

TEST(RankFigures, MemoryFiguresRoundTrip) {
  RankFigures figures;
  figures.rank = 3;
  figures.memory = some_memory();
  figures.memory.device_total_bytes = 80;
  figures.memory.pool_cached_bytes = 0;
  const std::vector<uint8_t> bytes = encode_rank_figures(figures);
  StatusOr<RankFigures> back = decode_rank_figures(bytes.data(), bytes.size());
  ASSERT_TRUE(back.ok()) << back.status().message();
  const MemoryFigures& m = back->memory;
  EXPECT_TRUE(m.present);
  EXPECT_EQ(m.dp, 1);
  EXPECT_EQ(m.tp, 1);
  EXPECT_EQ(m.host, "node7");
  EXPECT_EQ(m.backend, "cpu");
  EXPECT_EQ(m.weight_bytes, 1000);
  EXPECT_EQ(m.kv_cache_blocks, 64);
  EXPECT_EQ(m.workspace_high_water_bytes, 900);
  EXPECT_EQ(m.workspace_failures, 2);
  EXPECT_EQ(m.device_total_bytes, 80);
  EXPECT_EQ(m.device_free_bytes, -1);
  EXPECT_EQ(m.pool_cached_bytes, 0);
  EXPECT_EQ(m.host_available_bytes, 6000);
  // The host name is length-checked like everything else.
  std::vector<uint8_t> cut(bytes.begin(), bytes.end() - 40);
  EXPECT_FALSE(decode_rank_figures(cut.data(), cut.size()).ok());
}

TEST(RankFigures, ThisProcessMemoryIsKnownOnLinux) {
  EXPECT_GT(process_rss_bytes(), 0);
  int64_t total = 0, available = 0;
  host_memory_bytes(&total, &available);
  EXPECT_GT(total, 0);
  EXPECT_GT(available, 0);
  EXPECT_LE(available, total);
}

TEST(MemoryReport, JsonShapePerRank) {
  ServiceStatus status;
  status.step_token_cap = 512;
  status.step_token_limit = 2048;
  status.memory_failures = 3;
  status.kv_block_size = 16;
  status.replica_kv_blocks_total = {60, 60};
  status.replica_kv_blocks_used = {0, 12};
  const auto now = Metrics::Clock::now();
  std::vector<Metrics::RankMemory> ranks = {
      {.rank = 2, .memory = some_memory(), .received = now - std::chrono::milliseconds(1500)}};
  const json::object body = memory_report(ranks, status, 3, now);

  EXPECT_EQ(body.at("object").as_string(), "memory_report");
  EXPECT_EQ(body.at("world_size").as_int64(), 3);
  EXPECT_EQ(body.at("ranks_reported").as_int64(), 1);
  EXPECT_EQ(body.at("kv_block_size").as_int64(), 16);
  const json::object& batch = body.at("batch").as_object();
  EXPECT_EQ(batch.at("token_cap").as_int64(), 512);
  EXPECT_EQ(batch.at("token_limit").as_int64(), 2048);
  EXPECT_EQ(batch.at("memory_failures").as_int64(), 3);

  const json::array& entries = body.at("ranks").as_array();
  ASSERT_EQ(entries.size(), 3u);
  for (int r : {0, 1}) {  // not reported yet: the rank and nothing else
    const json::object& missing = entries[r].as_object();
    EXPECT_EQ(missing.at("rank").as_int64(), r);
    EXPECT_FALSE(missing.at("reported").as_bool());
    EXPECT_EQ(missing.size(), 2u);
  }
  const json::object& rank = entries[2].as_object();
  EXPECT_EQ(rank.at("rank").as_int64(), 2);
  EXPECT_TRUE(rank.at("reported").as_bool());
  EXPECT_NEAR(rank.at("age_seconds").as_double(), 1.5, 0.01);
  EXPECT_EQ(rank.at("host").as_string(), "node7");
  EXPECT_EQ(rank.at("dp").as_int64(), 1);
  EXPECT_EQ(rank.at("pp").as_int64(), 0);
  EXPECT_EQ(rank.at("tp").as_int64(), 1);
  EXPECT_EQ(rank.at("backend").as_string(), "cpu");
  EXPECT_EQ(rank.at("weights_bytes").as_int64(), 1000);
  // KV: the replica's blocks (dp 1) as the scheduler counts them, the rank's own bytes.
  const json::object& kv = rank.at("kv_cache").as_object();
  EXPECT_EQ(kv.at("blocks_total").as_int64(), 60);
  EXPECT_EQ(kv.at("blocks_used").as_int64(), 12);
  EXPECT_EQ(kv.at("blocks_free").as_int64(), 48);
  EXPECT_EQ(kv.at("blocks_allocated").as_int64(), 64);
  EXPECT_EQ(kv.at("bytes_per_block").as_int64(), 512);
  EXPECT_EQ(kv.at("bytes").as_int64(), 64 * 512);
  EXPECT_EQ(kv.at("bytes_used").as_int64(), 12 * 512);
  const json::object& workspace = rank.at("workspace").as_object();
  EXPECT_EQ(workspace.at("reserved_bytes").as_int64(), 300);
  EXPECT_EQ(workspace.at("high_water_bytes").as_int64(), 900);
  EXPECT_EQ(workspace.at("reservation_failures").as_int64(), 2);
  // What the CPU backend does not know is null, not a made-up number.
  const json::object& device = rank.at("device").as_object();
  for (const char* key : {"total_bytes", "free_bytes", "pool_in_use_bytes", "pool_cached_bytes"}) {
    EXPECT_TRUE(device.at(key).is_null()) << key;
  }
  const json::object& host = rank.at("host_memory").as_object();
  EXPECT_EQ(host.at("process_rss_bytes").as_int64(), 5000);
  EXPECT_EQ(host.at("total_bytes").as_int64(), 8000);
  EXPECT_EQ(host.at("available_bytes").as_int64(), 6000);
}

TEST(MemoryReport, MetricsKeepEachRanksLatestMemoryFigures) {
  Metrics metrics(MetricsConfig{.model = "m", .world_size = 2});
  RankFigures figures;
  figures.rank = 1;
  metrics.set_rank_figures(figures);  // no memory figures: not listed
  EXPECT_TRUE(metrics.rank_memory().empty());
  figures.memory = some_memory();
  metrics.set_rank_figures(figures);
  figures.memory.workspace_bytes = 444;
  metrics.set_rank_figures(figures);
  const std::vector<Metrics::RankMemory> ranks = metrics.rank_memory();
  ASSERT_EQ(ranks.size(), 1u);
  EXPECT_EQ(ranks[0].rank, 1);
  EXPECT_EQ(ranks[0].memory.workspace_bytes, 444);
}

TEST(MemoryReport, BatchCapAndMemoryFailuresOnMetrics) {
  Metrics metrics(MetricsConfig{.model = "m"});
  ServiceStatus status;
  status.state = ServiceState::kReady;
  status.step_token_cap = 96;
  status.memory_failures = 2;
  metrics.set_service_state(status);
  status.memory_failures = 5;
  metrics.set_service_state(status);
  const std::string text = metrics.render();
  EXPECT_THAT(text, HasSubstr("dshpc_batch_token_cap{model=\"m\"} 96"));
  EXPECT_THAT(text, HasSubstr("dshpc_step_memory_failures_total{model=\"m\"} 5"));
}

using GatewayMemory = gateway_test::GatewayFixture;

// The route: GET only, JSON from the gateway's metrics (no rank has reported to this one), and
// counted under its own endpoint label.
TEST_F(GatewayMemory, DebugMemoryRoute) {
  start();
  const auto result = get("/debug/memory");
  EXPECT_EQ(result.status, 200) << result.body;
  const json::value body = json_of(result);
  ASSERT_TRUE(body.is_object());
  EXPECT_EQ(body.at("object").as_string(), "memory_report");
  EXPECT_EQ(body.at("ranks_reported").as_int64(), 0);
  ASSERT_EQ(body.at("ranks").as_array().size(), 1u);
  EXPECT_FALSE(body.at("ranks").as_array()[0].at("reported").as_bool());
  expect_error(post("/debug/memory", "{}"), 405);
  EXPECT_THAT(get("/metrics").body, HasSubstr("endpoint=\"/debug/memory\""));
}

}  // namespace
}  // namespace dshpc
