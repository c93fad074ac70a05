// BlockManager: block tables, the free list and reference counts, written out by hand per
// operation; usage and fragmentation figures; broken invariants stop the process.
#include <gtest/gtest.h>

#include <vector>

#include "coordinator/block_manager.h"

namespace dshpc {
namespace {

using Blocks = std::vector<int32_t>;

TEST(BlockManager, AllocatesBlocksAsSequencesGrow) {
  BlockManager bm(/*num_blocks=*/8, /*block_size=*/4);
  EXPECT_EQ(bm.num_free_blocks(), 8);
  EXPECT_EQ(bm.usage(), 0.0);
  EXPECT_EQ(bm.fragmentation(), 0.0);

  // Per operation: the table it leaves, the free list, the used blocks.
  bm.append_slots(1, 5);  // positions 0..4: two blocks
  EXPECT_EQ(bm.block_table(1), (Blocks{0, 1}));
  EXPECT_EQ(bm.num_slots(1), 5);
  bm.append_slots(2, 3);
  EXPECT_EQ(bm.block_table(2), (Blocks{2}));
  bm.append_slots(1, 3);  // fills block 1 (slots 5..7), no new block
  EXPECT_EQ(bm.block_table(1), (Blocks{0, 1}));
  EXPECT_EQ(bm.num_slots(1), 8);
  bm.append_slots(1, 1);  // position 8 opens block 3
  EXPECT_EQ(bm.block_table(1), (Blocks{0, 1, 3}));
  EXPECT_EQ(bm.free_list(), (Blocks{4, 5, 6, 7}));
  EXPECT_EQ(bm.num_used_blocks(), 4);
  EXPECT_EQ(bm.num_sequences(), 2);
  for (int32_t b : {0, 1, 2, 3}) EXPECT_EQ(bm.ref_count(b), 1) << "block " << b;
  for (int32_t b : {4, 5, 6, 7}) EXPECT_EQ(bm.ref_count(b), 0) << "block " << b;

  // Usage 4/8. Fragmentation: sequence 1 uses 9 of 12 slots, sequence 2 3 of 4: 4 of 16 empty.
  EXPECT_DOUBLE_EQ(bm.usage(), 0.5);
  EXPECT_EQ(bm.unused_slots_in_used_blocks(), 4);
  EXPECT_DOUBLE_EQ(bm.fragmentation(), 0.25);
  bm.check_invariants();
}

TEST(BlockManager, CanAppendCountsTheRoomInTheLastBlock) {
  BlockManager bm(4, 4);
  EXPECT_EQ(bm.blocks_needed(7, 1), 1);  // an unknown sequence counts as empty
  EXPECT_EQ(bm.blocks_needed(7, 16), 4);
  EXPECT_TRUE(bm.can_append(7, 16));
  EXPECT_FALSE(bm.can_append(7, 17));
  EXPECT_EQ(bm.appendable_slots(7), 16);

  bm.append_slots(7, 6);  // blocks 0, 1; two slots left in block 1
  EXPECT_EQ(bm.blocks_needed(7, 2), 0);
  EXPECT_EQ(bm.blocks_needed(7, 3), 1);
  EXPECT_EQ(bm.appendable_slots(7), 2 + 2 * 4);
  EXPECT_TRUE(bm.can_append(7, 10));
  EXPECT_FALSE(bm.can_append(7, 11));
  bm.append_slots(7, 10);
  EXPECT_EQ(bm.num_free_blocks(), 0);
  EXPECT_TRUE(bm.can_append(8, 0));
  EXPECT_FALSE(bm.can_append(8, 1));
  EXPECT_EQ(bm.appendable_slots(7), 0);
  EXPECT_DOUBLE_EQ(bm.usage(), 1.0);
  EXPECT_DOUBLE_EQ(bm.fragmentation(), 0.0);
}

TEST(BlockManager, FreeReturnsTailBlocksFirstToTheBackOfTheFreeList) {
  BlockManager bm(6, 2);
  bm.append_slots(1, 5);  // 0, 1, 2
  bm.append_slots(2, 2);  // 3
  EXPECT_EQ(bm.free_list(), (Blocks{4, 5}));
  bm.free(1);
  EXPECT_FALSE(bm.has_sequence(1));
  EXPECT_EQ(bm.free_list(), (Blocks{4, 5, 2, 1, 0}));
  EXPECT_EQ(bm.num_used_blocks(), 1);
  bm.append_slots(3, 3);  // taken from the front
  EXPECT_EQ(bm.block_table(3), (Blocks{4, 5}));
  bm.free(2);
  bm.free(3);
  EXPECT_EQ(bm.free_list(), (Blocks{2, 1, 0, 3, 5, 4}));
  EXPECT_EQ(bm.usage(), 0.0);
  EXPECT_EQ(bm.num_sequences(), 0);
  bm.check_invariants();
}

TEST(BlockManager, SharedBlocksStayUntilTheLastHolderFrees) {
  BlockManager bm(8, 4);
  bm.append_slots(1, 10);    // 0, 1, 2
  bm.share_prefix(1, 2, 8);  // sequence 2 starts with blocks 0 and 1
  EXPECT_EQ(bm.block_table(2), (Blocks{0, 1}));
  EXPECT_EQ(bm.num_slots(2), 8);
  EXPECT_EQ(bm.ref_count(0), 2);
  EXPECT_EQ(bm.ref_count(1), 2);
  EXPECT_EQ(bm.ref_count(2), 1);
  EXPECT_EQ(bm.num_used_blocks(), 3);  // shared blocks count once
  bm.check_invariants();

  bm.append_slots(2, 1);  // its own block after the shared prefix
  EXPECT_EQ(bm.block_table(2), (Blocks{0, 1, 3}));
  // Used 4 blocks = 16 slots; empty: 2 in sequence 1's last block, 3 in sequence 2's.
  EXPECT_DOUBLE_EQ(bm.fragmentation(), 5.0 / 16.0);

  bm.free(1);
  EXPECT_EQ(bm.ref_count(0), 1);
  EXPECT_EQ(bm.ref_count(1), 1);
  EXPECT_EQ(bm.ref_count(2), 0);
  EXPECT_EQ(bm.free_list(), (Blocks{4, 5, 6, 7, 2}));
  bm.check_invariants();
  bm.free(2);
  EXPECT_EQ(bm.free_list(), (Blocks{4, 5, 6, 7, 2, 3, 1, 0}));
  EXPECT_EQ(bm.usage(), 0.0);
  bm.check_invariants();
}

TEST(BlockManager, TruncateReleasesTheBlocksPastTheKeptSlots) {
  BlockManager bm(8, 4);
  bm.append_slots(1, 4);
  bm.append_slots(1, 6);  // 10 slots: 0, 1, 2
  bm.truncate(1, 4);
  EXPECT_EQ(bm.block_table(1), (Blocks{0}));
  EXPECT_EQ(bm.num_slots(1), 4);
  EXPECT_EQ(bm.free_list(), (Blocks{3, 4, 5, 6, 7, 2, 1}));
  bm.truncate(1, 0);  // the sequence stays, with no blocks
  EXPECT_TRUE(bm.has_sequence(1));
  EXPECT_TRUE(bm.block_table(1).empty());
  EXPECT_EQ(bm.usage(), 0.0);
  bm.check_invariants();
  bm.free(1);
  EXPECT_EQ(bm.num_sequences(), 0);
}

using BlockManagerDeathTest = ::testing::Test;

TEST_F(BlockManagerDeathTest, FreeingTwiceStops) {
  BlockManager bm(4, 4);
  bm.append_slots(1, 3);
  bm.free(1);
  EXPECT_DEATH(bm.free(1), "freed twice");
}

TEST_F(BlockManagerDeathTest, AppendingWithoutRoomStops) {
  BlockManager bm(2, 4);
  bm.append_slots(1, 8);
  EXPECT_DEATH(bm.append_slots(2, 1), "without room");
}

TEST_F(BlockManagerDeathTest, WritingIntoASharedPartlyFilledBlockStops) {
  BlockManager bm(4, 4);
  bm.append_slots(1, 8);
  bm.share_prefix(1, 2, 8);
  bm.truncate(2, 6);  // block 1 is still shared, and now partly filled for sequence 2
  EXPECT_DEATH(bm.append_slots(2, 1), "would write into shared block 1");
}

TEST_F(BlockManagerDeathTest, SharingAPartialBlockStops) {
  BlockManager bm(4, 4);
  bm.append_slots(1, 8);
  EXPECT_DEATH(bm.share_prefix(1, 2, 6), "only whole blocks");
}

}  // namespace
}  // namespace dshpc
