// dshpc bench: throughput and latency of the engine at real model sizes with random weights,
// each figure printed beside the device's limit measured in the same run:
//   decode   tokens/s at each batch size; the bound is bytes read per step (this rank's weights,
//            the active experts and the KV cache) over the measured copy bandwidth;
//   prefill  time to first token and tokens/s for one prompt; the bound is its FLOPs over the
//            measured matrix-product rate.
// Runs under any layout (mpirun -np tp×pp×dp); rank 0 drives it through the Cluster, so it
// measures exactly what serving runs (plans, micro-batches, sampling on the last stage).
#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "app/commands.h"
#include "app/job.h"
#include "common/options.h"
#include "kernels/cuda_backend.h"
#include "kernels/kernel_trace.h"

namespace dshpc {
namespace {

std::vector<OptionSpec> options_table() {
  std::vector<OptionSpec> table = {
      {"batch-sizes", "N,N,…", "decode batch sizes", "1,16,64,256"},
      {"prompt-len", "N", "prompt tokens of each decode sequence", "128"},
      {"gen-len", "N", "decode steps timed per batch size", "128"},
      {"prefill-lens", "N,N,…", "prompt lengths for the prefill / time-to-first-token runs",
       "512,2048"},
      {"max-batched-tokens", "N", "tokens per step while prefilling the decode batches", "8192"},
      {"bandwidth-bytes", "N",
       "buffer size of the copy-bandwidth measurement (0: 1 GiB on GPUs, "
       "256 MiB on the CPU)",
       "0"},
      {"json", "FILE", "also write the results as JSON to FILE", ""},
      {"trace", "PREFIX",
       "after each timed run, trace rank 0's kernels over --trace-steps more decode steps (one "
       "more prompt for prefill): a summary per kernel, and PREFIX-decode-bN.json / "
       "PREFIX-prefill-N.json for chrome://tracing or ui.perfetto.dev (needs CUPTI; the timed "
       "runs then include CUPTI's cost, about 20 % at V2-Lite batch 1)",
       ""},
      {"trace-steps", "N", "decode steps in each trace", "8"},
  };
  for (OptionSpec& spec : model_job_options()) table.push_back(spec);
  return table;
}

int fail(const Status& status, int code = 1) {
  report_error("dshpc bench", status);
  return code;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Parameters a decode step of `batch` tokens reads: everything but the embedding table (a lookup
// of a few rows) and the routed experts no token of the batch uses. The output head is included
// (every sequence's last row goes through it). Which experts a batch uses depends on the router;
// with random weights routing is close to uniform, so a token picks top_k of n experts and the
// batch is expected to use n · (1 − (1 − top_k/n)^batch) of them (top_k at batch 1; at batch 16
// of V2-Lite's 6 of 64 about 51, not 64).
double active_parameters(const ModelConfig& c, int64_t batch) {
  double total =
      static_cast<double>(c.num_parameters()) - static_cast<double>(c.vocab_size) * c.hidden_size;
  if (c.num_routed_experts == 0) return total;
  const double expert = 3.0 * c.hidden_size * c.moe_intermediate_size;
  const double n = static_cast<double>(c.num_routed_experts);
  const double used = n * (1.0 - std::pow(1.0 - static_cast<double>(c.routing.top_k) / n,
                                          static_cast<double>(batch)));
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) moe_layers += c.is_moe_layer(l) ? 1 : 0;
  return total - moe_layers * (n - used) * expert;
}

// Parameters one token multiplies by (its FLOPs are twice this): as active_parameters at batch 1
// (the dense layers, the shared experts and its top_k routed experts of each MoE layer), without
// the output head.
double parameters_per_token(const ModelConfig& c) {
  return active_parameters(c, 1) - static_cast<double>(c.vocab_size) * c.hidden_size;
}

// KV cache elements read per token of context, per layer (the whole model).
double kv_elements_per_token(const ModelConfig& c) {
  if (c.is_mla()) return static_cast<double>(c.kv_lora_rank + c.qk_rope_head_dim);
  return 2.0 * c.num_kv_heads * c.head_dim;
}

struct Sequence {
  std::vector<int32_t> prompt;
  std::vector<int32_t> table;
  int32_t position = 0;
  int32_t last = 0;
};

}  // namespace

int run_bench(int argc, char** argv, int first) {
  const std::vector<OptionSpec> table = options_table();
  auto parsed = Options::parse("dshpc bench", table, argc, argv, first);
  if (!parsed.ok()) return fail(parsed.status(), 2);
  Options opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(Options::help_text("dshpc bench",
                                  "Measures decode and prefill throughput with the model's real "
                                  "shapes (use --random-weights with configs/models/*.json) and "
                                  "prints each figure beside the measured device limit.",
                                  table)
                   .c_str(),
               stdout);
    return 0;
  }
  if (opts.get("model").empty()) return fail(invalid_argument("--model is required"), 2);
  auto batch_sizes = opts.get_int_list("batch-sizes");
  auto prefill_lens = opts.get_int_list("prefill-lens");
  auto prompt_len = opts.get_int("prompt-len");
  auto gen_len = opts.get_int("gen-len");
  auto budget = opts.get_int("max-batched-tokens");
  auto bandwidth_bytes = opts.get_int("bandwidth-bytes");
  auto trace_steps = opts.get_int("trace-steps");
  for (const Status& s :
       {batch_sizes.status(), prefill_lens.status(), prompt_len.status(), gen_len.status(),
        budget.status(), bandwidth_bytes.status(), trace_steps.status()}) {
    if (!s.ok()) return fail(s, 2);
  }
  if (*prompt_len < 1 || *gen_len < 1 || *budget < 1 || *trace_steps < 1) {
    return fail(invalid_argument("--prompt-len, --gen-len, --max-batched-tokens and "
                                 "--trace-steps must be >= 1"),
                2);
  }
  const std::string trace_prefix = opts.get("trace");
  const bool tracing = !trace_prefix.empty();
  if (tracing && opts.get("device") != "cuda") {
    return fail(invalid_argument("--trace traces GPU kernels: it needs --device cuda"), 2);
  }
  if (tracing && !kernel_trace_built()) return fail(kernel_trace_start(), 2);

  std::string command = "dshpc";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  auto started = start_job("dshpc bench", opts, &argc, &argv);
  if (!started.ok()) return 1;
  Job& job = **started;
  if (!job.coordinator()) {
    job.cluster->serve();
    return 0;
  }
  Cluster& cluster = *job.cluster;
  const ModelConfig& config = cluster.config();
  Backend& backend = job.runtime->backend();
  print_rank_report(job);
  const RankLayout& layout = job.groups->layout;
  const int gpus_per_replica = layout.tp() * layout.pp();
  const bool on_gpu = backend.name() != "cpu";
  if (tracing) {
    if (Status s = kernel_trace_start(); !s.ok()) return fail(s);
  }
  // Collects the kernels since `begin` (`steps` steps), prints their summary and writes the
  // timeline to PREFIX-`name`.json. A trace that fails is reported and the benchmark goes on.
  auto finish_trace = [&](uint64_t begin, int64_t steps, const std::string& name) {
    auto trace = kernel_trace_collect(begin);
    const std::string path = trace_prefix + "-" + name + ".json";
    Status written =
        trace.ok() ? write_chrome_trace(*trace, "dshpc bench " + name, path) : trace.status();
    if (!written.ok()) {
      report_error("dshpc bench --trace " + name, written);
      return;
    }
    std::printf("\n%s: rank 0's GPU, timeline in %s\n%s", name.c_str(), path.c_str(),
                format_kernel_trace_summary(summarize_kernel_trace(*trace), steps, 24).c_str());
    std::fflush(stdout);
  };

  // ---- the device's limits, measured now
  const size_t copy_bytes = *bandwidth_bytes > 0 ? static_cast<size_t>(*bandwidth_bytes)
                                                 : (on_gpu ? size_t{1} << 30 : size_t{256} << 20);
  const double bandwidth = backend.measure_copy_bandwidth(copy_bytes);
  const int64_t gemm = on_gpu ? 8192 : 1024;
  const double matmul_rate = backend.measure_matmul_rate(gemm, gemm, gemm);
  const double element = static_cast<double>(dtype_size(backend.weight_dtype()));
  std::printf("dshpc bench: %s on %s, weights %s, layout %s\n", opts.get("model").c_str(),
              backend.name().c_str(), dtype_name(backend.weight_dtype()),
              layout.to_string().c_str());
  std::printf(
      "device: copy bandwidth %.1f GB/s (read + write, %zu MiB buffer); %s matmul "
      "%.1f TFLOP/s (%lld³)\n",
      bandwidth / 1e9, copy_bytes >> 20, dtype_name(backend.weight_dtype()), matmul_rate / 1e12,
      static_cast<long long>(gemm));
  std::fflush(stdout);

  boost::json::object result;
  result["command"] = command;
  result["model"] = opts.get("model");
  result["backend"] = backend.name();
  result["dtype"] = dtype_name(backend.weight_dtype());
  result["layout"] = {{"tp", layout.tp()}, {"pp", layout.pp()}, {"dp", layout.dp()}};
  result["copy_bandwidth_bytes_per_s"] = bandwidth;
  result["matmul_flops_per_s"] = matmul_rate;
  result["parameters"] = static_cast<double>(config.num_parameters());
  result["kernel_trace"] = tracing;  // CUPTI on: the timed figures include its cost

  const int64_t block_size = cluster.kv_block_size();
  uint64_t rng = 12345;
  auto random_token = [&] {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int32_t>((rng >> 33) % static_cast<uint64_t>(config.vocab_size));
  };
  int64_t next_id = 1;

  // ---- decode
  boost::json::array decode_results;
  std::printf("\n%-8s %12s %12s %14s %14s %8s\n", "batch", "tok/s", "ITL ms", "GB/s read",
              "bound tok/s", "of bound");
  for (int64_t batch : *batch_sizes) {
    if (batch < 1) return fail(invalid_argument("--batch-sizes must be positive"), 2);
    const int64_t context = *prompt_len + *gen_len + (tracing ? *trace_steps : 0);
    if (context > config.max_position_embeddings) {
      return fail(
          invalid_argument(tracing ? "--prompt-len + --gen-len + --trace-steps exceeds "
                                     "the model's context"
                                   : "--prompt-len + --gen-len exceeds the model's context"),
          2);
    }
    const int64_t blocks_needed = batch * ((context + block_size - 1) / block_size);
    if (blocks_needed > cluster.kv_blocks()) {
      return fail(resource_exhausted("batch " + std::to_string(batch) + " needs " +
                                     std::to_string(blocks_needed) + " KV blocks, the cache has " +
                                     std::to_string(cluster.kv_blocks()) + " (raise --kv-blocks)"));
    }
    // Replica r decodes batch / dp sequences (the rest go to the first replicas).
    std::vector<BlockPool> pools;
    for (int r = 0; r < cluster.replicas(); ++r) pools.emplace_back(cluster.kv_blocks());
    std::vector<std::vector<Sequence>> seqs(cluster.replicas());
    for (int64_t i = 0; i < batch; ++i) {
      Sequence s;
      for (int64_t t = 0; t < *prompt_len; ++t) s.prompt.push_back(random_token());
      seqs[i % cluster.replicas()].push_back(std::move(s));
    }
    const int64_t base_id = next_id;
    next_id += batch;
    auto step_all = [&](bool prefill, int64_t chunk_tokens) {
      // One step: prefill chunks (up to chunk_tokens per replica) or one decode token each.
      std::vector<StepPlan> plans(cluster.replicas());
      std::vector<std::vector<Sequence*>> order(cluster.replicas());
      for (int r = 0; r < cluster.replicas(); ++r) {
        int64_t used = 0;
        for (size_t i = 0; i < seqs[r].size(); ++i) {
          Sequence& s = seqs[r][i];
          SequenceStep step;
          step.sequence_id = base_id + static_cast<int64_t>(i) * cluster.replicas() + r;
          step.start_position = s.position;
          step.sampling.temperature = 0.0f;
          if (prefill) {
            const int64_t left = static_cast<int64_t>(s.prompt.size()) - s.position;
            if (left <= 0 || used >= chunk_tokens) continue;
            const int64_t take = std::min(left, chunk_tokens - used);
            step.tokens.assign(s.prompt.begin() + s.position, s.prompt.begin() + s.position + take);
            step.sample = take == left;
            used += take;
          } else {
            step.tokens = {s.last};
          }
          if (!pools[r].reserve(s.table, s.position + static_cast<int64_t>(step.tokens.size()),
                                block_size)) {
            return false;
          }
          step.block_table = s.table;
          plans[r].sequences.push_back(std::move(step));
          order[r].push_back(&s);
        }
      }
      std::vector<StepOutput> outputs = cluster.step(plans);
      for (int r = 0; r < cluster.replicas(); ++r) {
        for (size_t i = 0; i < order[r].size(); ++i) {
          Sequence& s = *order[r][i];
          s.position += static_cast<int32_t>(plans[r].sequences[i].tokens.size());
          if (plans[r].sequences[i].sample) s.last = outputs[r].samples[i].token;
        }
      }
      return true;
    };
    bool more = true;
    while (more) {
      more = false;
      for (const auto& replica : seqs) {
        for (const Sequence& s : replica) more = more || s.position < *prompt_len;
      }
      if (more && !step_all(true, *budget)) return fail(resource_exhausted("KV cache exhausted"));
    }
    const auto start = std::chrono::steady_clock::now();
    for (int64_t t = 0; t < *gen_len; ++t) {
      if (!step_all(false, 0)) return fail(resource_exhausted("KV cache exhausted"));
    }
    const double seconds = seconds_since(start);
    const double tokens_per_s = static_cast<double>(batch * *gen_len) / seconds;
    // Bytes one decode step reads per GPU: its weight share (active experts) and the KV cache
    // of every sequence at the mean context.
    const int64_t per_replica = (batch + cluster.replicas() - 1) / cluster.replicas();
    const double weights = active_parameters(config, per_replica) * element / gpus_per_replica;
    const double mean_context = *prompt_len + *gen_len / 2.0;
    const double kv = per_replica * mean_context * kv_elements_per_token(config) *
                      config.num_layers * element / gpus_per_replica;
    const double step_bound_s = (weights + kv) / bandwidth;
    const double bound = cluster.replicas() * per_replica / step_bound_s;
    const double read_rate = (weights + kv) * (*gen_len) / seconds;
    std::printf("%-8lld %12.1f %12.3f %14.1f %14.1f %7.1f%%\n", static_cast<long long>(batch),
                tokens_per_s, 1e3 * seconds / *gen_len, read_rate / 1e9, bound,
                100.0 * tokens_per_s / bound);
    std::fflush(stdout);  // each row survives a time limit on the run
    decode_results.push_back({{"batch", batch},
                              {"tokens_per_s", tokens_per_s},
                              {"inter_token_latency_s", seconds / *gen_len},
                              {"bytes_read_per_step_per_gpu", weights + kv},
                              {"bound_tokens_per_s", bound},
                              {"fraction_of_bound", tokens_per_s / bound}});
    if (tracing) {
      const uint64_t begin = kernel_trace_begin();
      for (int64_t t = 0; t < *trace_steps; ++t) {
        if (!step_all(false, 0)) return fail(resource_exhausted("KV cache exhausted"));
      }
      finish_trace(begin, *trace_steps, "decode-b" + std::to_string(batch));
    }
  }
  result["decode"] = std::move(decode_results);
  if (on_gpu && cuda_backend_built()) {
    // Which decode paths ran on rank 0's GPU (a fallback would show here as zeros).
    const CudaPathCounters paths = cuda_path_counters(backend);
    std::printf(
        "\nrank 0 paths: %lld gemv products, %lld split-key decode attentions, %lld graph "
        "captures, %lld graph replays, %lld device-side MoE layers (%lld on tensor cores); fused "
        "launches: %lld product pairs, %lld MLA prepares, %lld MLA value projections, %lld MoE "
        "gates (%lld with the norm, %lld building the experts' index, %lld as one cluster), "
        "%lld MoE layers ending "
        "with the next norm, %lld per-head products, %lld sliced argmaxes, %lld decode "
        "attentions in the several-keys-a-warp form (%lld with two key groups a warp in flight), "
        "%lld MoE layers with the shared experts beside the router\n",
        static_cast<long long>(paths.gemv), static_cast<long long>(paths.decode_attention),
        static_cast<long long>(paths.graph_captures), static_cast<long long>(paths.graph_launches),
        static_cast<long long>(paths.moe_small), static_cast<long long>(paths.moe_mma),
        static_cast<long long>(paths.gemv_pairs), static_cast<long long>(paths.mla_prepare),
        static_cast<long long>(paths.mla_values), static_cast<long long>(paths.moe_gate),
        static_cast<long long>(paths.moe_gate_norm), static_cast<long long>(paths.moe_gate_index),
        static_cast<long long>(paths.moe_gate_cluster),
        static_cast<long long>(paths.moe_combine_norm), static_cast<long long>(paths.gemv_heads),
        static_cast<long long>(paths.argmax_sliced),
        static_cast<long long>(paths.decode_attention_wide),
        static_cast<long long>(paths.decode_attention_unroll2),
        static_cast<long long>(paths.moe_shared_side));
    result["cuda_paths"] = {{"gemv", paths.gemv},
                            {"decode_attention", paths.decode_attention},
                            {"prefill_attention", paths.prefill_attention},
                            {"mla_prefill_attention", paths.mla_prefill_attention},
                            {"graph_captures", paths.graph_captures},
                            {"graph_launches", paths.graph_launches},
                            {"moe_small", paths.moe_small},
                            {"moe_mma", paths.moe_mma},
                            {"moe_grouped", paths.moe_grouped},
                            {"moe_shared_fused", paths.moe_shared_fused},
                            {"gemv_pairs", paths.gemv_pairs},
                            {"mla_prepare", paths.mla_prepare},
                            {"mla_values", paths.mla_values},
                            {"moe_gate", paths.moe_gate},
                            {"moe_gate_norm", paths.moe_gate_norm},
                            {"moe_gate_index", paths.moe_gate_index},
                            {"moe_gate_cluster", paths.moe_gate_cluster},
                            {"moe_combine_norm", paths.moe_combine_norm},
                            {"argmax_sliced", paths.argmax_sliced},
                            {"gemv_heads", paths.gemv_heads},
                            {"decode_attention_wide", paths.decode_attention_wide},
                            {"decode_attention_unroll2", paths.decode_attention_unroll2},
                            {"moe_shared_side", paths.moe_shared_side},
                            {"moe_shared_side_captured", paths.moe_shared_side_captured}};
  }

  // ---- prefill / time to first token
  boost::json::array prefill_results;
  std::printf("\n%-8s %12s %12s %14s %14s %8s\n", "prompt", "TTFT ms", "tok/s", "TFLOP/s/GPU",
              "peak", "of peak");
  for (int64_t len : *prefill_lens) {
    if (len < 1 || len > config.max_position_embeddings) {
      return fail(invalid_argument("--prefill-lens must be in [1, max_position_embeddings]"), 2);
    }
    BlockPool pool(cluster.kv_blocks());
    std::vector<int32_t> block_table;
    if (!pool.reserve(block_table, len, block_size)) {
      return fail(resource_exhausted("prompt of " + std::to_string(len) +
                                     " tokens does not fit the KV cache (raise --kv-blocks)"));
    }
    auto run_once = [&] {
      SequenceStep s;
      s.sequence_id = next_id++;
      for (int64_t t = 0; t < len; ++t) s.tokens.push_back(random_token());
      s.block_table = block_table;
      s.sampling.temperature = 0.0f;
      std::vector<StepPlan> plans(cluster.replicas());
      plans[0].sequences.push_back(std::move(s));
      const auto start = std::chrono::steady_clock::now();
      cluster.step(plans);
      return seconds_since(start);
    };
    run_once();  // warm-up (allocations, cuBLAS heuristics)
    double best = 1e30;
    for (int i = 0; i < 3; ++i) best = std::min(best, run_once());
    if (tracing) {
      const uint64_t begin = kernel_trace_begin();
      run_once();
      finish_trace(begin, 1, "prefill-" + std::to_string(len));
    }
    // The output head runs on the last row only.
    const double head = static_cast<double>(config.vocab_size) * config.hidden_size;
    // Every token passes through its own experts only: an MoE prompt's FLOPs are those of its
    // tokens, not of every expert some token used.
    const double params = parameters_per_token(config);
    const double attention_flops =
        2.0 * len * len * config.num_heads *
        (config.is_mla() ? config.qk_head_dim() + config.v_head_dim : 2.0 * config.head_dim) *
        config.num_layers / 2.0;
    const double flops = 2.0 * params * len + 2.0 * head + attention_flops;
    const double per_gpu = flops / best / gpus_per_replica;
    std::printf("%-8lld %12.2f %12.1f %14.2f %14.2f %7.1f%%\n", static_cast<long long>(len),
                1e3 * best, len / best, per_gpu / 1e12, matmul_rate / 1e12,
                100.0 * per_gpu / matmul_rate);
    std::fflush(stdout);
    prefill_results.push_back({{"prompt_tokens", len},
                               {"time_to_first_token_s", best},
                               {"tokens_per_s", len / best},
                               {"flops", flops},
                               {"flops_per_s_per_gpu", per_gpu},
                               {"fraction_of_peak", per_gpu / matmul_rate}});
  }
  result["prefill"] = std::move(prefill_results);
  const std::string json = boost::json::serialize(result);
  std::printf("\n%s\n", json.c_str());
  std::printf("reproduce: %s\n", command.c_str());
  if (!opts.get("json").empty()) {
    FILE* f = std::fopen(opts.get("json").c_str(), "w");
    if (f == nullptr) return fail(invalid_argument("--json: cannot write " + opts.get("json")));
    std::fprintf(f, "%s\n", json.c_str());
    std::fclose(f);
  }
  if (tracing) kernel_trace_stop();
  std::fflush(stdout);
  return 0;
}

}  // namespace dshpc
