// Rank 0's serving state, shared by `serve` and `batch`: the tokenizer, the EngineService and the
// HTTP gateway. It is started before the weights load (the port answers 503 meanwhile) and opened
// once the cluster has agreed on its KV cache.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "common/options.h"
#include "common/status.h"
#include "coordinator/engine_service.h"
#include "coordinator/gateway.h"
#include "coordinator/metrics.h"
#include "coordinator/scheduler_config.h"
#include "coordinator/server_config.h"
#include "coordinator/tokenizer.h"
#include "worker/cluster.h"

namespace dshpc {

// --served-model-name, or the model path's last component without ".json", ".h5" or ".hdf5".
std::string served_model_name(const Options& options);

// How often rank 0 asks the other ranks for their figures (Cluster::enable_rank_figures): often
// enough for a 10 s scrape interval, rare enough to cost nothing (one small message per rank).
inline constexpr std::chrono::milliseconds kRankFiguresInterval{1000};

// --tokenizer when given (on the command line or by the deployment file); otherwise the tokenizer
// stored in an HDF5 checkpoint given as --model, when it stores one; otherwise --tokenizer's
// default (the built-in tokenizer).
StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer_for(const Options& options);

struct Frontend {
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<EngineService> service;
  std::shared_ptr<Metrics> metrics;  // the one registry behind GET /metrics
  std::unique_ptr<MetricsStepObserver> step_metrics;
  std::unique_ptr<Gateway> gateway;

  // Loads the tokenizer (load_tokenizer_for) and binds the gateway's port with a service that is
  // still loading. `world_size` sizes the per-rank series.
  Status start(const Options& options, const GatewayConfig& config, int world_size);
  // Configures the service from the batching options and the cluster's KV cache, and opens it:
  // steps run on `cluster` from the thread that calls service->run(), and the ranks' figures
  // collected with each step and keepalive go to `metrics`.
  StatusOr<SchedulerConfig> open(const Options& options, Cluster& cluster);
};

}  // namespace dshpc
