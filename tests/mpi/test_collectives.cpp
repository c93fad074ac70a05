// MpiCollectives on real ranks: sums, gathers, pipeline point-to-point with tags, the control-plane
// broadcast, and the per-operation counters.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "parallel/mpi_collectives.h"
#include "parallel/process_groups.h"
#include "parallel/tags.h"
#include "tests/mpi/mpi_test_util.h"

namespace dshpc {
namespace {

using testing::first_ranks;
using testing::kTestTimeoutS;
using testing::world_rank;
using testing::world_size;

constexpr int kActivations = tag_value(MessageTag::kActivations);
constexpr int kTokens = tag_value(MessageTag::kTokens);
constexpr int kControl = tag_value(MessageTag::kControl);

// A private copy of the world for each test, so a stray message cannot leak between tests.
class MpiCollectivesTest : public ::testing::Test {
 protected:
  MpiComm comm_ = MpiComm::dup(MPI_COMM_WORLD);
  MpiCollectives world_{comm_.get(), "world", kTestTimeoutS};
};

TEST_F(MpiCollectivesTest, AllReduceSum) {
  const int n = world_size();
  // 1 M floats (4 MiB) takes MPI's large-message path; values stay exact in float32.
  for (size_t count : {size_t{0}, size_t{1}, size_t{1000}, size_t{1} << 20}) {
    SCOPED_TRACE("count " + std::to_string(count));
    std::vector<float> data(count);
    for (size_t i = 0; i < count; ++i) data[i] = float(world_rank() + 1) * float(i % 97 + 1);
    world_.all_reduce_sum(data.data(), count);
    const float ranks_sum = float(n * (n + 1) / 2);
    size_t wrong = 0;
    for (size_t i = 0; i < count; ++i) wrong += data[i] != ranks_sum * float(i % 97 + 1);
    EXPECT_EQ(wrong, 0u);
  }
}

TEST_F(MpiCollectivesTest, AllGather) {
  const int n = world_size();
  const size_t count = 3;
  std::vector<float> send(count);
  for (size_t i = 0; i < count; ++i) send[i] = float(world_rank() * 100 + int(i));
  std::vector<float> expected;
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < count; ++i) expected.push_back(float(r * 100 + int(i)));
  }

  std::vector<float> recv(n * count, -1.0f);
  world_.all_gather(send.data(), recv.data(), count);
  EXPECT_EQ(recv, expected);

  // In place: this rank's block already sits at its slot of the output.
  std::vector<float> in_place(n * count, -1.0f);
  std::copy(send.begin(), send.end(), in_place.begin() + world_rank() * count);
  world_.all_gather(in_place.data() + world_rank() * count, in_place.data(), count);
  EXPECT_EQ(in_place, expected);
}

// Activations flow stage to stage in every pipeline of a (tp 2, pp 2) layout, and the last stage
// answers the first with tokens, as a decode step does.
TEST(PipelineSendRecv, NeighboursInTp2Pp2) {
  SKIP_UNLESS_WORLD_AT_LEAST(4);
  MpiComm sub = first_ranks(4);
  if (!sub.valid()) return;
  StatusOr<ProcessGroups> created =
      ProcessGroups::create({.tp = 2, .pp = 2}, {.base = sub.get(), .timeout_s = kTestTimeoutS});
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  ProcessGroups& groups = *created;
  Collectives& pp = *groups.pp_coll;

  const size_t count = size_t{1} << 18;  // 1 MiB: beyond the eager limit, so a real rendezvous
  std::vector<float> activations(count);
  std::vector<int32_t> tokens(4);
  if (groups.is_first_stage()) {
    for (size_t i = 0; i < count; ++i) activations[i] = float(groups.rank * 1000 + int(i % 1000));
    pp.send(activations.data(), count * sizeof(float), *groups.next_stage(), kActivations);
    pp.recv(tokens.data(), tokens.size() * sizeof(int32_t), pp.size() - 1, kTokens);
    // The last stage of this pipeline is the rank one stage (tp = 2 ranks) further on.
    EXPECT_EQ(tokens, (std::vector<int32_t>{groups.rank + 2, 7, 8, 9}));
  } else {
    pp.recv(activations.data(), count * sizeof(float), *groups.prev_stage(), kActivations);
    const int sender = *groups.layout.prev_stage_rank(groups.rank);
    size_t wrong = 0;
    for (size_t i = 0; i < count; ++i)
      wrong += activations[i] != float(sender * 1000 + int(i % 1000));
    EXPECT_EQ(wrong, 0u) << "activations from rank " << sender;
    tokens = {groups.rank, 7, 8, 9};
    pp.send(tokens.data(), tokens.size() * sizeof(int32_t), 0, kTokens);
  }
}

// A chain through every rank: stage s receives from s - 1, then sends to s + 1.
TEST(PipelineSendRecv, ChainThroughAllStages) {
  SKIP_UNLESS_WORLD_AT_LEAST(2);
  StatusOr<ProcessGroups> created =
      ProcessGroups::create({.pp = world_size()}, {.timeout_s = kTestTimeoutS});
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  ProcessGroups& groups = *created;
  std::vector<int32_t> hops(world_size(), -1);
  if (!groups.is_first_stage()) {
    groups.pp_coll->recv(hops.data(), hops.size() * sizeof(int32_t), *groups.prev_stage(),
                         kActivations);
  }
  hops[groups.coords.pp] = groups.rank;
  if (!groups.is_last_stage()) {
    groups.pp_coll->send(hops.data(), hops.size() * sizeof(int32_t), *groups.next_stage(),
                         kActivations);
  } else {
    std::vector<int32_t> all(world_size());
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(hops, all);
  }
}

TEST_F(MpiCollectivesTest, TagsKeepMessageKindsApart) {
  SKIP_UNLESS_WORLD_AT_LEAST(2);
  if (world_rank() > 1) return;
  // Rank 0 sends control then activations; rank 1 asks for them in the other order and must get
  // each by its tag. Small messages, so both sends complete without the receiver (eager).
  int32_t control = 11;
  int32_t activations = 22;
  if (world_rank() == 0) {
    world_.send(&control, sizeof(control), 1, kControl);
    world_.send(&activations, sizeof(activations), 1, kActivations);
  } else {
    control = activations = 0;
    world_.recv(&activations, sizeof(activations), 0, kActivations);
    world_.recv(&control, sizeof(control), 0, kControl);
    EXPECT_EQ(activations, 22);
    EXPECT_EQ(control, 11);
  }
}

TEST_F(MpiCollectivesTest, EmptyMessageIsStillASignal) {
  SKIP_UNLESS_WORLD_AT_LEAST(2);
  if (world_rank() == 0) world_.send(nullptr, 0, 1, kControl);
  if (world_rank() == 1) world_.recv(nullptr, 0, 0, kControl);
  SUCCEED();  // completing at all is the check: a lost signal would time out
}

TEST_F(MpiCollectivesTest, BroadcastBytes) {
  const int root = world_size() - 1;
  for (size_t length : {size_t{0}, size_t{5}, size_t{100000}}) {
    SCOPED_TRACE("length " + std::to_string(length));
    std::vector<uint8_t> plan;
    if (world_rank() == root) {
      plan.resize(length);
      for (size_t i = 0; i < length; ++i) plan[i] = uint8_t(i * 7 + 3);
    } else {
      plan.assign(17, 0xee);  // stale contents of another size must be replaced
    }
    world_.broadcast_bytes(plan, root);
    ASSERT_EQ(plan.size(), length);
    size_t wrong = 0;
    for (size_t i = 0; i < length; ++i) wrong += plan[i] != uint8_t(i * 7 + 3);
    EXPECT_EQ(wrong, 0u);
  }
  // The free function, as the control plane calls it on the world communicator.
  std::vector<uint8_t> plan;
  if (world_rank() == 0) plan = {1, 2, 3};
  broadcast_bytes(plan, 0, comm_.get(), kTestTimeoutS);
  EXPECT_EQ(plan, (std::vector<uint8_t>{1, 2, 3}));
}

TEST_F(MpiCollectivesTest, StatsCountCallsBytesAndTime) {
  std::vector<float> data(256, 1.0f);
  world_.all_reduce_sum(data.data(), data.size());
  world_.all_reduce_sum(data.data(), data.size());
  std::vector<float> gathered(world_size());
  world_.all_gather(data.data(), gathered.data(), 1);
  std::vector<uint8_t> plan(10);
  world_.broadcast_bytes(plan, 0);

  const CollectiveStats stats = world_.stats();
  EXPECT_EQ(stats[CollectiveOp::kAllReduce].calls, 2u);
  EXPECT_EQ(stats[CollectiveOp::kAllReduce].bytes, 2u * 256 * sizeof(float));
  EXPECT_GT(stats.seconds(CollectiveOp::kAllReduce), 0.0);
  EXPECT_EQ(stats[CollectiveOp::kAllGather].calls, 1u);
  EXPECT_EQ(stats[CollectiveOp::kAllGather].bytes, sizeof(float));
  EXPECT_EQ(stats[CollectiveOp::kBroadcast].calls, 1u);
  EXPECT_EQ(stats[CollectiveOp::kBroadcast].bytes, 10u);
  EXPECT_EQ(stats[CollectiveOp::kSend].calls, 0u);
  EXPECT_EQ(world_.seconds(CollectiveOp::kRecv), 0.0);
  EXPECT_STREQ(collective_op_name(CollectiveOp::kAllReduce), "all_reduce_sum");
}

}  // namespace
}  // namespace dshpc
