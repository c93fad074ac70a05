// Everything one rank needs to run a model: the config, the weights (from a checkpoint or seeded
// random values), the backend, this rank's model shard, its KV cache and the step engine.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/backend.h"
#include "parallel/collectives.h"
#include "worker/checkpoint.h"
#include "worker/engine.h"
#include "worker/kv_cache.h"
#include "worker/model.h"
#include "worker/model_config.h"
#include "worker/weight_source.h"

namespace dshpc {

struct ModelRuntimeOptions {
  std::string model;  // a checkpoint directory, an HDF5 checkpoint, or a config.json (random)
  bool random_weights = false;  // seeded random weights of the config's shapes (no checkpoint)
  uint64_t seed = 0;
  int64_t kv_block_size = 16;
  int64_t kv_blocks = 0;  // 0: sized automatically (see kv_cache_budget_bytes)
  int64_t kv_cache_budget_bytes = int64_t{2} << 30;    // CPU
  double kv_memory_fraction = 0.9;                     // devices: of the memory left after weights
  int64_t workspace_reserve_bytes = int64_t{4} << 30;  // devices: kept for activations
  // Called during loading with this rank's weight bytes done and total (see Model::load).
  Model::LoadProgress on_load_progress;
};

// Reads and validates the config only (for layout checks before any weight is read).
StatusOr<ModelConfig> load_config_for(const ModelRuntimeOptions& options);

class ModelRuntime {
 public:
  // Loads this rank's shard of the model on `backend` with tensor-parallel group `tp`.
  static StatusOr<std::unique_ptr<ModelRuntime>> create(const ModelRuntimeOptions& options,
                                                        ModelShard shard,
                                                        std::unique_ptr<Backend> backend,
                                                        Collectives& tp);

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return *backend_; }
  Model& model() { return *model_; }
  KvCache& cache() { return *cache_; }
  Engine& engine() { return *engine_; }
  const std::string& source_description() const { return source_description_; }
  // What loading this rank's weights read from the checkpoint, and how long it took.
  const WeightReadStats& load_stats() const { return load_stats_; }
  double load_seconds() const { return load_seconds_; }

 private:
  ModelConfig config_;
  std::unique_ptr<Backend> backend_;
  std::optional<Checkpoint> checkpoint_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<Engine> engine_;
  std::string source_description_;
  WeightReadStats load_stats_;
  double load_seconds_ = 0.0;
};

// A free list of KV cache blocks (the single-sequence drivers' allocator; the serving scheduler
// keeps its own block manager).
class BlockPool {
 public:
  explicit BlockPool(int64_t num_blocks);
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  // Grows `table` so that it covers `tokens` positions; false when the pool runs out.
  bool reserve(std::vector<int32_t>& table, int64_t tokens, int64_t block_size);
  void release(std::vector<int32_t>& table);

 private:
  std::vector<int32_t> free_;
};

}  // namespace dshpc
