// The SPMD job behind every command that runs a model: MPI, the process groups of the 3D layout,
// this rank's shard of the model and the Cluster that rank 0 drives.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/options.h"
#include "common/status.h"
#include "coordinator/gpu_monitor.h"
#include "parallel/mpi_runtime.h"
#include "parallel/process_groups.h"
#include "worker/cluster.h"
#include "worker/model_runtime.h"

namespace dshpc {

// The options every model-running command shares (--model, --tp, --pp, --dp, …, and the
// logging options --log-format, --log-level).
std::vector<OptionSpec> model_job_options();

// Installs the process logger (common/log.h) from --log-format and --log-level, with the MPI
// world rank (-1 for commands outside an MPI job), the host name and SLURM_JOB_ID.
Status init_logging(const Options& options, int rank);
// A command's error: through the process logger once it is installed, else as a plain line on
// stderr ("dshpc serve: --model is required").
void report_error(const std::string& command, const Status& status);

struct Job {
  std::unique_ptr<MpiRuntime> mpi;
  std::unique_ptr<ProcessGroups> groups;
  std::unique_ptr<ModelRuntime> runtime;
  std::unique_ptr<Cluster> cluster;
  std::shared_ptr<GpuMonitor> gpu_monitor;  // on --device cuda: feeds the cluster's GPU figures

  bool coordinator() const { return groups->rank == 0; }
};

// Starts MPI (if not yet), checks the layout against the model's config on every rank before any
// weight is read, loads this rank's shard and agrees on the KV cache. A failure on any rank
// becomes an error on every rank (no rank is left waiting), printed once: by rank 0 when every
// rank shares it, by the failing rank otherwise. `command` labels messages.
// `before_load`, when given, runs on every rank once the process groups exist and before any
// weight is read (serve binds its HTTP port there, so /health answers while the model loads).
// Rank 0 logs its loading progress (bytes, throughput, time left) and passes it to
// `on_load_progress` when given. The process logger is installed first (init_logging).
StatusOr<std::unique_ptr<Job>> start_job(
    const std::string& command, const Options& options, int* argc, char*** argv,
    const std::function<Status(const ProcessGroups&)>& before_load = {},
    const Model::LoadProgress& on_load_progress = {});

// Logs the per-rank weight and KV-cache table (rank 0).
void print_rank_report(const Job& job);
// The same as a JSON array text.
std::string rank_report_json(const Job& job);

}  // namespace dshpc
