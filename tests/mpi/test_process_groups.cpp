// ProcessGroups built over real MPI communicators: group membership against hand-written tables,
// and invalid or inconsistent settings failing identically on every rank without a deadlock.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "parallel/mpi_collectives.h"
#include "parallel/process_groups.h"
#include "tests/mpi/mpi_test_util.h"

namespace dshpc {
namespace {

using testing::first_ranks;
using testing::kTestTimeoutS;
using testing::world_rank;
using testing::world_size;
using Groups = std::vector<std::vector<int>>;

struct Shape {
  int tp, pp, dp;
  Groups tp_groups, pp_groups, dp_groups;  // by hand, from the contract's rank formula
  int world() const { return tp * pp * dp; }
};

std::string shape_name(const ::testing::TestParamInfo<Shape>& info) {
  const Shape& s = info.param;
  return "tp" + std::to_string(s.tp) + "_pp" + std::to_string(s.pp) + "_dp" + std::to_string(s.dp);
}

const std::vector<int>& group_containing(const Groups& groups, int rank) {
  for (const auto& group : groups) {
    if (std::find(group.begin(), group.end(), rank) != group.end()) return group;
  }
  ADD_FAILURE() << "rank " << rank << " in no group of the table";
  static const std::vector<int> kNone;
  return kNone;
}

// Who is really in the group: every member contributes its world rank through the group's own
// all_gather, so this checks the communicator, the group ranks and the collective at once.
void expect_members(Collectives& coll, int rank, const std::vector<int>& expected) {
  SCOPED_TRACE("group '" + coll.name() + "' on rank " + std::to_string(rank));
  ASSERT_EQ(coll.size(), static_cast<int>(expected.size()));
  const auto position = std::find(expected.begin(), expected.end(), rank) - expected.begin();
  EXPECT_EQ(coll.rank(), position);
  const float mine = static_cast<float>(rank);
  std::vector<float> gathered(coll.size(), -1.0f);
  coll.all_gather(&mine, gathered.data(), 1);
  std::vector<int> members(gathered.begin(), gathered.end());
  EXPECT_EQ(members, expected);
}

class GroupsMatchTable : public ::testing::TestWithParam<Shape> {};

TEST_P(GroupsMatchTable, MembersRanksAndNeighbours) {
  const Shape& shape = GetParam();
  SKIP_UNLESS_WORLD_AT_LEAST(shape.world());
  MpiComm sub = first_ranks(shape.world());
  if (!sub.valid()) return;

  StatusOr<ProcessGroups> created =
      ProcessGroups::create({.tp = shape.tp, .pp = shape.pp}, {.base = sub.get()});
  // Safe to ASSERT: creation fails on all ranks or on none.
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  ProcessGroups& groups = *created;
  const int rank = groups.rank;
  EXPECT_EQ(rank, world_rank());
  EXPECT_EQ(groups.layout.dp(), shape.dp);
  EXPECT_EQ(groups.coords, groups.layout.coords(rank));
  EXPECT_EQ(groups.world.size(), shape.world());

  expect_members(*groups.tp_coll, rank, group_containing(shape.tp_groups, rank));
  expect_members(*groups.pp_coll, rank, group_containing(shape.pp_groups, rank));
  expect_members(*groups.dp_coll, rank, group_containing(shape.dp_groups, rank));
  EXPECT_EQ(groups.tp.rank(), groups.coords.tp);
  EXPECT_EQ(groups.pp.rank(), groups.coords.pp);
  EXPECT_EQ(groups.dp.rank(), groups.coords.dp);

  EXPECT_EQ(groups.is_first_stage(), groups.layout.is_first_stage(rank));
  EXPECT_EQ(groups.is_last_stage(), groups.layout.is_last_stage(rank));
  if (!groups.is_last_stage()) {
    EXPECT_EQ(groups.next_stage(), groups.coords.pp + 1);
  }
  if (!groups.is_first_stage()) {
    EXPECT_EQ(groups.prev_stage(), groups.coords.pp - 1);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GroupsMatchTable,
    ::testing::Values(
        // world 2
        Shape{2, 1, 1, {{0, 1}}, {{0}, {1}}, {{0}, {1}}},
        Shape{1, 2, 1, {{0}, {1}}, {{0, 1}}, {{0}, {1}}},
        Shape{1, 1, 2, {{0}, {1}}, {{0}, {1}}, {{0, 1}}},
        // world 4
        Shape{2, 2, 1, {{0, 1}, {2, 3}}, {{0, 2}, {1, 3}}, {{0}, {1}, {2}, {3}}},
        Shape{1, 2, 2, {{0}, {1}, {2}, {3}}, {{0, 1}, {2, 3}}, {{0, 2}, {1, 3}}},
        Shape{2, 1, 2, {{0, 1}, {2, 3}}, {{0}, {1}, {2}, {3}}, {{0, 2}, {1, 3}}},
        Shape{4, 1, 1, {{0, 1, 2, 3}}, {{0}, {1}, {2}, {3}}, {{0}, {1}, {2}, {3}}},
        // world 8
        Shape{2,
              2,
              2,
              {{0, 1}, {2, 3}, {4, 5}, {6, 7}},
              {{0, 2}, {1, 3}, {4, 6}, {5, 7}},
              {{0, 4}, {1, 5}, {2, 6}, {3, 7}}}),
    shape_name);

// Rank 0's message reaches everyone, so each rank can check that it failed the same way.
std::string message_of_rank0(const std::string& mine) {
  std::vector<uint8_t> bytes(mine.begin(), mine.end());
  broadcast_bytes(bytes, 0, MPI_COMM_WORLD, kTestTimeoutS);
  return std::string(bytes.begin(), bytes.end());
}

TEST(ProcessGroupsCreate, TpThatDoesNotDivideTheWorldFailsAlikeEverywhere) {
  // 3 divides none of the world sizes the tests run with (2, 4, 8).
  StatusOr<ProcessGroups> groups = ProcessGroups::create({.tp = 3});
  ASSERT_FALSE(groups.ok());
  EXPECT_EQ(groups.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(groups.status().message(),
            "--tp 3 × --pp 1 does not divide the world size " + std::to_string(world_size()));
  EXPECT_EQ(message_of_rank0(groups.status().message()), groups.status().message());
}

TEST(ProcessGroupsCreate, ExplicitDpMismatchFailsAlikeEverywhere) {
  StatusOr<ProcessGroups> groups = ProcessGroups::create({.tp = 1, .pp = 1, .dp = 3});
  ASSERT_FALSE(groups.ok());
  EXPECT_EQ(groups.status().message(),
            "--dp 3 × --pp 1 × --tp 1 = 3 does not equal the world size " +
                std::to_string(world_size()) + " (leave --dp out to derive it)");
  EXPECT_EQ(message_of_rank0(groups.status().message()), groups.status().message());
}

TEST(ProcessGroupsCreate, RanksThatDisagreeOnTheSizesAllFail) {
  SKIP_UNLESS_WORLD_AT_LEAST(2);
  // As if rank 0 had been started with other flags: no rank may go on to split alone.
  const int tp = world_rank() == 0 ? 2 : 1;
  StatusOr<ProcessGroups> groups = ProcessGroups::create({.tp = tp});
  ASSERT_FALSE(groups.ok());
  EXPECT_EQ(groups.status().message(),
            "the ranks disagree on the parallel sizes (--tp ranges from 1 to 2); every rank must "
            "get the same flags");
}

TEST(ProcessGroupsCreate, MalformedTimeoutOnOneRankFailsEverywhere) {
  SKIP_UNLESS_WORLD_AT_LEAST(2);
  const char* saved = std::getenv(kCollectiveTimeoutEnv);
  const std::string previous = saved ? saved : "";
  if (world_rank() == 1) setenv(kCollectiveTimeoutEnv, "soon", 1);
  StatusOr<ProcessGroups> groups = ProcessGroups::create({});
  if (saved) {
    setenv(kCollectiveTimeoutEnv, previous.c_str(), 1);
  } else {
    unsetenv(kCollectiveTimeoutEnv);
  }
  ASSERT_FALSE(groups.ok());
  if (world_rank() == 1) {
    EXPECT_EQ(groups.status().message(),
              "DSHPC_COLLECTIVE_TIMEOUT_S=\"soon\": expected a positive number of seconds");
  } else {
    EXPECT_EQ(groups.status().message(),
              "another rank rejected its settings (DSHPC_COLLECTIVE_TIMEOUT_S?); see that rank's "
              "message");
  }
}

TEST(ProcessGroupsCreate, TimeoutOptionReachesEveryGroup) {
  SKIP_UNLESS_WORLD_AT_LEAST(2);
  StatusOr<ProcessGroups> groups = ProcessGroups::create({.tp = world_size()}, {.timeout_s = 12.5});
  ASSERT_TRUE(groups.ok()) << groups.status().to_string();
  EXPECT_EQ(groups->timeout_s, 12.5);
  auto* tp = dynamic_cast<MpiCollectives*>(groups->tp_coll.get());
  ASSERT_NE(tp, nullptr) << "a tp group of " << world_size() << " ranks must talk MPI";
  EXPECT_EQ(tp->timeout_s(), 12.5);
  // Dimensions of size 1 need no communication at all.
  EXPECT_NE(dynamic_cast<SoloCollectives*>(groups->pp_coll.get()), nullptr);
  EXPECT_NE(dynamic_cast<SoloCollectives*>(groups->dp_coll.get()), nullptr);
}

TEST(ProcessGroupsCreate, NodeLocalRank) {
  StatusOr<ProcessGroups> groups = ProcessGroups::create({});
  ASSERT_TRUE(groups.ok()) << groups.status().to_string();
  EXPECT_GE(groups->local_rank, 0);
  EXPECT_LT(groups->local_rank, groups->local_size);
  EXPECT_LE(groups->local_size, world_size());

  // When the whole job shares one host (CI), the node is the world, in world order.
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  const std::string mine = host;
  float other_host = message_of_rank0(mine) == mine ? 0.0f : 1.0f;
  MpiCollectives world(MPI_COMM_WORLD, "world", kTestTimeoutS);
  world.all_reduce_sum(&other_host, 1);
  if (other_host == 0.0f) {
    EXPECT_EQ(groups->local_size, world_size());
    EXPECT_EQ(groups->local_rank, world_rank());
  }
}

TEST(MpiComm, MoveTransfersOwnership) {
  MpiComm a = MpiComm::dup(MPI_COMM_WORLD);
  const MPI_Comm handle = a.get();
  MpiComm b = std::move(a);
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(b.get(), handle);
  MpiComm c;
  c = std::move(b);
  EXPECT_EQ(c.get(), handle);
  EXPECT_EQ(c.size(), world_size());
  c.reset();
  EXPECT_FALSE(c.valid());
  MpiComm world(MPI_COMM_WORLD);  // held, never freed
  EXPECT_EQ(world.rank(), world_rank());
}

}  // namespace
}  // namespace dshpc
