// The dshpc subcommands. Each takes the whole argv and the index of its first option, and
// returns the process exit code.
#pragma once

namespace dshpc {

int run_eval_golden(int argc, char** argv, int first);
int run_generate(int argc, char** argv, int first);
int run_tokenize(int argc, char** argv, int first);
int run_bench(int argc, char** argv, int first);
// `dshpc bench serve`: the load generator against a running server (app/bench_serve.cpp).
int run_bench_serve(int argc, char** argv, int first);
int run_serve(int argc, char** argv, int first);
int run_batch(int argc, char** argv, int first);
int run_detokenize(int argc, char** argv, int first);
int run_convert(int argc, char** argv, int first);
int run_validate(int argc, char** argv, int first);
int run_bench_load(int argc, char** argv, int first);

}  // namespace dshpc
