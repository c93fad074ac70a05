// gtest entry point for the multi-rank tests: every rank runs every test (tests are SPMD: the
// same collectives in the same order on all ranks). Rank 0 prints the usual report, the other
// ranks only their failures, and all ranks exit with the same code, so that neither mpirun nor a
// reader can mistake a failure on rank 3 for a pass.
#include <gtest/gtest.h>

#include <cstdio>

#include "parallel/mpi_collectives.h"
#include "parallel/mpi_runtime.h"
#include "tests/mpi/mpi_test_util.h"

namespace {

class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  dshpc::MpiRuntime mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (mpi.world_rank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(mpi.world_rank()));
  }
  const int local_failed = RUN_ALL_TESTS() != 0 ? 1 : 0;

  float failed_ranks = static_cast<float>(local_failed);
  {
    dshpc::MpiCollectives world(MPI_COMM_WORLD, "world", dshpc::testing::kTestTimeoutS);
    world.all_reduce_sum(&failed_ranks, 1);
  }
  if (mpi.world_rank() == 0) {
    if (failed_ranks > 0) {
      std::fprintf(stderr, "dshpc_mpi_tests: %d of %d ranks had failures\n",
                   static_cast<int>(failed_ranks), mpi.world_size());
    } else {
      std::printf("dshpc_mpi_tests: all %d ranks passed\n", mpi.world_size());
    }
  }
  return failed_ranks > 0 ? 1 : 0;
}
