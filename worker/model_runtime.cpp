#include "worker/model_runtime.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>

#include "common/json_fields.h"
#include "worker/h5_checkpoint.h"

namespace dshpc {
namespace {

bool is_directory(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

StatusOr<ModelConfig> load_config_for(const ModelRuntimeOptions& options) {
  if (options.model.empty()) return invalid_argument("--model is required");
  if (is_directory(options.model)) {
    return load_model_config(options.model + "/config.json");
  }
  if (!options.random_weights && is_hdf5_file(options.model)) {
    ASSIGN_OR_RETURN(std::unique_ptr<H5Checkpoint> checkpoint, H5Checkpoint::open(options.model));
    return parse_model_config(checkpoint->config_json(), options.model + ":/files/config.json");
  }
  if (!options.random_weights) {
    return invalid_argument("--model " + options.model +
                            " is neither a checkpoint directory nor a dshpc HDF5 checkpoint (a "
                            "config.json file needs --random-weights)");
  }
  return load_model_config(options.model);
}

StatusOr<std::unique_ptr<ModelRuntime>> ModelRuntime::create(const ModelRuntimeOptions& options,
                                                             ModelShard shard,
                                                             std::unique_ptr<Backend> backend,
                                                             Collectives& tp) {
  std::unique_ptr<ModelRuntime> rt(new ModelRuntime());
  ASSIGN_OR_RETURN(rt->config_, load_config_for(options));
  rt->backend_ = std::move(backend);
  if (shard.layer_end < 0) shard.layer_end = rt->config_.num_layers;
  RETURN_IF_ERROR(Model::check_shard(rt->config_, shard));

  std::unique_ptr<WeightSource> source;
  if (options.random_weights) {
    source = make_random_source(options.seed, Model::expected_tensors(rt->config_));
  } else if (is_hdf5_file(options.model)) {
    // Opened for the load only: each rank reads its hyperslabs, then the file is closed.
    ASSIGN_OR_RETURN(std::unique_ptr<H5Checkpoint> checkpoint, H5Checkpoint::open(options.model));
    if (rt->config_.fp8_weights) {
      checkpoint->set_fp8_block(rt->config_.fp8_block_rows, rt->config_.fp8_block_cols);
    }
    source = std::move(checkpoint);
  } else {
    ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::open(options.model));
    rt->checkpoint_.emplace(std::move(checkpoint));
    if (rt->config_.fp8_weights) {
      rt->checkpoint_->set_fp8_block(rt->config_.fp8_block_rows, rt->config_.fp8_block_cols);
    }
    source = make_checkpoint_source(*rt->checkpoint_);
  }
  rt->source_description_ = source->describe();
  const auto load_start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(rt->model_, Model::load(rt->config_, shard, *source, *rt->backend_, tp,
                                           options.on_load_progress));
  rt->load_seconds_ =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  rt->load_stats_ = source->read_stats();

  KvCacheSpec spec = rt->model_->kv_cache_spec(options.kv_block_size);
  int64_t blocks = options.kv_blocks;
  if (blocks <= 0) {
    const int64_t per_block =
        spec.bytes_per_block(static_cast<int64_t>(dtype_size(rt->backend_->activation_dtype())));
    const int64_t free_bytes = rt->backend_->free_memory_bytes();
    if (free_bytes > 0) {
      // A device: the given fraction of the memory left after the weights, less a reserve for
      // activations and workspace.
      const int64_t usable =
          static_cast<int64_t>(options.kv_memory_fraction * static_cast<double>(free_bytes)) -
          options.workspace_reserve_bytes;
      blocks = std::max<int64_t>(1, usable / per_block);
    } else {
      // The CPU: enough for a few sequences of the full context, within the memory budget.
      const int64_t wanted =
          8 * ((rt->config_.max_position_embeddings + spec.block_size - 1) / spec.block_size);
      blocks = std::max<int64_t>(1, std::min(wanted, options.kv_cache_budget_bytes / per_block));
    }
  }
  rt->cache_ = std::make_unique<KvCache>(*rt->backend_, spec, blocks);
  rt->engine_ = std::make_unique<Engine>(*rt->model_, *rt->backend_, *rt->cache_);
  return rt;
}

BlockPool::BlockPool(int64_t num_blocks) {
  // Hand blocks out from the top so that tables are not trivially 0, 1, 2 … (tests the paging).
  for (int64_t b = 0; b < num_blocks; ++b) free_.push_back(static_cast<int32_t>(b));
}

bool BlockPool::reserve(std::vector<int32_t>& table, int64_t tokens, int64_t block_size) {
  const int64_t needed = (tokens + block_size - 1) / block_size;
  while (static_cast<int64_t>(table.size()) < needed) {
    if (free_.empty()) return false;
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void BlockPool::release(std::vector<int32_t>& table) {
  for (int32_t b : table) free_.push_back(b);
  table.clear();
}

}  // namespace dshpc
