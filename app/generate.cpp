// dshpc generate: greedy generation from token ids, for a quick check of a model.
#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <string>

#include "app/commands.h"
#include "app/job.h"
#include "common/log.h"
#include "common/options.h"
#include "kernels/backend.h"
#include "worker/model_runtime.h"

namespace dshpc {
namespace {

std::vector<OptionSpec> options_table() {
  std::vector<OptionSpec> table = {
      {"prompt-ids", "IDS", "comma-separated prompt token ids", ""},
      {"max-new-tokens", "N", "tokens to generate", "16"},
      {"ignore-eos", "", "do not stop at the config's end-of-sequence tokens", ""},
  };
  for (OptionSpec& spec : model_job_options()) table.push_back(spec);
  return table;
}

int fail(const Status& status, int code = 1) {
  report_error("dshpc generate", status);
  return code;
}

}  // namespace

int run_generate(int argc, char** argv, int first) {
  const std::vector<OptionSpec> table = options_table();
  auto parsed = Options::parse("dshpc generate", table, argc, argv, first);
  if (!parsed.ok()) return fail(parsed.status(), 2);
  const Options& opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(Options::help_text("dshpc generate",
                                  "Greedy-decodes --max-new-tokens tokens after --prompt-ids under "
                                  "any layout and prints {\"prompt_ids\": [...], "
                                  "\"generated_ids\": [...]} on rank 0.",
                                  table)
                   .c_str(),
               stdout);
    return 0;
  }
  if (opts.get("model").empty()) return fail(invalid_argument("--model is required"), 2);
  auto prompt_ids = opts.get_int_list("prompt-ids");
  if (!prompt_ids.ok()) return fail(prompt_ids.status(), 2);
  auto max_new = opts.get_int("max-new-tokens");
  if (!max_new.ok()) return fail(max_new.status(), 2);
  if (*max_new < 0) return fail(invalid_argument("--max-new-tokens must not be negative"), 2);

  auto started = start_job("dshpc generate", opts, &argc, &argv);
  if (!started.ok()) return 1;
  Job& job = **started;
  if (!job.coordinator()) {
    job.cluster->serve();
    return 0;
  }
  Cluster& cluster = *job.cluster;
  const ModelConfig& config = cluster.config();
  print_rank_report(job);

  std::vector<int32_t> tokens;
  for (int64_t id : *prompt_ids) {
    if (id < 0 || id >= config.vocab_size) {
      return fail(invalid_argument("--prompt-ids: token " + std::to_string(id) +
                                   " is outside the vocabulary [0, " +
                                   std::to_string(config.vocab_size) + ")"),
                  2);
    }
    tokens.push_back(static_cast<int32_t>(id));
  }
  if (static_cast<int64_t>(tokens.size()) + *max_new > config.max_position_embeddings) {
    return fail(invalid_argument("prompt plus --max-new-tokens exceeds the model's context of " +
                                 std::to_string(config.max_position_embeddings) + " tokens"),
                2);
  }

  BlockPool pool(cluster.kv_blocks());
  std::vector<int32_t> block_table;
  std::vector<int32_t> generated;
  const auto start = std::chrono::steady_clock::now();
  SequenceStep s;
  s.tokens = tokens;
  for (int64_t i = 0; i < *max_new; ++i) {
    if (!pool.reserve(block_table, s.start_position + static_cast<int64_t>(s.tokens.size()),
                      cluster.kv_block_size())) {
      return fail(resource_exhausted("KV cache too small"));
    }
    s.block_table = block_table;
    std::vector<StepPlan> plans(cluster.replicas());
    plans[0].return_logits = true;
    plans[0].sequences.push_back(s);
    std::vector<StepOutput> out = cluster.step(plans);
    const float* row = out[0].row(0, 0);
    int32_t next = static_cast<int32_t>(std::max_element(row, row + out[0].vocab) - row);
    generated.push_back(next);
    bool eos = false;
    for (int64_t e : config.eos_token_ids) eos = eos || e == next;
    if (eos && !opts.flag("ignore-eos")) break;
    s.start_position += static_cast<int32_t>(s.tokens.size());
    s.tokens = {next};
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  boost::json::object result;
  result["prompt_ids"] = boost::json::value_from(tokens);
  result["generated_ids"] = boost::json::value_from(generated);
  std::printf("%s\n", boost::json::serialize(result).c_str());
  std::fflush(stdout);
  char message[120];
  std::snprintf(message, sizeof(message), "dshpc generate: %zu tokens in %.3f s (%.1f tok/s)",
                generated.size(), seconds, generated.size() / std::max(seconds, 1e-9));
  process_logger().info(message,
                        {{"dshpc.generated_tokens", static_cast<int64_t>(generated.size())},
                         {"dshpc.seconds", seconds}});
  return 0;
}

}  // namespace dshpc
