// common/parallel_for.h: every index is visited exactly once whatever the split, small ranges run
// on the calling thread, and an exception thrown by any piece reaches the caller after every
// thread has been joined.
#include "common/parallel_for.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

namespace dshpc {
namespace {

TEST(ParallelFor, VisitsEveryIndexOnce) {
  for (int64_t count : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{100003}}) {
    std::vector<std::atomic<int>> visits(static_cast<size_t>(count));
    parallel_for(count, 100, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) visits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(visits[i].load(), 1) << "index " << i;
  }
}

TEST(ParallelFor, LittleWorkStaysOnTheCallingThread) {
  const std::thread::id caller = std::this_thread::get_id();
  int pieces = 0;
  parallel_for(50, 100, [&](int64_t begin, int64_t end) {
    ++pieces;
    EXPECT_EQ(std::this_thread::get_id(), caller);
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 50);
  });
  EXPECT_EQ(pieces, 1);
}

TEST(ParallelFor, AnExceptionInAnyPieceReachesTheCaller) {
  // The piece holding index 9,999 throws; on one core that is the caller's own piece.
  std::atomic<int64_t> done{0};
  EXPECT_THROW(parallel_for(10000, 10,
                            [&](int64_t begin, int64_t end) {
                              if (begin <= 9999 && 9999 < end) throw std::runtime_error("piece");
                              done.fetch_add(end - begin);
                            }),
               std::runtime_error);
  EXPECT_LT(done.load(), 10000);  // the throwing piece did not count
}

}  // namespace
}  // namespace dshpc
