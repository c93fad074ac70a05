// SchedulerConfig: the batching and KV-cache limits of the continuous-batching scheduler, per
// data-parallel replica. Set by the deployment YAML (configs/deploy/) and the command line (the
// same names with dashes); validated once, with messages that name the field.
//
// The dynamic-batching controls follow the deployment guide: when a replica runs nothing, a step
// with only new requests starts as soon as the waiting count reaches a preferred batch size (or
// max_batch_size) or the oldest waiting request has waited max_queue_delay_us; while the replica
// runs sequences, new requests join every step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/options.h"
#include "common/status.h"

namespace dshpc {

struct SchedulerConfig {
  // Sequences a replica runs at once; every running sequence is in every step (one decode token
  // or a prefill chunk), so this is also the largest step in sequences.
  int64_t max_batch_size = 64;
  // Batch sizes worth waiting for when a replica is idle, increasing; empty: only max_batch_size.
  std::vector<int64_t> preferred_batch_sizes;
  // How long an idle replica waits for a preferred batch size; 0: start at once.
  int64_t max_queue_delay_us = 0;
  // Tokens per step per replica: decodes first (one each), then prefill chunks.
  int64_t max_num_batched_tokens = 2048;
  // Requests waiting over all replicas; a submit beyond it is RESOURCE_EXHAUSTED (HTTP 429).
  int64_t max_queue_len = 1024;
  // The KV cache of one replica, as the cluster agreed it (--kv-block-size, --kv-blocks).
  int64_t kv_block_size = 16;
  int64_t kv_blocks = 0;
  // Prompt plus completion tokens a request may use; at most the model's max_position_embeddings.
  int64_t max_model_len = 0;
};

// Checks every field of a resolved config (kv_blocks and max_model_len known):
//   max_batch_size ≥ 1; preferred_batch_sizes increasing, each in [1, max_batch_size];
//   max_queue_delay_us ≥ 0; max_num_batched_tokens ≥ max_batch_size (a step must have room for
//   one decode token of every running sequence); max_queue_len ≥ 1; kv_block_size in [1, 1024];
//   kv_blocks ≥ 1; max_model_len ≥ 2 (one prompt token and one completion token).
Status validate_scheduler_config(const SchedulerConfig& config);

// The command-line options for the batching fields (kv_block_size and kv_blocks are the job's
// --kv-block-size and --kv-blocks, which size the worker's cache).
std::vector<OptionSpec> scheduler_option_specs();

// Reads scheduler_option_specs() from `options`, takes the KV cache the cluster agreed on and the
// model's context, resolves max_model_len (0: the model's) and validates. A max_model_len above
// the model's context is an error.
StatusOr<SchedulerConfig> scheduler_config_from_options(const Options& options, int64_t kv_blocks,
                                                        int64_t kv_block_size,
                                                        int64_t model_max_len);

// One line for logs: "max_batch_size=64 preferred_batch_sizes=[8,16] …".
std::string describe_scheduler_config(const SchedulerConfig& config);

}  // namespace dshpc
