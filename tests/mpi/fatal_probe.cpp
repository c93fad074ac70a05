// Jobs that must die, run by ctest through expect_failure.cmake: each mode provokes one kind of
// fatal error on one rank and the test checks that the whole job exits non-zero, quickly, with a
// message that names what went wrong. (gtest death tests cannot do this: they fork, and an MPI
// process must not.)
//   timeout    rank 0 waits for a message rank 1 never sends (DSHPC_COLLECTIVE_TIMEOUT_S=1)
//   mpi-error  rank 0 sends to a rank that does not exist (DSHPC_MPI_CHECK)
//   truncate   rank 1 sends more bytes than rank 0 receives (the polling loop reports it)
//   check      rank 1 fails a DSHPC_CHECK while rank 0 waits on it (MPI_Abort reaches rank 0)
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "common/check.h"
#include "parallel/mpi_collectives.h"
#include "parallel/mpi_runtime.h"
#include "parallel/tags.h"

int main(int argc, char** argv) {
  dshpc::MpiRuntime mpi(&argc, &argv);
  if (argc != 2 || mpi.world_size() < 2) {
    std::fprintf(stderr, "usage: mpirun -np 2 %s timeout|mpi-error|truncate|check\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const dshpc::StatusOr<double> timeout_s = dshpc::collective_timeout_from_env();
  DSHPC_CHECK(timeout_s.ok()) << timeout_s.status().to_string();
  dshpc::MpiCollectives world(MPI_COMM_WORLD, "world", *timeout_s);
  char buffer[16] = {0};
  const int activations = dshpc::tag_value(dshpc::MessageTag::kActivations);

  if (mode == "timeout" && mpi.world_rank() == 0) {
    world.recv(buffer, sizeof(buffer), 1, activations);
  } else if (mode == "mpi-error" && mpi.world_rank() == 0) {
    DSHPC_MPI_CHECK(MPI_Send(buffer, sizeof(buffer), MPI_BYTE, mpi.world_size() + 5, activations,
                             MPI_COMM_WORLD));
  } else if (mode == "truncate" && mpi.world_rank() == 0) {
    world.recv(buffer, sizeof(buffer) / 2, 1, activations);
  } else if (mode == "truncate" && mpi.world_rank() == 1) {
    world.send(buffer, sizeof(buffer), 0, activations);
    std::this_thread::sleep_for(std::chrono::seconds(60));
  } else if (mode == "check" && mpi.world_rank() == 1) {
    DSHPC_CHECK(std::strlen(buffer) == 3) << "deliberate failure on rank 1";
  } else if (mode == "check" && mpi.world_rank() == 0) {
    world.recv(buffer, sizeof(buffer), 1, activations);
  } else {
    // Bystander: outlives the failing rank so that only MPI_Abort can end this process early.
    std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  std::fprintf(stderr, "fatal_probe: mode '%s' did not fail on rank %d\n", mode.c_str(),
               mpi.world_rank());
  return 0;
}
