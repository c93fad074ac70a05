#include "coordinator/scheduler_config.h"

#include <sstream>

namespace dshpc {
namespace {

std::string num(int64_t v) {
  return std::to_string(v);
}

}  // namespace

Status validate_scheduler_config(const SchedulerConfig& c) {
  if (c.max_batch_size < 1) {
    return invalid_argument("max_batch_size (" + num(c.max_batch_size) + ") must be at least 1");
  }
  for (size_t i = 0; i < c.preferred_batch_sizes.size(); ++i) {
    const int64_t size = c.preferred_batch_sizes[i];
    const std::string field =
        "preferred_batch_sizes[" + std::to_string(i) + "] (" + num(size) + ")";
    if (size < 1 || size > c.max_batch_size) {
      return invalid_argument(field + " must be in [1, max_batch_size (" + num(c.max_batch_size) +
                              ")]");
    }
    if (i > 0 && size <= c.preferred_batch_sizes[i - 1]) {
      return invalid_argument(field + " must be larger than preferred_batch_sizes[" +
                              std::to_string(i - 1) + "] (" + num(c.preferred_batch_sizes[i - 1]) +
                              "): list them in increasing order");
    }
  }
  if (c.max_queue_delay_us < 0) {
    return invalid_argument("max_queue_delay_us (" + num(c.max_queue_delay_us) +
                            ") must be at least 0");
  }
  if (c.max_num_batched_tokens < c.max_batch_size) {
    return invalid_argument("max_num_batched_tokens (" + num(c.max_num_batched_tokens) +
                            ") must be at least max_batch_size (" + num(c.max_batch_size) +
                            "): every running sequence needs one token per step");
  }
  if (c.max_queue_len < 1) {
    return invalid_argument("max_queue_len (" + num(c.max_queue_len) + ") must be at least 1");
  }
  if (c.kv_block_size < 1 || c.kv_block_size > 1024) {
    return invalid_argument("kv_block_size (" + num(c.kv_block_size) + ") must be in [1, 1024]");
  }
  if (c.kv_blocks < 1) {
    return invalid_argument("kv_blocks (" + num(c.kv_blocks) + ") must be at least 1");
  }
  if (c.max_model_len < 2) {
    return invalid_argument("max_model_len (" + num(c.max_model_len) +
                            ") must be at least 2 (one prompt and one completion token)");
  }
  return ok_status();
}

std::vector<OptionSpec> scheduler_option_specs() {
  const SchedulerConfig d;
  return {
      {"max-batch-size", "N", "sequences a data-parallel replica runs at once (per step)",
       num(d.max_batch_size)},
      {"preferred-batch-sizes", "N,N,…",
       "batch sizes an idle replica waits for (up to --max-queue-delay-us), increasing", ""},
      {"max-queue-delay-us", "US",
       "longest wait of an idle replica for a preferred batch size, microseconds",
       num(d.max_queue_delay_us)},
      {"max-num-batched-tokens", "N",
       "tokens per step per replica: decodes first, then prefill chunks",
       num(d.max_num_batched_tokens)},
      {"max-queue-len", "N", "waiting requests before new ones get 429", num(d.max_queue_len)},
      {"max-model-len", "N", "prompt + completion tokens per request (0: the model's context)",
       "0"},
  };
}

StatusOr<SchedulerConfig> scheduler_config_from_options(const Options& options, int64_t kv_blocks,
                                                        int64_t kv_block_size,
                                                        int64_t model_max_len) {
  SchedulerConfig c;
  ASSIGN_OR_RETURN(c.max_batch_size, options.get_int("max-batch-size"));
  if (!options.get("preferred-batch-sizes").empty()) {
    ASSIGN_OR_RETURN(c.preferred_batch_sizes, options.get_int_list("preferred-batch-sizes"));
  }
  ASSIGN_OR_RETURN(c.max_queue_delay_us, options.get_int("max-queue-delay-us"));
  ASSIGN_OR_RETURN(c.max_num_batched_tokens, options.get_int("max-num-batched-tokens"));
  ASSIGN_OR_RETURN(c.max_queue_len, options.get_int("max-queue-len"));
  ASSIGN_OR_RETURN(c.max_model_len, options.get_int("max-model-len"));
  c.kv_blocks = kv_blocks;
  c.kv_block_size = kv_block_size;
  if (c.max_model_len == 0) c.max_model_len = model_max_len;
  if (c.max_model_len > model_max_len) {
    return invalid_argument("max_model_len (" + num(c.max_model_len) +
                            ") is longer than the model's context (" + num(model_max_len) + ")");
  }
  RETURN_IF_ERROR(validate_scheduler_config(c));
  return c;
}

std::string describe_scheduler_config(const SchedulerConfig& c) {
  std::ostringstream out;
  out << "max_batch_size=" << c.max_batch_size << " preferred_batch_sizes=[";
  for (size_t i = 0; i < c.preferred_batch_sizes.size(); ++i) {
    out << (i ? "," : "") << c.preferred_batch_sizes[i];
  }
  out << "] max_queue_delay_us=" << c.max_queue_delay_us
      << " max_num_batched_tokens=" << c.max_num_batched_tokens
      << " max_queue_len=" << c.max_queue_len << " kv_block_size=" << c.kv_block_size
      << " kv_blocks=" << c.kv_blocks << " max_model_len=" << c.max_model_len;
  return out.str();
}

}  // namespace dshpc
