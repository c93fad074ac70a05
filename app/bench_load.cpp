// dshpc bench-load: how long each rank takes to load its shard and how many bytes it reads, from
// a safetensors directory and from an HDF5 checkpoint, in several tp × pp layouts of one MPI job.
//
//   mpirun -np 4 dshpc bench-load --random-model configs/models/demo.json --workdir /tmp/bl
//   mpirun -np 4 dshpc bench-load --models DIR,MODEL.h5 --layouts 2x2,4x1
//
// With --random-model, rank 0 first writes seeded random weights of that config as a sharded
// bf16 safetensors directory and converts it (dtype keep) to HDF5, unless they are already in the
// work directory. Before each load the files are dropped from the page cache (posix_fadvise
// DONTNEED; --warm keeps them), so loads read from storage; the figure beside them is one
// stream's cold sequential read of the same files, measured the same way. Each rank's reads are
// audited against the split table (worker/read_audit.h): the command exits 1 when a rank reads a
// tensor it does not hold, or the whole of one it holds only part of.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "app/commands.h"
#include "common/dtype.h"
#include "common/options.h"
#include "coordinator/version.h"
#include "kernels/backend.h"
#include "parallel/mpi_collectives.h"
#include "parallel/mpi_runtime.h"
#include "parallel/process_groups.h"
#include "worker/h5_checkpoint.h"
#include "worker/h5_convert.h"
#include "worker/model_runtime.h"
#include "worker/read_audit.h"

namespace dshpc {
namespace {

namespace fs = std::filesystem;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr int64_t kShardBytes = int64_t{4} << 30;  // safetensors shard size of the random model

std::vector<OptionSpec> options_table() {
  return {
      {"models", "PATH,PATH,…", "checkpoints to load: Hugging Face directories or .h5 files", ""},
      {"random-model", "CONFIG.json",
       "write random weights of this config (bf16 safetensors + HDF5) in --workdir and load both",
       ""},
      {"workdir", "DIR", "where --random-model writes its checkpoints", "/tmp/dshpc-bench-load"},
      {"seed", "N", "seed of --random-model", "0"},
      {"layouts", "TPxPP,…",
       "layouts to load (dp = world / (tp × pp)); default: every tp × pp = world", ""},
      {"repeats", "N", "loads per model and layout", "1"},
      {"warm", "", "keep the files in the page cache between loads (default: drop them)", ""},
      {"json", "FILE", "also write the results as a JSON array to FILE", ""},
      {"prepare-timeout-s", "S", "how long ranks wait for rank 0 to write --random-model", "7200"},
  };
}

int fail(const Status& status, int code) {
  std::fprintf(stderr, "dshpc bench-load: %s\n", status.message().c_str());
  return code;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Bytes this process caused to be read from storage (/proc/self/io read_bytes; page-cache hits
// do not count), or -1 where the kernel does not report it.
int64_t storage_read_bytes() {
  std::ifstream in("/proc/self/io");
  std::string key;
  int64_t value = 0;
  while (in >> key >> value) {
    if (key == "read_bytes:") return value;
  }
  return -1;
}

std::vector<std::string> checkpoint_files(const std::string& path) {
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (entry.is_regular_file()) files.push_back(entry.path().string());
    }
  } else {
    files.push_back(path);
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Writes back and drops the files' pages from the page cache, so the next read goes to storage.
void drop_from_page_cache(const std::vector<std::string>& files) {
  for (const std::string& file : files) {
    const int fd = ::open(file.c_str(), O_RDONLY);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// One stream reading the files sequentially (16 MiB reads, at most 4 GiB): the storage's rate.
double sequential_read_rate(const std::vector<std::string>& files, bool cold) {
  if (cold) drop_from_page_cache(files);
  std::vector<char> buffer(16 << 20);
  int64_t total = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const std::string& file : files) {
    const int fd = ::open(file.c_str(), O_RDONLY);
    if (fd < 0) continue;
    ssize_t n;
    while (total < (int64_t{4} << 30) && (n = ::read(fd, buffer.data(), buffer.size())) > 0) {
      total += n;
    }
    ::close(fd);
  }
  const double seconds = seconds_since(start);
  return seconds > 0 ? total / seconds : 0.0;
}

// Seeded random weights of `config_path` as a bf16 safetensors directory (shards of at most
// kShardBytes and an index, as Hugging Face publishes them).
Status write_random_safetensors(const std::string& config_path, const std::string& dir,
                                uint64_t seed) {
  ASSIGN_OR_RETURN(const ModelConfig config, load_model_config(config_path));
  const auto shapes = Model::expected_tensors(config);
  const auto source = make_random_source(seed, shapes);
  fs::create_directories(dir);
  fs::copy_file(config_path, dir + "/config.json", fs::copy_options::overwrite_existing);

  std::vector<std::vector<size_t>> shards(1);
  int64_t shard_bytes = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    int64_t bytes = 2;
    for (int64_t d : shapes[i].second) bytes *= d;
    if (shard_bytes > 0 && shard_bytes + bytes > kShardBytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += bytes;
  }
  boost::json::object weight_map;
  std::vector<float> rows;
  std::vector<uint16_t> bf16;
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    boost::json::object header;
    uint64_t offset = 0;
    for (size_t i : shards[s]) {
      const auto& [tensor, shape] = shapes[i];
      uint64_t bytes = 2;
      for (int64_t d : shape) bytes *= static_cast<uint64_t>(d);
      boost::json::array dims(shape.begin(), shape.end());
      header[tensor] = {{"dtype", "BF16"},
                        {"shape", dims},
                        {"data_offsets", boost::json::array{offset, offset + bytes}}};
      offset += bytes;
      weight_map[tensor] = name;
    }
    std::string text = boost::json::serialize(header);
    text.append((8 - text.size() % 8) % 8, ' ');
    std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
    const uint64_t length = text.size();
    out.write(reinterpret_cast<const char*>(&length), 8);  // little-endian host
    out << text;
    for (size_t i : shards[s]) {
      const auto& [tensor, shape] = shapes[i];
      const int64_t cols = shape.size() > 1 ? shape[1] : 1;
      const int64_t step = std::max<int64_t>(1, (int64_t{16} << 20) / cols);
      for (int64_t r = 0; r < shape[0]; r += step) {
        const int64_t n = std::min(step, shape[0] - r);
        rows.resize(static_cast<size_t>(n * cols));
        RETURN_IF_ERROR(source->read_f32(tensor, Range{r, n}, Range::all(), rows.data()));
        bf16.resize(rows.size());
        for (size_t k = 0; k < rows.size(); ++k) bf16[k] = float_to_bf16(rows[k]);
        out.write(reinterpret_cast<const char*>(bf16.data()),
                  static_cast<std::streamsize>(bf16.size() * 2));
      }
    }
    if (!out.flush()) return resource_exhausted("cannot write " + dir + "/" + name);
  }
  boost::json::object index{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
  std::ofstream(dir + "/model.safetensors.index.json") << boost::json::serialize(index);
  return ok_status();
}

// Rank 0 writes the random model unless it is there; the others wait (bounded) for its verdict.
StatusOr<std::vector<std::string>> prepare_random_model(const Options& opts, MPI_Comm world,
                                                        int rank, double timeout_s) {
  const std::string dir = opts.get("workdir");
  const std::string st_dir = dir + "/safetensors";
  const std::string h5_path = dir + "/model.h5";
  Status prepared = ok_status();
  if (rank == 0) {
    const auto start = std::chrono::steady_clock::now();
    std::error_code ec;
    if (!fs::exists(st_dir + "/model.safetensors.index.json", ec)) {
      auto seed = opts.get_int("seed");
      prepared = seed.ok() ? write_random_safetensors(opts.get("random-model"), st_dir,
                                                      static_cast<uint64_t>(*seed))
                           : seed.status();
      std::printf("bench-load: wrote random weights to %s (%.1f s)\n", st_dir.c_str(),
                  seconds_since(start));
    }
    if (prepared.ok() && !fs::exists(h5_path, ec)) {
      ConvertOptions convert;
      convert.from = st_dir;
      convert.to = h5_path;
      convert.created_by = version_string();
      auto converted = convert_to_h5(convert);
      prepared = converted.status();
      if (converted.ok()) {
        std::printf("bench-load: converted to %s (%.1f s, %.2f GB/s)\n", h5_path.c_str(),
                    converted->seconds, converted->tensor_bytes / converted->seconds / 1e9);
      }
    }
    std::fflush(stdout);
  }
  int verdict = prepared.ok() ? 0 : 1;
  MPI_Request request;
  MPI_Ibcast(&verdict, 1, MPI_INT, 0, world, &request);
  wait_until(&request, MPI_STATUS_IGNORE, world, std::chrono::steady_clock::now(), timeout_s,
             {.group = "world", .op = CollectiveOp::kBroadcast, .bytes = sizeof(int), .peer = 0});
  if (!prepared.ok()) return prepared;
  if (verdict != 0) return unavailable("rank 0 could not write the random model (see its message)");
  return std::vector<std::string>{st_dir, h5_path};
}

// What one rank measured in one load, as doubles for one MPI_Gather.
struct RankFigures {
  double load_s = 0, read_s = 0, bytes_read = 0, storage_bytes = 0, owned_bytes = 0,
         excess_bytes = 0, violations = 0, weight_bytes = 0, layer_begin = 0, layer_end = 0, tp = 0,
         pp = 0, failed = 0;
};
constexpr int kFigures = sizeof(RankFigures) / sizeof(double);

StatusOr<std::vector<std::pair<int, int>>> parse_layouts(const std::string& text, int world) {
  std::vector<std::pair<int, int>> layouts;
  if (text.empty()) {
    for (int tp = world; tp >= 1; --tp) {
      if (world % tp == 0) layouts.push_back({tp, world / tp});
    }
    return layouts;
  }
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    int tp = 0, pp = 0;
    char x = 0, extra = 0;
    if (std::sscanf(item.c_str(), "%d%c%d%c", &tp, &x, &pp, &extra) != 3 || x != 'x' || tp < 1 ||
        pp < 1) {
      return invalid_argument("--layouts: '" + item + "' is not TPxPP (e.g. 2x2)");
    }
    if (world % (tp * pp) != 0) {
      return invalid_argument("--layouts: " + item + " does not divide the world size " +
                              std::to_string(world));
    }
    layouts.push_back({tp, pp});
  }
  return layouts;
}

}  // namespace

int run_bench_load(int argc, char** argv, int first) {
  const std::vector<OptionSpec> table = options_table();
  auto parsed = Options::parse("dshpc bench-load", table, argc, argv, first);
  if (!parsed.ok()) return fail(parsed.status(), 2);
  const Options& opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(Options::help_text(
                   "dshpc bench-load",
                   "Loads checkpoints under mpirun in several tensor × pipeline layouts and "
                   "prints, per rank, the load time and the bytes read (HDF5: whole chunks; "
                   "safetensors: the slices), beside one stream's cold sequential read rate. "
                   "Exits 1 when a rank reads a tensor it does not hold.",
                   table)
                   .c_str(),
               stdout);
    return 0;
  }
  if (opts.get("models").empty() == opts.get("random-model").empty()) {
    return fail(invalid_argument("give --models or --random-model (see --help)"), 2);
  }
  auto repeats = opts.get_int("repeats");
  auto prepare_timeout = opts.get_double("prepare-timeout-s");
  if (!repeats.ok()) return fail(repeats.status(), 2);
  if (!prepare_timeout.ok()) return fail(prepare_timeout.status(), 2);
  if (*repeats < 1) return fail(invalid_argument("--repeats must be >= 1"), 2);
  const bool cold = !opts.flag("warm");

  MpiRuntime mpi(&argc, &argv);
  const int rank = mpi.world_rank();
  const int world = mpi.world_size();
  auto layouts = parse_layouts(opts.get("layouts"), world);
  if (!layouts.ok()) return rank == 0 ? fail(layouts.status(), 2) : 2;
  std::vector<std::string> models;
  if (!opts.get("models").empty()) {
    std::stringstream in(opts.get("models"));
    for (std::string item; std::getline(in, item, ',');) models.push_back(item);
  } else {
    auto prepared = prepare_random_model(opts, MPI_COMM_WORLD, rank, *prepare_timeout);
    if (!prepared.ok()) return rank == 0 ? fail(prepared.status(), 1) : 1;
    models = *prepared;
  }

  std::string command = "dshpc";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  boost::json::array results;
  bool all_ok = true;
  for (const std::string& model : models) {
    const std::vector<std::string> files = checkpoint_files(model);
    int64_t file_bytes = 0;
    for (const std::string& f : files) file_bytes += static_cast<int64_t>(fs::file_size(f));
    const std::string format = is_hdf5_file(model) ? "hdf5" : "safetensors";
    double stream_rate = 0.0;
    if (rank == 0) stream_rate = sequential_read_rate(files, cold);
    for (const auto& [tp, pp] : *layouts) {
      ParallelConfig parallel{tp, pp, world / (tp * pp)};
      auto groups = ProcessGroups::create(parallel);
      if (!groups.ok()) return rank == 0 ? fail(groups.status(), 1) : 1;
      ModelRuntimeOptions ro;
      ro.model = model;
      ro.kv_blocks = 1;
      auto config = load_config_for(ro);
      if (!config.ok()) return rank == 0 ? fail(config.status(), 1) : 1;
      if (Status fits = check_splits(groups->layout, split_requirements(*config)); !fits.ok()) {
        if (rank == 0) {
          std::printf("bench-load: %s tp %d × pp %d skipped: %s\n", model.c_str(), tp, pp,
                      fits.message().c_str());
        }
        continue;
      }
      auto stages = stage_layer_ranges(static_cast<int>(config->num_layers), pp, {});
      if (!stages.ok()) return rank == 0 ? fail(stages.status(), 1) : 1;
      ModelShard shard;
      shard.tp_rank = groups->coords.tp;
      shard.tp_size = tp;
      shard.layer_begin = (*stages)[groups->coords.pp].begin;
      shard.layer_end = (*stages)[groups->coords.pp].end;

      for (int64_t repeat = 0; repeat < *repeats; ++repeat) {
        // Every rank has unmapped the previous load's files (mapped pages cannot be dropped), then
        // rank 0 drops them from the page cache, then everyone starts together.
        MpiCollectives world_coll(groups->world.get(), "world", groups->timeout_s);
        float token = 0;
        world_coll.all_reduce_sum(&token, 1);
        if (rank == 0 && cold) drop_from_page_cache(files);
        world_coll.all_reduce_sum(&token, 1);

        RankFigures mine;
        const int64_t storage_before = storage_read_bytes();
        const auto start = std::chrono::steady_clock::now();
        auto runtime = ModelRuntime::create(ro, shard, make_cpu_backend(), *groups->tp_coll);
        mine.load_s = seconds_since(start);
        mine.tp = groups->coords.tp;
        mine.pp = groups->coords.pp;
        mine.layer_begin = static_cast<double>(shard.layer_begin);
        mine.layer_end = static_cast<double>(shard.layer_end);
        if (!runtime.ok()) {
          std::fprintf(stderr, "dshpc bench-load: rank %d: %s\n", rank,
                       runtime.status().message().c_str());
          mine.failed = 1;
        } else {
          const WeightReadStats& stats = (*runtime)->load_stats();
          const int64_t storage_after = storage_read_bytes();
          mine.storage_bytes = storage_before >= 0 && storage_after >= 0
                                   ? static_cast<double>(storage_after - storage_before)
                                   : -1.0;
          mine.read_s = stats.seconds;
          mine.bytes_read = static_cast<double>(stats.bytes);
          mine.weight_bytes = static_cast<double>((*runtime)->model().weight_bytes());
          const ReadAudit audit = audit_weight_reads(*config, shard, stats);
          mine.owned_bytes = static_cast<double>(audit.owned_bytes);
          mine.excess_bytes = static_cast<double>(audit.excess_bytes);
          mine.violations = static_cast<double>(audit.violations.size());
          for (const std::string& v : audit.violations) {
            std::fprintf(stderr, "dshpc bench-load: rank %d (tp %d, pp %d): %s\n", rank,
                         groups->coords.tp, groups->coords.pp, v.c_str());
          }
        }
        std::vector<RankFigures> all(static_cast<size_t>(world));
        MPI_Request gathered;
        MPI_Igather(&mine, kFigures, MPI_DOUBLE, all.data(), kFigures, MPI_DOUBLE, 0,
                    groups->world.get(), &gathered);
        wait_until(&gathered, MPI_STATUS_IGNORE, groups->world.get(),
                   std::chrono::steady_clock::now(), *prepare_timeout,
                   {.group = "world", .op = CollectiveOp::kRecv, .bytes = sizeof(mine)});
        if (rank != 0) continue;

        double slowest = 0, total_read = 0, violations = 0, failed = 0;
        boost::json::array ranks;
        std::printf("\nbench-load: %s (%s, %.3f GiB on disk), tp %d × pp %d × dp %d, %s cache\n",
                    model.c_str(), format.c_str(), file_bytes / kGiB, tp, pp, world / (tp * pp),
                    cold ? "cold" : "warm");
        std::printf("%5s %3s %3s %9s %8s %11s %11s %10s %11s %8s\n", "rank", "tp", "pp", "layers",
                    "load s", "read MiB", "owned MiB", "excess B", "storage MiB", "GB/s");
        for (int r = 0; r < world; ++r) {
          const RankFigures& f = all[static_cast<size_t>(r)];
          slowest = std::max(slowest, f.load_s);
          total_read += f.bytes_read;
          violations += f.violations;
          failed += f.failed;
          char layers[32];
          std::snprintf(layers, sizeof(layers), "%.0f-%.0f", f.layer_begin, f.layer_end);
          std::printf("%5d %3.0f %3.0f %9s %8.3f %11.2f %11.2f %10.0f %11.2f %8.2f\n", r, f.tp,
                      f.pp, layers, f.load_s, f.bytes_read / 1048576.0, f.owned_bytes / 1048576.0,
                      f.excess_bytes, f.storage_bytes / 1048576.0,
                      f.load_s > 0 ? f.bytes_read / f.load_s / 1e9 : 0.0);
          ranks.push_back({{"rank", r},
                           {"tp", f.tp},
                           {"pp", f.pp},
                           {"layer_begin", f.layer_begin},
                           {"layer_end", f.layer_end},
                           {"load_s", f.load_s},
                           {"read_s", f.read_s},
                           {"bytes_read", f.bytes_read},
                           {"owned_bytes", f.owned_bytes},
                           {"excess_bytes", f.excess_bytes},
                           {"storage_read_bytes", f.storage_bytes},
                           {"weight_bytes", f.weight_bytes},
                           {"violations", f.violations},
                           {"failed", f.failed}});
        }
        const bool ok = violations == 0 && failed == 0;
        all_ok = all_ok && ok;
        std::printf(
            "slowest rank %.3f s; all ranks read %.3f GiB (%.2f × the file); %.2f GB/s "
            "aggregate vs one stream's %s sequential read %.2f GB/s; %s\n",
            slowest, total_read / kGiB, file_bytes > 0 ? total_read / file_bytes : 0.0,
            slowest > 0 ? total_read / slowest / 1e9 : 0.0, cold ? "cold" : "warm",
            stream_rate / 1e9,
            ok ? "every rank read only what it holds"
               : "FAILED: a rank read what it does not hold, or failed to load (see above)");
        boost::json::object line{{"command", command},
                                 {"model", model},
                                 {"format", format},
                                 {"file_bytes", file_bytes},
                                 {"tp", tp},
                                 {"pp", pp},
                                 {"dp", world / (tp * pp)},
                                 {"cold", cold},
                                 {"repeat", repeat},
                                 {"load_s_max", slowest},
                                 {"bytes_read_total", total_read},
                                 {"sequential_read_bytes_per_s", stream_rate},
                                 {"ok", ok},
                                 {"ranks", ranks}};
        std::printf("%s\n", boost::json::serialize(line).c_str());
        std::fflush(stdout);
        results.push_back(line);
      }
    }
  }
  if (rank == 0 && !opts.get("json").empty()) {
    std::ofstream(opts.get("json")) << boost::json::serialize(results) << "\n";
  }
  int verdict = all_ok ? 0 : 1;
  MPI_Request request;
  MPI_Ibcast(&verdict, 1, MPI_INT, 0, MPI_COMM_WORLD, &request);
  wait_until(&request, MPI_STATUS_IGNORE, MPI_COMM_WORLD, std::chrono::steady_clock::now(),
             kDefaultCollectiveTimeoutS,
             {.group = "world", .op = CollectiveOp::kBroadcast, .bytes = sizeof(int), .peer = 0});
  return verdict;
}

}  // namespace dshpc
