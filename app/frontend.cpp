#include "app/frontend.h"

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

#include "worker/h5_checkpoint.h"

namespace dshpc {
namespace {

// The tokenizer stored in an HDF5 checkpoint (tokenizer.json and, when stored,
// tokenizer_config.json), or nullptr when it stores none. The files go through a private
// temporary directory because the tokenizer loads from files.
StatusOr<std::unique_ptr<Tokenizer>> load_stored_tokenizer(const std::string& model) {
  ASSIGN_OR_RETURN(std::unique_ptr<H5Checkpoint> checkpoint, H5Checkpoint::open(model));
  auto tokenizer_json = checkpoint->read_file("tokenizer.json");
  if (!tokenizer_json.ok()) {
    if (tokenizer_json.status().code() == StatusCode::kNotFound) {
      return std::unique_ptr<Tokenizer>();
    }
    return tokenizer_json.status();
  }
  auto config_json = checkpoint->read_file("tokenizer_config.json");
  if (!config_json.ok() && config_json.status().code() != StatusCode::kNotFound) {
    return config_json.status();
  }
  std::string dir = (std::filesystem::temp_directory_path() / "dshpc-tokenizer-XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) return internal_error("mkdtemp " + dir + " failed");
  const std::string json_path = dir + "/tokenizer.json";
  const std::string config_path = config_json.ok() ? dir + "/tokenizer_config.json" : "";
  std::ofstream(json_path, std::ios::binary) << *tokenizer_json;
  if (config_json.ok()) std::ofstream(config_path, std::ios::binary) << *config_json;
  auto tokenizer = Tokenizer::load_files(json_path, config_path);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (!tokenizer.ok()) return tokenizer.status().with_context(model + ":/files/tokenizer.json");
  return std::move(*tokenizer);
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer_for(const Options& options) {
  const std::string model = options.get("model");
  if (!options.given("tokenizer") && is_hdf5_file(model)) {
    ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> stored, load_stored_tokenizer(model));
    if (stored) return stored;
  }
  return Tokenizer::load(options.get("tokenizer"));
}

std::string served_model_name(const Options& options) {
  if (!options.get("served-model-name").empty()) return options.get("served-model-name");
  std::string name = options.get("model");
  while (!name.empty() && name.back() == '/') name.pop_back();
  if (size_t slash = name.rfind('/'); slash != std::string::npos) name = name.substr(slash + 1);
  for (const std::string suffix : {".json", ".h5", ".hdf5"}) {
    if (name.size() > suffix.size() && name.ends_with(suffix))
      name.resize(name.size() - suffix.size());
  }
  return name.empty() ? "deepseek" : name;
}

Status Frontend::start(const Options& options, const GatewayConfig& config, int world_size) {
  ASSIGN_OR_RETURN(tokenizer, load_tokenizer_for(options));
  EngineServiceOptions loading;  // replaced by open() once the KV cache is known
  loading.scheduler.kv_blocks = 1;
  loading.scheduler.max_model_len = 2;
  service = std::make_unique<EngineService>(loading);
  metrics = std::make_shared<Metrics>(
      MetricsConfig{.model = config.served_model_name, .world_size = world_size});
  step_metrics = std::make_unique<MetricsStepObserver>(*metrics);
  service->set_observer(step_metrics.get());
  gateway = std::make_unique<Gateway>(config, *service, *tokenizer, metrics);
  return gateway->start();
}

StatusOr<SchedulerConfig> Frontend::open(const Options& options, Cluster& cluster) {
  const ModelConfig& config = cluster.config();
  ASSIGN_OR_RETURN(
      SchedulerConfig scheduler,
      scheduler_config_from_options(options, cluster.kv_blocks(), cluster.kv_block_size(),
                                    config.max_position_embeddings));
  EngineServiceOptions service_options;
  service_options.scheduler = scheduler;
  service_options.replicas = cluster.replicas();
  service_options.eos_token_ids = config.eos_token_ids;
  service_options.vocab_size = config.vocab_size;
  // The loop's idle keepalives are what the other ranks' wait for rank 0 is measured against.
  service_options.keepalive_interval = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::duration<double>(cluster.liveness().keepalive_interval_s));
  service_options.keepalive_interval =
      std::max(service_options.keepalive_interval, std::chrono::milliseconds(1));
  service->reconfigure(service_options);
  cluster.promise_keepalives();
  cluster.enable_rank_figures(kRankFiguresInterval);
  Metrics* m = metrics.get();
  auto collect = [&cluster, m] {
    for (const RankFigures& figures : cluster.take_rank_figures()) m->set_rank_figures(figures);
  };
  service->set_ready(
      [&cluster, collect](const std::vector<StepPlan>& plans) {
        StatusOr<std::vector<StepOutput>> outputs = cluster.try_step(plans);
        collect();
        return outputs;
      },
      [&cluster, collect] {
        cluster.keepalive();
        collect();
      });
  return scheduler;
}

}  // namespace dshpc
