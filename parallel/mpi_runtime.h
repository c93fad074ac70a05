// MPI start-up and shutdown for the whole process, and the DSHPC_MPI_CHECK macro.
//
// One MpiRuntime lives at the top of main(); everything that holds an MPI object (ProcessGroups,
// MpiComm, MpiCollectives) must be destroyed before it. While it lives, fatal errors anywhere
// (DSHPC_CHECK, DSHPC_FATAL, DSHPC_MPI_CHECK) end in MPI_Abort, so that mpirun or srun tears the
// whole job down at once instead of leaving the other ranks waiting for a dead peer.
#pragma once

#include <mpi.h>

namespace dshpc {

class MpiRuntime {
 public:
  // Asks for MPI_THREAD_MULTIPLE so that the coordinator's threads may talk MPI; thread_level()
  // says what the library granted (rank 0 prints a note when it is less). Also switches
  // MPI_COMM_WORLD (and so every communicator derived from it) to MPI_ERRORS_RETURN, so that
  // failures reach DSHPC_MPI_CHECK with their call text instead of aborting inside MPI.
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();  // MPI_Finalize

  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  int thread_level() const { return thread_level_; }  // MPI_THREAD_SINGLE ... MPI_THREAD_MULTIPLE
  bool thread_multiple() const { return thread_level_ == MPI_THREAD_MULTIPLE; }

 private:
  int world_rank_ = 0;
  int world_size_ = 1;
  int thread_level_ = MPI_THREAD_SINGLE;
};

const char* mpi_thread_level_name(int level);  // "MPI_THREAD_MULTIPLE"

// Prints the failed call, MPI's error string, host, rank and file:line, then aborts the job.
[[noreturn]] void mpi_call_failed(const char* call, int error_code, const char* file, int line);

}  // namespace dshpc

// Wraps every MPI call whose failure would leave this rank in an unknown state.
#define DSHPC_MPI_CHECK(call)                                                \
  do {                                                                       \
    const int dshpc_mpi_error_ = (call);                                     \
    if (dshpc_mpi_error_ != MPI_SUCCESS) {                                   \
      ::dshpc::mpi_call_failed(#call, dshpc_mpi_error_, __FILE__, __LINE__); \
    }                                                                        \
  } while (0)
