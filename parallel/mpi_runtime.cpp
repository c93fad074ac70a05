#include "parallel/mpi_runtime.h"

#include <cstdio>
#include <cstdlib>

#include "common/check.h"
#include "parallel/launcher.h"

namespace dshpc {
namespace {

// Installed as the fatal-error handler: MPI_Abort reaches every rank through the launcher, which
// then exits non-zero. Outside the MPI lifetime there is nothing to tear down but this process.
void abort_job(int exit_code) {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

}  // namespace

const char* mpi_thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "unknown MPI thread level";
}

void mpi_call_failed(const char* call, int error_code, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  if (MPI_Error_string(error_code, text, &length) != MPI_SUCCESS) {
    std::snprintf(text, sizeof(text), "unknown MPI error");
  }
  FatalMessage(file, line, "MPI call failed:").stream()
      << call << " returned " << error_code << " (" << text << ")";
  std::_Exit(70);  // not reached: FatalMessage's destructor aborts
}

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  DSHPC_CHECK(!initialized) << "MPI is already initialised; create exactly one MpiRuntime";
  // Until MPI says, the launcher's word: a failing MPI_Init then names the rank.
  if (std::optional<int> rank = detect_launch(process_environment()).world_rank) {
    set_process_identity(*rank, -1);
  }
  DSHPC_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &thread_level_));
  DSHPC_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  DSHPC_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
  DSHPC_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
  set_process_identity(world_rank_, -1);
  set_abort_handler(&abort_job);
  if (world_rank_ == 0 && thread_level_ < MPI_THREAD_MULTIPLE) {
    std::fprintf(stderr,
                 "dshpc: MPI granted %s (asked for MPI_THREAD_MULTIPLE); MPI calls must stay on "
                 "one thread at a time\n",
                 mpi_thread_level_name(thread_level_));
  }
}

MpiRuntime::~MpiRuntime() {
  // A fatal error after this point has no job left to abort.
  set_abort_handler(nullptr);
  MPI_Finalize();
}

}  // namespace dshpc
