// Helpers shared by the multi-rank tests.
#pragma once

#include <mpi.h>

#include "parallel/process_groups.h"

namespace dshpc::testing {

inline int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

inline int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// Ranks [0, n) of MPI_COMM_WORLD as a communicator of their own, so that a shape of n ranks can be
// tested inside a larger job. Collective over MPI_COMM_WORLD; ranks >= n get an empty MpiComm
// and sit the test out.
inline MpiComm first_ranks(int n) {
  return MpiComm::split(MPI_COMM_WORLD, world_rank() < n ? 0 : MPI_UNDEFINED, world_rank());
}

// Short enough that a test which leaves one rank behind fails within the ctest timeout.
inline constexpr double kTestTimeoutS = 30.0;

}  // namespace dshpc::testing

// Every rank takes the same branch, so skipping never splits the ranks between tests.
#define SKIP_UNLESS_WORLD_AT_LEAST(n)       \
  if (::dshpc::testing::world_size() < (n)) \
  GTEST_SKIP() << "needs " << (n) << " ranks, the job has " << ::dshpc::testing::world_size()
