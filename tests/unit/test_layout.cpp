// Rank layout arithmetic against tables written out by hand from the contract
// rank = (dp_index × pp + pp_index) × tp + tp_index; no MPI involved.
#include <gtest/gtest.h>

#include <vector>

#include "parallel/layout.h"

namespace dshpc {
namespace {

using Groups = std::vector<std::vector<int>>;

RankLayout make(int world, int tp, int pp, int dp = 0) {
  StatusOr<RankLayout> layout = RankLayout::create(world, {.tp = tp, .pp = pp, .dp = dp});
  EXPECT_TRUE(layout.ok()) << layout.status().to_string();
  return *layout;
}

std::string error_of(int world, int tp, int pp, int dp = 0) {
  StatusOr<RankLayout> layout = RankLayout::create(world, {.tp = tp, .pp = pp, .dp = dp});
  EXPECT_FALSE(layout.ok());
  if (layout.ok()) return "";
  EXPECT_EQ(layout.status().code(), StatusCode::kInvalidArgument);
  return layout.status().message();
}

// One hand-written row per rank: {rank, {dp, pp, tp}}.
struct RankRow {
  int rank;
  RankCoords coords;
};

// Checks every rank's coordinates, the round trip, and that each rank's groups are the table's.
void expect_layout(const RankLayout& layout, const std::vector<RankRow>& rows, const Groups& tp,
                   const Groups& pp, const Groups& dp) {
  ASSERT_EQ(static_cast<int>(rows.size()), layout.world_size());
  for (const RankRow& row : rows) {
    SCOPED_TRACE("rank " + std::to_string(row.rank));
    EXPECT_EQ(layout.coords(row.rank), row.coords);
    EXPECT_EQ(layout.rank_of(row.coords), row.rank);
    EXPECT_EQ(layout.index(row.rank, ParallelAxis::kTensor), row.coords.tp);
    EXPECT_EQ(layout.index(row.rank, ParallelAxis::kPipeline), row.coords.pp);
    EXPECT_EQ(layout.index(row.rank, ParallelAxis::kData), row.coords.dp);
  }
  EXPECT_EQ(layout.all_groups(ParallelAxis::kTensor), tp);
  EXPECT_EQ(layout.all_groups(ParallelAxis::kPipeline), pp);
  EXPECT_EQ(layout.all_groups(ParallelAxis::kData), dp);
  for (int rank = 0; rank < layout.world_size(); ++rank) {
    SCOPED_TRACE("rank " + std::to_string(rank));
    EXPECT_EQ(layout.tp_group(rank), tp[layout.group_id(rank, ParallelAxis::kTensor)]);
    EXPECT_EQ(layout.pp_group(rank), pp[layout.group_id(rank, ParallelAxis::kPipeline)]);
    EXPECT_EQ(layout.dp_group(rank), dp[layout.group_id(rank, ParallelAxis::kData)]);
  }
}

TEST(RankLayout, World8Tp2Pp2Dp2) {
  const RankLayout layout = make(8, 2, 2);
  EXPECT_EQ(layout.dp(), 2);
  EXPECT_EQ(layout.to_string(), "world 8 = dp 2 × pp 2 × tp 2");
  expect_layout(layout,
                {{0, {0, 0, 0}},
                 {1, {0, 0, 1}},
                 {2, {0, 1, 0}},
                 {3, {0, 1, 1}},
                 {4, {1, 0, 0}},
                 {5, {1, 0, 1}},
                 {6, {1, 1, 0}},
                 {7, {1, 1, 1}}},
                /*tp=*/{{0, 1}, {2, 3}, {4, 5}, {6, 7}},
                /*pp=*/{{0, 2}, {1, 3}, {4, 6}, {5, 7}},
                /*dp=*/{{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  EXPECT_EQ(layout.coords(5), (RankCoords{.dp = 1, .pp = 0, .tp = 1}));
}

TEST(RankLayout, World4Tp2Pp2) {
  expect_layout(make(4, 2, 2), {{0, {0, 0, 0}}, {1, {0, 0, 1}}, {2, {0, 1, 0}}, {3, {0, 1, 1}}},
                /*tp=*/{{0, 1}, {2, 3}}, /*pp=*/{{0, 2}, {1, 3}}, /*dp=*/{{0}, {1}, {2}, {3}});
}

TEST(RankLayout, World4Pp2Dp2) {
  expect_layout(make(4, 1, 2), {{0, {0, 0, 0}}, {1, {0, 1, 0}}, {2, {1, 0, 0}}, {3, {1, 1, 0}}},
                /*tp=*/{{0}, {1}, {2}, {3}}, /*pp=*/{{0, 1}, {2, 3}}, /*dp=*/{{0, 2}, {1, 3}});
}

TEST(RankLayout, World4Tp2Dp2) {
  expect_layout(make(4, 2, 1), {{0, {0, 0, 0}}, {1, {0, 0, 1}}, {2, {1, 0, 0}}, {3, {1, 0, 1}}},
                /*tp=*/{{0, 1}, {2, 3}}, /*pp=*/{{0}, {1}, {2}, {3}}, /*dp=*/{{0, 2}, {1, 3}});
}

TEST(RankLayout, World4Tp4) {
  expect_layout(make(4, 4, 1), {{0, {0, 0, 0}}, {1, {0, 0, 1}}, {2, {0, 0, 2}}, {3, {0, 0, 3}}},
                /*tp=*/{{0, 1, 2, 3}}, /*pp=*/{{0}, {1}, {2}, {3}}, /*dp=*/{{0}, {1}, {2}, {3}});
}

TEST(RankLayout, World12Tp2Pp3Dp2) {
  // Uneven sizes catch a swapped tp/pp in the formula, which the square shapes above would hide.
  const RankLayout layout = make(12, 2, 3, 2);
  expect_layout(layout,
                {{0, {0, 0, 0}},
                 {1, {0, 0, 1}},
                 {2, {0, 1, 0}},
                 {3, {0, 1, 1}},
                 {4, {0, 2, 0}},
                 {5, {0, 2, 1}},
                 {6, {1, 0, 0}},
                 {7, {1, 0, 1}},
                 {8, {1, 1, 0}},
                 {9, {1, 1, 1}},
                 {10, {1, 2, 0}},
                 {11, {1, 2, 1}}},
                /*tp=*/{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}},
                /*pp=*/{{0, 2, 4}, {1, 3, 5}, {6, 8, 10}, {7, 9, 11}},
                /*dp=*/{{0, 6}, {1, 7}, {2, 8}, {3, 9}, {4, 10}, {5, 11}});
}

TEST(RankLayout, SingleRank) {
  expect_layout(make(1, 1, 1), {{0, {0, 0, 0}}}, {{0}}, {{0}}, {{0}});
  const RankLayout layout = make(1, 1, 1);
  EXPECT_TRUE(layout.is_first_stage(0));
  EXPECT_TRUE(layout.is_last_stage(0));
  EXPECT_EQ(layout.next_stage_rank(0), std::nullopt);
}

TEST(RankLayout, PipelineNeighbours) {
  const RankLayout layout = make(12, 2, 3);  // stages of replica 1, tp slot 1: 7 -> 9 -> 11
  EXPECT_TRUE(layout.is_first_stage(7));
  EXPECT_FALSE(layout.is_last_stage(7));
  EXPECT_EQ(layout.next_stage_rank(7), 9);
  EXPECT_EQ(layout.next_stage_rank(9), 11);
  EXPECT_EQ(layout.next_stage_rank(11), std::nullopt);
  EXPECT_TRUE(layout.is_last_stage(11));
  EXPECT_EQ(layout.prev_stage_rank(11), 9);
  EXPECT_EQ(layout.prev_stage_rank(9), 7);
  EXPECT_EQ(layout.prev_stage_rank(7), std::nullopt);
  EXPECT_EQ(layout.prev_stage_rank(4), 2);  // replica 0, tp slot 0: 0 -> 2 -> 4
}

TEST(RankLayout, ExplicitDpThatMatches) {
  EXPECT_EQ(make(8, 2, 2, 2), make(8, 2, 2));
  EXPECT_EQ(make(6, 1, 3, 2).dp(), 2);
}

TEST(RankLayout, RejectsSizesThatDoNotDivideTheWorld) {
  EXPECT_EQ(error_of(4, 3, 1), "--tp 3 × --pp 1 does not divide the world size 4");
  EXPECT_EQ(error_of(8, 2, 3), "--tp 2 × --pp 3 does not divide the world size 8");
  EXPECT_EQ(error_of(2, 4, 1), "--tp 4 × --pp 1 does not divide the world size 2");
}

TEST(RankLayout, RejectsExplicitDpThatDoesNotMultiplyOut) {
  EXPECT_EQ(error_of(8, 2, 2, 3),
            "--dp 3 × --pp 2 × --tp 2 = 12 does not equal the world size 8 "
            "(leave --dp out to derive it)");
  EXPECT_EQ(error_of(4, 1, 1, 2),
            "--dp 2 × --pp 1 × --tp 1 = 2 does not equal the world size 4 "
            "(leave --dp out to derive it)");
}

TEST(RankLayout, RejectsSizesBelowOne) {
  EXPECT_EQ(error_of(4, 0, 1), "--tp must be at least 1, got 0");
  EXPECT_EQ(error_of(4, 1, -2), "--pp must be at least 1, got -2");
  EXPECT_EQ(error_of(4, 1, 1, -1), "--dp must be at least 1 (or 0 to derive it), got -1");
  EXPECT_EQ(error_of(0, 1, 1), "the world size must be at least 1, got 0");
}

TEST(RankLayout, HugeSizesDoNotOverflowIntoAMatch) {
  // 65536 × 65536 wraps to 0 in 32 bits; the check must still see a mismatch.
  EXPECT_EQ(error_of(4, 65536, 65536), "--tp 65536 × --pp 65536 does not divide the world size 4");
}

TEST(RankLayoutDeath, RankOutsideTheWorldIsABug) {
  const RankLayout layout = make(4, 2, 2);
  EXPECT_DEATH(layout.coords(4), "rank 4 outside world 4");
  EXPECT_DEATH(layout.rank_of({.dp = 0, .pp = 2, .tp = 0}), "outside world 4");
}

// ---- check_split -------------------------------------------------------------------------------

TEST(CheckSplit, DivisibleByTp) {
  const RankLayout tp4 = make(4, 4, 1);
  EXPECT_TRUE(check_split(tp4, {"attention heads", 32, SplitRule::kDivisibleByTp}).ok());
  const Status status = check_split(tp4, {"attention heads", 10, SplitRule::kDivisibleByTp});
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "attention heads (10) is not divisible by --tp 4");
}

TEST(CheckSplit, KvHeadsSplitOrReplicated) {
  const auto kv = [](int heads) {
    return SplitRequirement{"kv heads", heads, SplitRule::kDivisibleByTpOrReplicated};
  };
  const RankLayout tp4 = make(4, 4, 1);
  EXPECT_TRUE(check_split(tp4, kv(8)).ok());  // 2 per rank
  EXPECT_TRUE(check_split(tp4, kv(2)).ok());  // each on 2 ranks
  EXPECT_TRUE(check_split(tp4, kv(1)).ok());  // multi-query: on every rank
  EXPECT_EQ(check_split(tp4, kv(3)).message(),
            "kv heads (3) is not divisible by --tp 4, nor does it divide --tp to replicate them");
  EXPECT_EQ(check_split(tp4, kv(6)).message(), "kv heads (6) is not divisible by --tp 4");
}

TEST(CheckSplit, AtLeastOneLayerPerStage) {
  const RankLayout pp4 = make(4, 1, 4);
  EXPECT_TRUE(check_split(pp4, {"layers", 4, SplitRule::kAtLeastPp}).ok());
  EXPECT_EQ(check_split(pp4, {"layers", 3, SplitRule::kAtLeastPp}).message(),
            "more pipeline stages (4) than layers (3); lower --pp");
}

TEST(CheckSplit, NonPositiveQuantityIsAnError) {
  EXPECT_EQ(check_split(make(1, 1, 1), {"routed experts", 0, SplitRule::kDivisibleByTp}).message(),
            "routed experts must be at least 1, got 0");
}

TEST(CheckSplits, ReportsEveryFailureAtOnce) {
  const RankLayout layout = make(8, 4, 2);
  EXPECT_TRUE(check_splits(layout, {{"attention heads", 16, SplitRule::kDivisibleByTp},
                                    {"layers", 2, SplitRule::kAtLeastPp}})
                  .ok());
  const Status status = check_splits(layout, {{"attention heads", 16, SplitRule::kDivisibleByTp},
                                              {"vocabulary", 102401, SplitRule::kDivisibleByTp},
                                              {"routed experts", 6, SplitRule::kDivisibleByTp},
                                              {"layers", 1, SplitRule::kAtLeastPp}});
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "world 8 = dp 1 × pp 2 × tp 4 does not fit the model: vocabulary (102401) is not "
            "divisible by --tp 4; routed experts (6) is not divisible by --tp 4; more pipeline "
            "stages (2) than layers (1); lower --pp");
}

// ---- stage_layer_ranges ------------------------------------------------------------------------

using Ranges = std::vector<LayerRange>;

Ranges ranges_of(int layers, int pp, std::vector<int> counts = {}) {
  StatusOr<Ranges> ranges = stage_layer_ranges(layers, pp, counts);
  EXPECT_TRUE(ranges.ok()) << ranges.status().to_string();
  return ranges.ok() ? *ranges : Ranges{};
}

std::string partition_error(int layers, int pp, std::vector<int> counts = {}) {
  StatusOr<Ranges> ranges = stage_layer_ranges(layers, pp, counts);
  EXPECT_FALSE(ranges.ok());
  return ranges.ok() ? "" : ranges.status().message();
}

TEST(StageLayerRanges, BalancedWithExtraLayersOnEarlyStages) {
  EXPECT_EQ(ranges_of(4, 1), (Ranges{{0, 4}}));
  EXPECT_EQ(ranges_of(4, 2), (Ranges{{0, 2}, {2, 4}}));
  EXPECT_EQ(ranges_of(4, 3), (Ranges{{0, 2}, {2, 3}, {3, 4}}));
  EXPECT_EQ(ranges_of(4, 4), (Ranges{{0, 1}, {1, 2}, {2, 3}, {3, 4}}));
  EXPECT_EQ(ranges_of(27, 4), (Ranges{{0, 7}, {7, 14}, {14, 21}, {21, 27}}));
  // DeepSeek-V3: 61 layers over 8 stages: five stages of 8, three of 7.
  EXPECT_EQ(ranges_of(61, 8),
            (Ranges{{0, 8}, {8, 16}, {16, 24}, {24, 32}, {32, 40}, {40, 47}, {47, 54}, {54, 61}}));
}

TEST(StageLayerRanges, Explicit) {
  EXPECT_EQ(ranges_of(4, 3, {1, 1, 2}), (Ranges{{0, 1}, {1, 2}, {2, 4}}));
  EXPECT_EQ(ranges_of(5, 2, {1, 4}), (Ranges{{0, 1}, {1, 5}}));
}

TEST(StageLayerRanges, Errors) {
  EXPECT_EQ(partition_error(3, 4), "more pipeline stages (4) than layers (3); lower --pp");
  EXPECT_EQ(partition_error(4, 0), "--pp must be at least 1, got 0");
  EXPECT_EQ(partition_error(5, 3, {2, 2, 2}),
            "the per-stage layer counts 2+2+2 sum to 6, but the model has 5 layers");
  EXPECT_EQ(partition_error(4, 3, {2, 2}),
            "the per-stage layer counts list 2 stages, but --pp is 3");
  EXPECT_EQ(partition_error(4, 3, {2, 0, 2}),
            "pipeline stage 1 is given 0 layers in the per-stage layer counts; every stage needs "
            "at least 1");
}

TEST(ParseLayersPerStage, ParsesAndRejects) {
  StatusOr<std::vector<int>> counts = parse_layers_per_stage("3, 3,2");
  ASSERT_TRUE(counts.ok()) << counts.status().to_string();
  EXPECT_EQ(*counts, (std::vector<int>{3, 3, 2}));
  EXPECT_EQ(parse_layers_per_stage("3,,2").status().message(),
            "per-stage layer counts \"3,,2\": expected comma-separated integers, got \"\"");
  EXPECT_EQ(parse_layers_per_stage("3,x").status().message(),
            "per-stage layer counts \"3,x\": expected comma-separated integers, got \"x\"");
  EXPECT_FALSE(parse_layers_per_stage("").ok());
}

}  // namespace
}  // namespace dshpc
