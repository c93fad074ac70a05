// dshpc tokenize / dshpc detokenize: JSON lines through the tokenizer (DESIGN.md contract).
#include <cstdio>
#include <iostream>

#include "app/commands.h"
#include "app/job.h"
#include "common/log.h"
#include "common/options.h"
#include "coordinator/tokenize_command.h"

namespace dshpc {
namespace {

int run(int argc, char** argv, int first, bool detokenize) {
  const std::string command = detokenize ? "dshpc detokenize" : "dshpc tokenize";
  std::vector<OptionSpec> table = {
      {"tokenizer", "DIR", "directory with tokenizer.json (and tokenizer_config.json)",
       DSHPC_DEFAULT_TOKENIZER_DIR},
  };
  for (OptionSpec& spec : logging_option_specs()) table.push_back(spec);
  auto parsed = Options::parse(command, table, argc, argv, first);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", parsed.status().message().c_str());
    return 2;
  }
  if (parsed->help_requested()) {
    std::fputs(Options::help_text(command,
                                  detokenize ? "Reads {\"ids\": [...]} lines on stdin and writes "
                                               "{\"text\": ...} lines."
                                             : "Reads {\"text\": ...} lines on stdin and writes "
                                               "{\"ids\": [...]} lines.",
                                  table)
                   .c_str(),
               stdout);
    return 0;
  }
  // Not an MPI job: no rank (mpi.rank is null in the log lines).
  if (Status logging = init_logging(*parsed, -1); !logging.ok()) {
    std::fprintf(stderr, "%s: %s\n", command.c_str(), logging.message().c_str());
    return 2;
  }
  std::ios::sync_with_stdio(false);
  return run_tokenize_command(parsed->get("tokenizer"), detokenize, std::cin, std::cout, std::cerr);
}

}  // namespace

int run_tokenize(int argc, char** argv, int first) {
  return run(argc, argv, first, false);
}
int run_detokenize(int argc, char** argv, int first) {
  return run(argc, argv, first, true);
}

}  // namespace dshpc
