// dshpc convert (Hugging Face checkpoint → dshpc HDF5 checkpoint) and dshpc validate (either
// format): the commands of issue 8. The work is in worker/h5_convert.h and
// worker/checkpoint_validate.h; this file parses options and prints progress and results.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "app/commands.h"
#include "common/options.h"
#include "coordinator/version.h"
#include "worker/checkpoint_validate.h"
#include "worker/h5_checkpoint.h"
#include "worker/h5_convert.h"

namespace dshpc {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Prints "LABEL: done / total (percent), rate, ETA" at most once a second (on a terminal in
// place, otherwise one line each), so that a multi-hour conversion shows it is alive while a
// small one prints nothing but its result.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(std::string label)
      : label_(std::move(label)), start_(Clock::now()), last_(start_), tty_(isatty(2) != 0) {}

  void update(int64_t done, int64_t total, const std::string& detail) {
    const auto now = Clock::now();
    if (now - last_ < std::chrono::seconds(1)) return;
    last_ = now;
    printed_ = true;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double rate = seconds > 0 ? done / seconds : 0.0;
    const double eta = rate > 0 ? (total - done) / rate : 0.0;
    std::fprintf(stderr, "%s%s: %.2f / %.2f GiB (%.1f%%), %.2f GB/s, %.0f s left%s%s%s",
                 tty_ ? "\r\033[K" : "", label_.c_str(), done / kGiB, total / kGiB,
                 total > 0 ? 100.0 * done / total : 100.0, rate / 1e9, eta,
                 detail.empty() ? "" : ", ", detail.c_str(), tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void finish() {
    if (printed_ && tty_) std::fputc('\n', stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_;
  Clock::time_point start_, last_;
  bool tty_ = false;
  bool printed_ = false;
};

std::vector<OptionSpec> convert_options() {
  return {
      {"from", "HF_DIR", "Hugging Face checkpoint directory (config.json, safetensors)", ""},
      {"to", "MODEL.h5", "the HDF5 checkpoint to write (replaced if it exists)", ""},
      {"dtype", "keep|bf16|f32",
       "keep: every tensor as stored (FP8 weights with their scales); bf16/f32: matrices in that "
       "type, FP8 weights dequantised",
       "keep"},
  };
}

std::vector<OptionSpec> validate_options() {
  return {
      {"write-manifest", "",
       "for a Hugging Face directory: write DIR/tensors.sha256 (SHA-256 of every tensor) after "
       "checking",
       ""},
      {"quiet", "", "no progress lines", ""},
  };
}

int fail(const char* command, const Status& status, int code) {
  std::fprintf(stderr, "%s: %s\n", command, status.message().c_str());
  return code;
}

}  // namespace

int run_convert(int argc, char** argv, int first) {
  constexpr char kCommand[] = "dshpc convert";
  const std::vector<OptionSpec> table = convert_options();
  auto parsed = Options::parse(kCommand, table, argc, argv, first);
  if (!parsed.ok()) return fail(kCommand, parsed.status(), 2);
  const Options& opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(Options::help_text(
                   kCommand,
                   "Converts a Hugging Face checkpoint into one dshpc HDF5 checkpoint: a dataset "
                   "per tensor, chunked along its tensor-parallel split, Fletcher32 on every "
                   "chunk, a SHA-256 per tensor, config.json, tokenizer files and a tensors.sha256 "
                   "manifest stored inside (docs/checkpoints.md). Load it with --model MODEL.h5; "
                   "check it with `dshpc validate MODEL.h5`.",
                   table)
                   .c_str(),
               stdout);
    return 0;
  }
  if (opts.get("from").empty() || opts.get("to").empty()) {
    return fail(kCommand, invalid_argument("--from and --to are required (see --help)"), 2);
  }
  auto dtype = parse_convert_dtype(opts.get("dtype"));
  if (!dtype.ok()) return fail(kCommand, dtype.status(), 2);
  if (!hdf5_available()) {
    return fail(kCommand, unimplemented("this dshpc was built without HDF5"), 1);
  }

  ProgressPrinter printer("convert");
  ConvertOptions options;
  options.from = opts.get("from");
  options.to = opts.get("to");
  options.dtype = *dtype;
  options.created_by = version_string();
  options.progress = [&](const ConvertProgress& p) {
    printer.update(p.bytes_done, p.bytes_total,
                   std::to_string(p.tensors_done) + "/" + std::to_string(p.tensors_total) +
                       " tensors" + (p.tensor != nullptr ? ", " + *p.tensor : ""));
  };
  auto result = convert_to_h5(options);
  printer.finish();
  if (!result.ok()) return fail(kCommand, result.status(), 1);
  std::printf(
      "converted %s -> %s: %lld tensors, %.3f GiB of tensor data (--dtype %s%s), file %.3f GiB, "
      "%.1f s (%.2f GB/s)%s\n",
      options.from.c_str(), options.to.c_str(), static_cast<long long>(result->tensors),
      result->tensor_bytes / kGiB, convert_dtype_name(options.dtype),
      result->dropped_scales > 0
          ? (", " + std::to_string(result->dropped_scales) + " FP8 scale tensors folded in").c_str()
          : "",
      result->file_bytes / kGiB, result->seconds,
      result->seconds > 0 ? result->tensor_bytes / result->seconds / 1e9 : 0.0,
      result->source_manifest_checked ? "; source tensors match its tensors.sha256" : "");
  return 0;
}

int run_validate(int argc, char** argv, int first) {
  constexpr char kCommand[] = "dshpc validate";
  const std::vector<OptionSpec> table = validate_options();
  // One positional argument, PATH, anywhere among the options (which all are flags).
  std::vector<char*> rest(argv, argv + first);
  std::vector<std::string> paths;
  for (int i = first; i < argc; ++i) {
    if (std::string(argv[i]).rfind("-", 0) == 0) {
      rest.push_back(argv[i]);
    } else {
      paths.push_back(argv[i]);
    }
  }
  auto parsed = Options::parse(kCommand, table, static_cast<int>(rest.size()), rest.data(), first);
  if (!parsed.ok()) return fail(kCommand, parsed.status(), 2);
  const Options& opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(
        Options::help_text(
            std::string(kCommand) + " PATH",
            "Checks an HDF5 checkpoint or a Hugging Face directory before a job trusts it: every "
            "tensor the config needs, with the right shape and dtype; for HDF5 every chunk read "
            "(Fletcher32) and every tensor's SHA-256 recomputed; for safetensors the headers and, "
            "when DIR/tensors.sha256 exists, every tensor's SHA-256. Exits 0 only when all is "
            "well; otherwise prints each bad tensor and what is wrong, and exits 1.",
            table)
            .c_str(),
        stdout);
    return 0;
  }
  if (paths.size() != 1) {
    return fail(kCommand, invalid_argument("expected one PATH (see --help)"), 2);
  }
  const std::string& path = paths.front();
  ProgressPrinter printer("validate");
  ValidateOptions options;
  options.write_manifest = opts.flag("write-manifest");
  if (!opts.flag("quiet")) {
    options.progress = [&](const ValidationProgress& p) {
      printer.update(
          p.bytes_done, p.bytes_total,
          std::to_string(p.tensors_done) + "/" + std::to_string(p.tensors_total) + " tensors");
    };
  }
  const ValidationReport report = validate_checkpoint(path, options);
  printer.finish();
  for (const std::string& note : report.notes) {
    std::fprintf(stderr, "%s: %s: note: %s\n", kCommand, path.c_str(), note.c_str());
  }
  if (!report.ok()) {
    for (const std::string& problem : report.problems) {
      // Messages that already start with the path (file-level ones) are not prefixed twice.
      const bool named = problem.rfind(path, 0) == 0;
      std::fprintf(stderr, "%s: %s%s%s\n", kCommand, named ? "" : path.c_str(), named ? "" : ": ",
                   problem.c_str());
    }
    std::fprintf(stderr, "%s: %s: %zu problem%s found\n", kCommand, path.c_str(),
                 report.problems.size(), report.problems.size() == 1 ? "" : "s");
    return 1;
  }
  std::printf("ok: %s (%s): %lld tensors, %lld SHA-256 verified over %.3f GiB%s, %.1f s\n",
              path.c_str(), report.format.c_str(), static_cast<long long>(report.tensors),
              static_cast<long long>(report.tensors_hashed), report.bytes_hashed / kGiB,
              report.format == "hdf5" ? ", Fletcher32 on every chunk" : "", report.seconds);
  return 0;
}

}  // namespace dshpc
