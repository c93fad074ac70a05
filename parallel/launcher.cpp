#include "parallel/launcher.h"

#include <charconv>
#include <initializer_list>

extern char** environ;

namespace dshpc {
namespace {

// A non-negative integer, the whole text.
std::optional<int> parse_count(std::string_view text) {
  int value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || value < 0) return std::nullopt;
  return value;
}

std::optional<int> get_count(const Environment& env, std::string_view name) {
  auto it = env.find(name);
  if (it == env.end()) return std::nullopt;
  return parse_count(it->second);
}

bool has(const Environment& env, std::string_view name) {
  return env.find(name) != env.end();
}

bool has_prefix(const Environment& env, std::string_view prefix) {
  auto it = env.lower_bound(prefix);
  return it != env.end() && std::string_view(it->first).starts_with(prefix);
}

std::optional<int> first_count(const Environment& env,
                               std::initializer_list<std::string_view> names) {
  for (std::string_view name : names) {
    if (std::optional<int> value = get_count(env, name)) return value;
  }
  return std::nullopt;
}

}  // namespace

const char* launcher_name(Launcher launcher) {
  switch (launcher) {
    case Launcher::kNone:
      return "none";
    case Launcher::kOpenMpi:
      return "openmpi";
    case Launcher::kMpichHydra:
      return "mpich-hydra";
    case Launcher::kSlurm:
      return "slurm";
  }
  return "none";
}

Environment process_environment() {
  Environment env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string_view text(*entry);
    const size_t equals = text.find('=');
    if (equals == std::string_view::npos) continue;
    env.emplace(std::string(text.substr(0, equals)), std::string(text.substr(equals + 1)));
  }
  return env;
}

std::optional<std::vector<int>> parse_slurm_tasks_per_node(std::string_view text) {
  std::vector<int> counts;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    if (comma != std::string_view::npos && text.empty()) return std::nullopt;  // "2,"
    int repeat = 1;
    if (const size_t open = item.find("(x"); open != std::string_view::npos) {
      if (!item.ends_with(")")) return std::nullopt;
      std::optional<int> times = parse_count(item.substr(open + 2, item.size() - open - 3));
      if (!times || *times < 1) return std::nullopt;
      repeat = *times;
      item = item.substr(0, open);
    }
    std::optional<int> tasks = parse_count(item);
    if (!tasks) return std::nullopt;
    counts.insert(counts.end(), static_cast<size_t>(repeat), *tasks);
  }
  if (counts.empty()) return std::nullopt;
  return counts;
}

LaunchInfo detect_launch(const Environment& env) {
  LaunchInfo info;
  if (has(env, "OMPI_COMM_WORLD_RANK")) {
    info.launcher = Launcher::kOpenMpi;
    info.world_rank = get_count(env, "OMPI_COMM_WORLD_RANK");
    info.world_size = get_count(env, "OMPI_COMM_WORLD_SIZE");
    info.local_rank = get_count(env, "OMPI_COMM_WORLD_LOCAL_RANK");
    info.local_size = get_count(env, "OMPI_COMM_WORLD_LOCAL_SIZE");
    return info;
  }
  const bool slurm_task =
      has(env, "SLURM_PROCID") && (has(env, "SLURM_STEP_ID") || has(env, "SLURM_STEPID"));
  // PMI_RANK alone is also what Slurm's pmi2 plugin sets: under srun it is a Slurm task.
  const bool hydra = has(env, "MPI_LOCALRANKID") ||
                     (has(env, "PMI_RANK") &&
                      (has_prefix(env, "HYDRA_") || has_prefix(env, "HYDI_") || !slurm_task));
  if (hydra) {
    info.launcher = Launcher::kMpichHydra;
    info.world_rank = get_count(env, "PMI_RANK");
    info.world_size = get_count(env, "PMI_SIZE");
    info.local_rank = get_count(env, "MPI_LOCALRANKID");
    info.local_size = get_count(env, "MPI_LOCALNRANKS");
    return info;
  }
  if (slurm_task) {
    info.launcher = Launcher::kSlurm;
    info.world_rank = get_count(env, "SLURM_PROCID");
    info.world_size = first_count(env, {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"});
    info.local_rank = get_count(env, "SLURM_LOCALID");
    const std::optional<int> node = get_count(env, "SLURM_NODEID");
    for (std::string_view name : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
      auto it = env.find(name);
      if (it == env.end() || !node) continue;
      std::optional<std::vector<int>> counts = parse_slurm_tasks_per_node(it->second);
      if (counts && *node < static_cast<int>(counts->size())) info.local_size = (*counts)[*node];
      break;
    }
  }
  return info;
}

bool is_teardown_signal_sender(Launcher launcher, std::string_view sender_comm) {
  static constexpr std::string_view kOpenMpi[] = {"mpirun", "mpiexec", "orterun",
                                                  "orted",  "prterun", "prted"};
  static constexpr std::string_view kHydra[] = {"hydra_pmi_proxy", "pmi_proxy", "mpiexec.hydra",
                                                "mpiexec", "mpirun"};
  auto in = [&](const auto& names) {
    for (std::string_view name : names) {
      if (sender_comm == name) return true;
    }
    return false;
  };
  switch (launcher) {
    case Launcher::kOpenMpi:
      return in(kOpenMpi);
    case Launcher::kMpichHydra:
      return in(kHydra);
    case Launcher::kSlurm:
      return false;
    case Launcher::kNone:
      return in(kOpenMpi) || in(kHydra);
  }
  return false;
}

}  // namespace dshpc
