#include "app/frontend.h"

namespace dshpc {

std::string served_model_name(const Options& options) {
  if (!options.get("served-model-name").empty()) return options.get("served-model-name");
  std::string name = options.get("model");
  while (!name.empty() && name.back() == '/') name.pop_back();
  if (size_t slash = name.rfind('/'); slash != std::string::npos) name = name.substr(slash + 1);
  if (name.size() > 5 && name.substr(name.size() - 5) == ".json") name.resize(name.size() - 5);
  return name.empty() ? "deepseek" : name;
}

Status Frontend::start(const std::string& tokenizer_dir, const GatewayConfig& config,
                       int world_size) {
  ASSIGN_OR_RETURN(tokenizer, Tokenizer::load(tokenizer_dir));
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
  service->reconfigure(service_options);
  cluster.enable_rank_figures(kRankFiguresInterval);
  Metrics* m = metrics.get();
  auto collect = [&cluster, m] {
    for (const RankFigures& figures : cluster.take_rank_figures()) m->set_rank_figures(figures);
  };
  service->set_ready(
      [&cluster, collect](const std::vector<StepPlan>& plans) {
        std::vector<StepOutput> outputs = cluster.step(plans);
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
