// dshpc: one SPMD program for serving DeepSeek models; `dshpc COMMAND --help` for each command.
#include <cstdio>
#include <cstring>
#include <string>

#include "app/commands.h"
#include "coordinator/version.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int argc, char** argv, int first);
  const char* summary;
};

constexpr Command kCommands[] = {
    {"eval-golden", dshpc::run_eval_golden,
     "compare the model's logits and greedy tokens with a reference golden file"},
    {"generate", dshpc::run_generate, "greedy-generate token ids from a prompt of token ids"},

    {"serve", dshpc::run_serve, "serve the model over an OpenAI-compatible HTTP API"},
    {"batch", dshpc::run_batch, "offline inference over a JSONL file of OpenAI batch requests"},
    {"bench", dshpc::run_bench,
     "decode and prefill throughput beside the device's measured bandwidth and FLOP/s"},
    {"tokenize", dshpc::run_tokenize, "JSON lines {\"text\"} on stdin to {\"ids\"} lines"},
    {"detokenize", dshpc::run_detokenize, "JSON lines {\"ids\"} on stdin to {\"text\"} lines"},
    {"convert", dshpc::run_convert, "convert a Hugging Face checkpoint to a dshpc HDF5 checkpoint"},
    {"validate", dshpc::run_validate,
     "check an HDF5 checkpoint or Hugging Face directory (shapes, dtypes, checksums)"},
    {"bench-load", dshpc::run_bench_load,
     "load time and bytes read per rank, safetensors against HDF5, in several layouts"},
};

void print_usage(FILE* out) {
  std::fprintf(out,
               "%s: serve DeepSeek models as one MPI job\n\nusage: dshpc COMMAND [options]\n\n"
               "commands:\n",
               dshpc::version_string());
  for (const Command& c : kCommands) std::fprintf(out, "  %-14s %s\n", c.name, c.summary);
  std::fprintf(out, "  %-14s %s\n", "bench serve",
               "load generator against a running server: TTFT, ITL, E2E, throughput, goodput");
  std::fprintf(out, "  %-14s %s\n", "version", "print the version");
  std::fprintf(out, "\n`dshpc COMMAND --help` describes each command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    print_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  if (name == "version" || name == "--version") {
    std::printf("%s\n", dshpc::version_string());
    return 0;
  }
  if (name == "bench" && argc > 2 && std::strcmp(argv[2], "serve") == 0) {
    return dshpc::run_bench_serve(argc, argv, 3);
  }
  for (const Command& c : kCommands) {
    if (name == c.name) return c.run(argc, argv, 2);
  }
  std::fprintf(stderr, "dshpc: unknown command '%s'\n\n", name.c_str());
  print_usage(stderr);
  return 2;
}
