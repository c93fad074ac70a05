// dshpc generate: greedy generation from token ids, for a quick check of a model.
#include <chrono>
#include <cstdio>
#include <string>

#include <boost/json.hpp>

#include "app/commands.h"
#include "common/options.h"
#include "kernels/backend.h"
#include "worker/model_runtime.h"

namespace dshpc {
namespace {

const std::vector<OptionSpec> kOptions = {
    {"model", "DIR|CONFIG.json", "model directory, or a config.json with --random-weights", ""},
    {"random-weights", "", "seeded random weights of the config's shapes (no checkpoint)", ""},
    {"seed", "N", "seed of --random-weights", "0"},
    {"prompt-ids", "IDS", "comma-separated prompt token ids", ""},
    {"max-new-tokens", "N", "tokens to generate", "16"},
    {"ignore-eos", "", "do not stop at the config's end-of-sequence tokens", ""},
    {"tp", "N", "tensor-parallel size", "1"},
    {"pp", "N", "pipeline-parallel size", "1"},
    {"dp", "N", "data-parallel size (0: world / (tp × pp))", "0"},
};

int fail(const Status& status, int code = 1) {
  std::fprintf(stderr, "dshpc generate: %s\n", status.message().c_str());
  return code;
}

}  // namespace

int run_generate(int argc, char** argv, int first) {
  auto parsed = Options::parse("dshpc generate", kOptions, argc, argv, first);
  if (!parsed.ok()) return fail(parsed.status(), 2);
  const Options& opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(Options::help_text("dshpc generate",
                                  "Greedy-decodes --max-new-tokens tokens after --prompt-ids and "
                                  "prints {\"prompt_ids\": [...], \"generated_ids\": [...]}.",
                                  kOptions)
                   .c_str(),
               stdout);
    return 0;
  }
  auto prompt_ids = opts.get_int_list("prompt-ids");
  if (!prompt_ids.ok()) return fail(prompt_ids.status(), 2);
  auto max_new = opts.get_int("max-new-tokens");
  if (!max_new.ok()) return fail(max_new.status(), 2);
  if (*max_new < 0) return fail(invalid_argument("--max-new-tokens must not be negative"), 2);
  auto seed = opts.get_int("seed");
  if (!seed.ok()) return fail(seed.status(), 2);
  for (const char* dim : {"tp", "pp"}) {
    auto v = opts.get_int(dim);
    if (!v.ok()) return fail(v.status(), 2);
    if (*v != 1) {
      return fail(unimplemented(std::string("--") + dim +
                                ": this build runs one rank (3D parallelism is not wired yet)"),
                  2);
    }
  }

  ModelRuntimeOptions ro;
  ro.model = opts.get("model");
  ro.random_weights = opts.flag("random-weights");
  ro.seed = static_cast<uint64_t>(*seed);
  SoloCollectives tp("tp");
  auto runtime = ModelRuntime::create(ro, ModelShard{}, make_cpu_backend(), tp);
  if (!runtime.ok()) return fail(runtime.status());
  ModelRuntime& rt = **runtime;
  const ModelConfig& config = rt.config();

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

  BlockPool pool(rt.cache().num_blocks());
  std::vector<int32_t> table;
  std::vector<int32_t> generated;
  const auto start = std::chrono::steady_clock::now();
  SequenceStep s;
  s.tokens = tokens;
  for (int64_t i = 0; i < *max_new; ++i) {
    if (!pool.reserve(table, s.start_position + static_cast<int64_t>(s.tokens.size()),
                      rt.cache().spec().block_size)) {
      return fail(resource_exhausted("KV cache too small"));
    }
    s.block_table = table;
    StepPlan plan;
    plan.sequences.push_back(s);
    StepOutput out = rt.engine().run(plan);
    const float* row = out.row(0, 0);
    int32_t next = static_cast<int32_t>(std::max_element(row, row + out.vocab) - row);
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
  std::fprintf(stderr, "dshpc generate: %zu tokens in %.3f s (%.1f tok/s) on %s, weights from %s\n",
               generated.size(), seconds, generated.size() / std::max(seconds, 1e-9),
               rt.backend().name().c_str(), rt.source_description().c_str());
  return 0;
}

}  // namespace dshpc
