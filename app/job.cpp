#include "app/job.h"

#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <thread>
#include <tuple>

#include "common/check.h"
#include "common/log.h"
#include "kernels/cuda_backend.h"
#include "parallel/launcher.h"
#include "parallel/mpi_collectives.h"
#include "parallel/nccl_collectives.h"
#include "worker/load_progress_log.h"

namespace dshpc {

std::vector<OptionSpec> model_job_options() {
  std::vector<OptionSpec> table = {
      {"model", "DIR|MODEL.h5|CONFIG.json",
       "Hugging Face model directory, dshpc HDF5 checkpoint (dshpc convert), or a config.json "
       "with --random-weights",
       ""},
      {"random-weights", "", "seeded random weights of the config's shapes (no checkpoint)", ""},
      {"seed", "N", "seed of --random-weights", "0"},
      {"tp", "N", "tensor-parallel size (ranks per stage)", "1"},
      {"pp", "N", "pipeline-parallel size (stages per replica)", "1"},
      {"dp", "N", "data-parallel size (replicas; 0: world / (tp × pp))", "0"},
      {"pp-layers", "N,N,…", "layers per pipeline stage (default: balanced)", ""},
      {"micro-batches", "N", "micro-batches per step in the pipeline (0: one per stage)", "0"},
      {"kv-blocks", "N", "KV cache blocks per rank (0: sized automatically)", "0"},
      {"kv-block-size", "N", "tokens per KV cache block", "16"},
      {"kv-memory-fraction", "X",
       "on GPUs with --kv-blocks 0: the KV cache's fraction of the memory left after the weights",
       "0.9"},
      {"device", "cpu|cuda",
       "where the model runs: cpu (MPI data plane) or cuda (one GPU per "
       "rank, NCCL data plane)",
       "cpu"},
      {"dtype", "f32|bf16",
       "weights and activations: f32 (the CPU's only type; the GPU parity "
       "mode) or bf16 (GPU serving); default: f32 on cpu, bf16 on cuda",
       ""},
  };
  for (OptionSpec& spec : logging_option_specs()) table.push_back(spec);
  return table;
}

Status init_logging(const Options& options, int rank) {
  ASSIGN_OR_RETURN(LoggerConfig config, logger_config_from_options(options, rank));
  init_process_logger(std::move(config));
  return ok_status();
}

void report_error(const std::string& command, const Status& status) {
  if (process_logger_installed()) {
    process_logger().error(command + ": " + status.message());
    return;
  }
  // Before MPI (a bad option): every rank has the same command line and the same error, so
  // under a launcher only world rank 0 prints it.
  if (detect_launch(process_environment()).world_rank.value_or(0) != 0) return;
  std::fprintf(stderr, "%s: %s\n", command.c_str(), status.message().c_str());
}

namespace {

// Every rank contributes 1 when it failed; all ranks learn whether any failed.
bool any_rank_failed(MPI_Comm comm, bool failed, double timeout_s) {
  MpiCollectives world(comm, "world", timeout_s);
  float flag = failed ? 1.0f : 0.0f;
  world.all_reduce_sum(&flag, 1);
  return flag > 0.0f;
}

// --device / --dtype → the backend of this rank. On cuda the GPU is the node-local rank modulo
// the visible GPUs (two ranks on one GPU refused) and becomes part of every fatal message.
StatusOr<std::unique_ptr<Backend>> make_backend(const Options& options,
                                                const ProcessGroups& groups) {
  const std::string device = options.get("device");
  const std::string dtype = options.get("dtype");
  if (device == "cpu") {
    if (!dtype.empty() && dtype != "f32") {
      return invalid_argument("--dtype " + dtype +
                              " needs --device cuda (the CPU "
                              "backend runs f32)");
    }
    return make_cpu_backend();
  }
  if (device != "cuda") {
    return invalid_argument("--device must be cpu or cuda, not '" + device + "'");
  }
  if (!dtype.empty() && dtype != "f32" && dtype != "bf16") {
    return invalid_argument("--dtype must be f32 or bf16, not '" + dtype + "'");
  }
  ASSIGN_OR_RETURN(int gpu, pick_local_gpu(groups.local_rank, groups.local_size));
  set_process_identity(groups.rank, gpu);
  return make_cuda_backend(gpu, dtype == "f32" ? DType::kF32 : DType::kBF16);
}

// Replaces the MPI collectives of the tp and pp groups (size > 1) by NCCL ones on the backend's
// stream. Collective over each group.
Status use_nccl_groups(Backend& backend, ProcessGroups& groups) {
  const CudaBackendHandles gpu = cuda_backend_handles(backend);
  for (auto [comm, coll, name] : {std::tuple{&groups.tp, &groups.tp_coll, "tp"},
                                  std::tuple{&groups.pp, &groups.pp_coll, "pp"}}) {
    if ((*coll)->size() == 1) continue;
    ASSIGN_OR_RETURN(*coll, make_nccl_collectives(comm->get(), name, groups.timeout_s, gpu.device,
                                                  gpu.stream, gpu.watch));
  }
  return ok_status();
}

// On --device cuda, the cluster's reports carry this rank's GPU figures from NVML (loaded at run
// time; without it the figures are absent and the gauges stay 0).
void attach_gpu_monitor(Job& job, const Options& options) {
  if (options.get("device") != "cuda") return;
  StatusOr<int> gpu = pick_local_gpu(job.groups->local_rank, job.groups->local_size);
  if (!gpu.ok()) return;
  auto monitor = std::make_shared<GpuMonitor>();
  if (!monitor->available()) {
    process_logger().info("no GPU figures for /metrics: " + monitor->unavailable_reason());
    return;
  }
  const std::vector<GpuSample> visible = monitor->sample_visible();
  if (*gpu >= static_cast<int>(visible.size())) {
    process_logger().warn("no GPU figures for /metrics: NVML does not list this rank's GPU",
                          {{"dshpc.gpu", *gpu}});
    return;
  }
  const unsigned nvml_index = visible[*gpu].nvml_index;
  job.gpu_monitor = monitor;
  job.cluster->set_gpu_sampler([monitor, nvml_index] {
    GpuFigures figures;
    if (std::optional<GpuSample> sample = monitor->sample_nvml_index(nvml_index)) {
      figures.present = true;
      figures.memory_used_bytes = sample->memory_used_bytes;
      figures.memory_total_bytes = sample->memory_total_bytes;
      figures.utilization_ratio = sample->utilization_ratio;
    }
    return figures;
  });
}

}  // namespace

namespace {

Status start_job_impl(const std::string& command, const Options& options, Job* job,
                      const std::function<Status(const ProcessGroups&)>& before_load,
                      const Model::LoadProgress& on_load_progress, bool& reported) {
  ParallelConfig parallel;
  for (auto [name, field] : {std::pair{"tp", &parallel.tp}, std::pair{"pp", &parallel.pp},
                             std::pair{"dp", &parallel.dp}}) {
    ASSIGN_OR_RETURN(int64_t v, options.get_int(name));
    if (v < 0 || v > 1 << 20) {
      return invalid_argument(command + ": --" + name + " " + std::to_string(v) +
                              " is out of range");
    }
    *field = static_cast<int>(v);
  }
  // The same on every rank, so a bad layout fails everywhere with the same message.
  ASSIGN_OR_RETURN(ProcessGroups groups, ProcessGroups::create(parallel));
  job->groups = std::make_unique<ProcessGroups>(std::move(groups));
  const ProcessGroups& g = *job->groups;
  // Read on every rank alike, so a malformed value fails everywhere with the same message.
  ASSIGN_OR_RETURN(CoordinatorLiveness liveness, coordinator_liveness_from_env(g.timeout_s));

  ModelRuntimeOptions ro;
  ro.model = options.get("model");
  ro.random_weights = options.flag("random-weights");
  ASSIGN_OR_RETURN(int64_t seed, options.get_int("seed"));
  ro.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(ro.kv_blocks, options.get_int("kv-blocks"));
  ASSIGN_OR_RETURN(ro.kv_block_size, options.get_int("kv-block-size"));
  ASSIGN_OR_RETURN(ro.kv_memory_fraction, options.get_double("kv-memory-fraction"));
  if (!(ro.kv_memory_fraction > 0.0 && ro.kv_memory_fraction <= 1.0)) {
    return invalid_argument(command + ": --kv-memory-fraction must be in (0, 1]");
  }
  if (ro.kv_block_size < 1 || ro.kv_block_size > 1024) {
    return invalid_argument(command + ": --kv-block-size must be in [1, 1024]");
  }
  ASSIGN_OR_RETURN(int64_t micro_batches, options.get_int("micro-batches"));
  if (micro_batches < 0) return invalid_argument(command + ": --micro-batches must be >= 0");
  if (g.rank == 0) ro.on_load_progress = LoadProgressLog(process_logger(), on_load_progress);

  // Layout against the model before any weight is read (the config is small; every rank reads it).
  ASSIGN_OR_RETURN(ModelConfig config, load_config_for(ro));
  RETURN_IF_ERROR(check_splits(g.layout, split_requirements(config)).with_context(ro.model));
  std::vector<int> per_stage;
  if (!options.get("pp-layers").empty()) {
    ASSIGN_OR_RETURN(per_stage, parse_layers_per_stage(options.get("pp-layers")));
  }
  auto stages_or =
      stage_layer_ranges(static_cast<int>(config.num_layers), g.layout.pp(), per_stage);
  if (!stages_or.ok()) {
    return per_stage.empty()
               ? stages_or.status()
               : stages_or.status().with_context("--pp-layers " + options.get("pp-layers"));
  }
  const std::vector<LayerRange>& stages = *stages_or;
  ModelShard shard;
  shard.tp_rank = g.coords.tp;
  shard.tp_size = g.layout.tp();
  shard.layer_begin = stages[g.coords.pp].begin;
  shard.layer_end = stages[g.coords.pp].end;

  // The backend, and on GPUs the NCCL communicators of the tp and pp groups (created only after
  // every rank has its GPU, since creating them is collective).
  auto backend = make_backend(options, *job->groups);
  if (any_rank_failed(g.world.get(), !backend.ok(), g.timeout_s)) {
    reported = true;
    if (!backend.ok()) {
      process_logger().error(command + ": rank " + std::to_string(g.rank) + ": " +
                             backend.status().message());
      return backend.status();
    }
    return unavailable("another rank failed to set up its device (see its message)");
  }
  if (options.get("device") == "cuda") {
    RETURN_IF_ERROR(use_nccl_groups(**backend, *job->groups));
  }

  // A failure here is one rank's (e.g. rank 0's port is taken): it joins the load agreement
  // below so that no rank is left waiting.
  const Status prepared = before_load ? before_load(g) : ok_status();
  StatusOr<std::unique_ptr<ModelRuntime>> runtime =
      prepared.ok() ? ModelRuntime::create(ro, shard, std::move(*backend), *job->groups->tp_coll)
                    : StatusOr<std::unique_ptr<ModelRuntime>>(prepared);
  const bool failed = !runtime.ok();
  if (any_rank_failed(g.world.get(), failed, g.timeout_s)) {
    // Each failing rank reports its own error; rank 0 says why it stops when it did not fail.
    reported = true;
    if (failed) {
      process_logger().error(command + ": rank " + std::to_string(g.rank) + ": " +
                             runtime.status().message());
      return runtime.status();
    }
    Status other = unavailable("another rank failed to start (see its message)");
    if (g.rank == 0) process_logger().error(command + ": " + other.message());
    return other;
  }
  job->runtime = std::move(*runtime);
  job->cluster = std::make_unique<Cluster>(
      *job->groups, *job->runtime,
      micro_batches > 0 ? static_cast<int>(micro_batches) : g.layout.pp(), liveness);
  attach_gpu_monitor(*job, options);
  const Model& model = job->runtime->model();
  // The GPU follows MPI's node-local rank; the launcher's own count should agree with it.
  const LaunchInfo launch = detect_launch(process_environment());
  if (launch.local_rank && *launch.local_rank != g.local_rank) {
    process_logger().warn("the launcher (" + std::string(launcher_name(launch.launcher)) +
                              ") says local rank " + std::to_string(*launch.local_rank) +
                              ", MPI's node communicator " + std::to_string(g.local_rank) +
                              "; the GPU follows MPI's",
                          {{"event.action", "job.local_rank_mismatch"}});
  }
  process_logger().info("rank ready", {{"event.action", "job.rank_ready"},
                                       {"dshpc.launcher", launcher_name(launch.launcher)},
                                       {"dshpc.local_rank", g.local_rank},
                                       {"dshpc.dp", g.coords.dp},
                                       {"dshpc.pp", g.coords.pp},
                                       {"dshpc.tp", g.coords.tp},
                                       {"dshpc.layer_begin", model.shard().layer_begin},
                                       {"dshpc.layer_end", model.shard().layer_end},
                                       {"dshpc.weight_bytes", model.weight_bytes()},
                                       {"dshpc.kv_blocks", job->cluster->kv_blocks()}});
  return ok_status();
}

}  // namespace

StatusOr<std::unique_ptr<Job>> start_job(
    const std::string& command, const Options& options, int* argc, char*** argv,
    const std::function<Status(const ProcessGroups&)>& before_load,
    const Model::LoadProgress& on_load_progress) {
  auto job = std::make_unique<Job>();
  job->mpi = std::make_unique<MpiRuntime>(argc, argv);
  const int rank = job->mpi->world_rank();
  bool reported = false;
  // A bad --log-format or --log-level fails like any other option, on every rank alike.
  Status result = init_logging(options, rank);
  if (result.ok()) {
    result = start_job_impl(command, options, job.get(), before_load, on_load_progress, reported);
  }
  if (!result.ok()) {
    // Errors every rank shares (options, layout, config) are printed once, by rank 0.
    if (!reported && rank == 0) report_error(command, result);
    // Every rank fails at the same point; wait for each other before exiting so that mpirun does
    // not kill rank 0 (on another rank's early non-zero exit) before its message is out.
    std::fflush(stderr);
    MPI_Request request;
    if (MPI_Ibarrier(MPI_COMM_WORLD, &request) == MPI_SUCCESS) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      int done = 0;
      while (!done && std::chrono::steady_clock::now() < deadline) {
        MPI_Test(&request, &done, MPI_STATUS_IGNORE);
        if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    return result;
  }
  return job;
}

void print_rank_report(const Job& job) {
  Logger& log = process_logger();
  log.info("dshpc: " + job.groups->layout.to_string() + ", model " +
               job.runtime->source_description() + " (" +
               model_family_name(job.runtime->config().family) + ")",
           {{"event.action", "job.layout"}});
  for (const RankReport& r : job.cluster->reports()) {
    char message[200];
    std::snprintf(message, sizeof(message),
                  "dshpc: rank %d (dp %d, pp %d, tp %d): layers [%lld, %lld), weights %.2f MiB, "
                  "KV cache %.2f MiB (%lld blocks)",
                  r.rank, r.coords.dp, r.coords.pp, r.coords.tp,
                  static_cast<long long>(r.layer_begin), static_cast<long long>(r.layer_end),
                  r.weight_bytes / 1048576.0, r.kv_cache_bytes / 1048576.0,
                  static_cast<long long>(r.kv_blocks));
    log.info(message, {{"event.action", "job.rank_report"},
                       {"dshpc.rank", r.rank},
                       {"dshpc.layer_begin", r.layer_begin},
                       {"dshpc.layer_end", r.layer_end},
                       {"dshpc.weight_bytes", r.weight_bytes},
                       {"dshpc.kv_cache_bytes", r.kv_cache_bytes},
                       {"dshpc.kv_blocks", r.kv_blocks}});
  }
}

std::string rank_report_json(const Job& job) {
  boost::json::array ranks;
  for (const RankReport& r : job.cluster->reports()) {
    ranks.push_back({{"rank", r.rank},
                     {"dp", r.coords.dp},
                     {"pp", r.coords.pp},
                     {"tp", r.coords.tp},
                     {"layer_begin", r.layer_begin},
                     {"layer_end", r.layer_end},
                     {"weight_bytes", r.weight_bytes},
                     {"kv_cache_bytes", r.kv_cache_bytes}});
  }
  return boost::json::serialize(ranks);
}

}  // namespace dshpc
