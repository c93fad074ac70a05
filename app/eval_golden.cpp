// dshpc eval-golden: the model against a reference golden file (../shared/fixtures format).
//
// For each prompt j the golden file holds prompt.{j} (I64 [L]), prefill_logits.{j} (F32 [L, V]),
// generated.{j} (I64 [12], the greedy continuation) and decode_logits.{j} (F32 [12, V], row t =
// logits after the prompt plus generated[:t]). Three comparisons, all sequences batched together
// through the paged KV cache so that batching and paging are exercised as in serving:
//   prefill       one forward pass over each prompt, every position against prefill_logits;
//   teacher-forced decode: generated[t] fed token by token, each row against decode_logits;
//   free-running greedy: our own argmax fed back, compared with generated up to the first step
//                 whose reference top-2 gap is below --tie-gap (after a near tie either choice
//                 is legitimate).
#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "app/commands.h"
#include "app/job.h"
#include "common/options.h"
#include "kernels/backend.h"
#include "worker/cluster.h"
#include "worker/model_runtime.h"
#include "worker/safetensors.h"

namespace dshpc {
namespace {

std::vector<OptionSpec> options_table() {
  std::vector<OptionSpec> table = {
      {"golden", "FILE",
       "golden safetensors file (prompt.j, prefill_logits.j, generated.j, "
       "decode_logits.j)",
       ""},
      {"atol", "X", "absolute tolerance on logits", "0.002"},
      {"tie-gap", "X", "reference top-2 gap below which greedy comparison stops", "0.001"},
  };
  for (OptionSpec& spec : model_job_options()) table.push_back(spec);
  return table;
}

struct GoldenPrompt {
  std::vector<int32_t> prompt;
  std::vector<float> prefill_logits;  // [L, V]
  std::vector<int32_t> generated;     // [G]
  std::vector<float> decode_logits;   // [G, V]
};

StatusOr<std::vector<int64_t>> read_i64(const SafetensorsFile& file, const std::string& name) {
  const SafetensorsTensor* t = file.find(name);
  if (t == nullptr) return not_found(file.path() + ": missing tensor " + name);
  if (t->dtype != DType::kI64 || t->shape.size() != 1) {
    return invalid_argument(file.path() + ": tensor " + name + " must be I64 [n]");
  }
  std::vector<int64_t> out(t->shape[0]);
  std::memcpy(out.data(), file.data(*t), out.size() * sizeof(int64_t));
  return out;
}

StatusOr<std::vector<float>> read_f32_matrix(const SafetensorsFile& file, const std::string& name,
                                             int64_t rows, int64_t cols) {
  const SafetensorsTensor* t = file.find(name);
  if (t == nullptr) return not_found(file.path() + ": missing tensor " + name);
  if (t->dtype != DType::kF32 || t->shape != std::vector<int64_t>{rows, cols}) {
    return invalid_argument(file.path() + ": tensor " + name + " must be F32 [" +
                            std::to_string(rows) + ", " + std::to_string(cols) + "]");
  }
  std::vector<float> out(rows * cols);
  std::memcpy(out.data(), file.data(*t), out.size() * sizeof(float));
  return out;
}

StatusOr<std::vector<GoldenPrompt>> load_golden(const std::string& path, int64_t vocab) {
  ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(path));
  std::vector<GoldenPrompt> prompts;
  for (int j = 0; file.find("prompt." + std::to_string(j)) != nullptr; ++j) {
    const std::string s = std::to_string(j);
    GoldenPrompt g;
    ASSIGN_OR_RETURN(std::vector<int64_t> prompt, read_i64(file, "prompt." + s));
    ASSIGN_OR_RETURN(std::vector<int64_t> generated, read_i64(file, "generated." + s));
    for (int64_t id : prompt) {
      if (id < 0 || id >= vocab)
        return invalid_argument(path + ": prompt." + s + " has token " + std::to_string(id) +
                                " outside the vocabulary");
      g.prompt.push_back(static_cast<int32_t>(id));
    }
    for (int64_t id : generated) {
      if (id < 0 || id >= vocab)
        return invalid_argument(path + ": generated." + s + " has token " + std::to_string(id) +
                                " outside the vocabulary");
      g.generated.push_back(static_cast<int32_t>(id));
    }
    if (g.prompt.empty() || g.generated.empty()) {
      return invalid_argument(path + ": prompt." + s + " or generated." + s + " is empty");
    }
    ASSIGN_OR_RETURN(
        g.prefill_logits,
        read_f32_matrix(file, "prefill_logits." + s, static_cast<int64_t>(g.prompt.size()), vocab));
    ASSIGN_OR_RETURN(g.decode_logits,
                     read_f32_matrix(file, "decode_logits." + s,
                                     static_cast<int64_t>(g.generated.size()), vocab));
    prompts.push_back(std::move(g));
  }
  if (prompts.empty()) return invalid_argument(path + ": no prompt.0 tensor (not a golden file)");
  return prompts;
}

float max_abs_diff(const float* a, const float* b, int64_t n) {
  float worst = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    float d = std::fabs(a[i] - b[i]);
    if (!(d <= worst)) worst = std::isnan(d) ? INFINITY : d;  // NaN counts as failure
  }
  return worst;
}

int32_t argmax_row(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

float top2_gap(const float* row, int64_t n) {
  float first = -INFINITY, second = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    if (row[i] > first) {
      second = first;
      first = row[i];
    } else if (row[i] > second) {
      second = row[i];
    }
  }
  return first - second;
}

struct PromptResult {
  float prefill_err = 0, decode_err = 0;
  int matched = 0, compared = 0;
};

int fail(const Status& status) {
  report_error("dshpc eval-golden", status);
  return 1;
}

}  // namespace

int run_eval_golden(int argc, char** argv, int first) {
  const std::vector<OptionSpec> table = options_table();
  auto parsed = Options::parse("dshpc eval-golden", table, argc, argv, first);
  if (!parsed.ok()) return fail(parsed.status()), 2;
  const Options& opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(Options::help_text("dshpc eval-golden",
                                  "Evaluates a golden file under any layout (run it under mpirun "
                                  "-np tp×pp×dp) and prints one JSON line on rank 0 with "
                                  "prefill_max_abs_err, decode_max_abs_err, greedy_tokens_matched, "
                                  "greedy_tokens_compared and ok; exits 0 exactly when ok.",
                                  table)
                   .c_str(),
               stdout);
    return 0;
  }
  if (opts.get("model").empty() || opts.get("golden").empty()) {
    return fail(invalid_argument("--model and --golden are required (see --help)")), 2;
  }
  auto atol = opts.get_double("atol");
  auto tie_gap = opts.get_double("tie-gap");
  if (!atol.ok()) return fail(atol.status()), 2;
  if (!tie_gap.ok()) return fail(tie_gap.status()), 2;

  auto started = start_job("dshpc eval-golden", opts, &argc, &argv);
  if (!started.ok()) return 1;
  Job& job = **started;
  if (!job.coordinator()) {
    job.cluster->serve();
    return 0;
  }
  Cluster& cluster = *job.cluster;
  print_rank_report(job);
  const int64_t vocab = cluster.config().vocab_size;
  auto golden = load_golden(opts.get("golden"), vocab);
  if (!golden.ok()) return fail(golden.status());
  const std::vector<GoldenPrompt>& prompts = *golden;
  const int64_t n = static_cast<int64_t>(prompts.size());
  const int replicas = cluster.replicas();

  // Prompt j runs on replica j % dp. Sequence 2j is teacher-forced, 2j+1 free-running; all
  // advance together one token per step, batched through the paged cache.
  const int64_t block_size = cluster.kv_block_size();
  std::vector<BlockPool> pools;
  for (int r = 0; r < replicas; ++r) pools.emplace_back(cluster.kv_blocks());
  std::vector<std::vector<int32_t>> tables(2 * n);
  std::vector<std::vector<int32_t>> free_running(n);  // our greedy tokens
  std::vector<PromptResult> results(n);
  size_t steps = 0;
  for (const GoldenPrompt& g : prompts) steps = std::max(steps, g.generated.size());

  for (size_t step = 0; step < steps; ++step) {
    std::vector<StepPlan> plans(replicas);
    for (StepPlan& plan : plans) plan.return_logits = true;
    // (prompt, teacher_forced) of each sequence of each replica's plan, in plan order.
    std::vector<std::vector<std::pair<int64_t, bool>>> who(replicas);
    for (int64_t j = 0; j < n; ++j) {
      const GoldenPrompt& g = prompts[j];
      if (step >= g.generated.size()) continue;
      const int replica = static_cast<int>(j % replicas);
      for (bool teacher : {true, false}) {
        SequenceStep s;
        s.sequence_id = 2 * j + (teacher ? 0 : 1);
        if (step == 0) {
          s.tokens = g.prompt;
          s.start_position = 0;
          s.all_logits = teacher;
        } else {
          s.tokens = {teacher ? g.generated[step - 1] : free_running[j].back()};
          s.start_position = static_cast<int32_t>(g.prompt.size() + step - 1);
        }
        auto& table = tables[s.sequence_id];
        if (!pools[replica].reserve(table, s.start_position + s.tokens.size(), block_size)) {
          return fail(resource_exhausted("KV cache too small for the golden prompts"));
        }
        s.block_table = table;
        plans[replica].sequences.push_back(std::move(s));
        who[replica].push_back({j, teacher});
      }
    }
    std::vector<StepOutput> outputs = cluster.step(plans);
    for (int replica = 0; replica < replicas; ++replica) {
      const StepOutput& out = outputs[replica];
      for (size_t i = 0; i < who[replica].size(); ++i) {
        auto [j, teacher] = who[replica][i];
        const GoldenPrompt& g = prompts[j];
        PromptResult& r = results[j];
        if (teacher) {
          if (step == 0) {
            for (size_t row = 0; row < g.prompt.size(); ++row) {
              r.prefill_err =
                  std::max(r.prefill_err,
                           max_abs_diff(out.row(i, row), &g.prefill_logits[row * vocab], vocab));
            }
          }
          const float* last = out.row(i, out.num_rows[i] - 1);
          r.decode_err =
              std::max(r.decode_err, max_abs_diff(last, &g.decode_logits[step * vocab], vocab));
        } else {
          free_running[j].push_back(argmax_row(out.row(i, 0), vocab));
        }
      }
    }
  }

  // Greedy comparison up to the first near tie of the reference.
  for (int64_t j = 0; j < n; ++j) {
    const GoldenPrompt& g = prompts[j];
    for (size_t t = 0; t < g.generated.size(); ++t) {
      if (top2_gap(&g.decode_logits[t * vocab], vocab) < *tie_gap) break;
      results[j].compared++;
      if (free_running[j][t] == g.generated[t]) results[j].matched++;
    }
  }

  float prefill_err = 0, decode_err = 0;
  int matched = 0, compared = 0;
  boost::json::array per_prompt;
  for (int64_t j = 0; j < n; ++j) {
    const PromptResult& r = results[j];
    prefill_err = std::max(prefill_err, r.prefill_err);
    decode_err = std::max(decode_err, r.decode_err);
    matched += r.matched;
    compared += r.compared;
    per_prompt.push_back({{"prompt_len", prompts[j].prompt.size()},
                          {"prefill_max_abs_err", r.prefill_err},
                          {"decode_max_abs_err", r.decode_err},
                          {"greedy_tokens_matched", r.matched},
                          {"greedy_tokens_compared", r.compared}});
  }
  const bool ok = prefill_err <= *atol && decode_err <= *atol && matched == compared;
  const RankLayout& layout = job.groups->layout;
  boost::json::object line;
  line["model"] = opts.get("model");
  line["layout"] = {{"tp", layout.tp()}, {"pp", layout.pp()}, {"dp", layout.dp()}};
  line["prefill_max_abs_err"] = prefill_err;
  line["decode_max_abs_err"] = decode_err;
  line["greedy_tokens_matched"] = matched;
  line["greedy_tokens_compared"] = compared;
  line["atol"] = *atol;
  line["ok"] = ok;
  line["prompts"] = std::move(per_prompt);
  line["ranks"] = boost::json::parse(rank_report_json(job));
  std::printf("%s\n", boost::json::serialize(line).c_str());
  std::fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace dshpc
