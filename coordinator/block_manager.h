// Paged-KV bookkeeping of one data-parallel replica (rank 0 only; the worker's KvCache holds the
// data). A pool of `num_blocks` blocks of `block_size` token slots; each sequence owns a block
// table that maps its positions to blocks: position p lives in slot
// block_table[p / block_size] · block_size + p % block_size (kernels/attention.h).
//
//   blocks      id 0 … num_blocks−1, each with a reference count (tables that hold it)
//   free list   the blocks with reference count 0, handed out from the front
//   tables      per sequence: its blocks in position order and the slots it holds
//
// Reference counts exist for prefix sharing: a block may appear in several tables, and it returns
// to the free list when the last table lets go. share_prefix() uses them today for whole blocks
// copied from one table into another; hash-based prefix caching (vLLM's automatic prefix caching)
// fits in without changing the rest:
//
//   - when a block becomes full, compute hash(parent block's hash, its block_size tokens) and
//     record content_hash → block id (the map would live beside ref_counts_; append_slots would
//     take the tokens so that it can hash the blocks it fills);
//   - a new sequence first looks its prompt's full blocks up in that map and shares the hits
//     (ref_count + 1), allocating only the rest; the scheduler then starts its prefill after
//     the shared tokens;
//   - a block whose count drops to 0 keeps its hash and stays on the free list as an eviction
//     candidate; the free list becomes an LRU list (blocks freed longest ago are reused first,
//     which is why free() already returns a table's tail blocks before its head blocks), and a
//     hit on a free block takes it off the list again.
//
// Writing into a block that another table also holds would corrupt the other sequence (there is
// no copy-on-write), so appending into a shared, partly filled last block is a broken invariant.
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

namespace dshpc {

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int64_t block_size);

  int64_t num_blocks() const { return static_cast<int64_t>(ref_counts_.size()); }
  int64_t block_size() const { return block_size_; }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_blocks_.size()); }
  int64_t num_used_blocks() const { return num_blocks() - num_free_blocks(); }

  // Sequences: a sequence exists from its first append_slots (or share_prefix) until free().
  bool has_sequence(int64_t sequence_id) const;
  int64_t num_sequences() const { return static_cast<int64_t>(tables_.size()); }
  // Token slots the sequence holds (0 for an unknown sequence).
  int64_t num_slots(int64_t sequence_id) const;
  // Its blocks in position order; covers slots [0, num_slots).
  const std::vector<int32_t>& block_table(int64_t sequence_id) const;

  // Blocks that `num_tokens` more slots would take from the free list (0 when the last block has
  // room). An unknown sequence counts as empty.
  int64_t blocks_needed(int64_t sequence_id, int64_t num_tokens) const;
  bool can_append(int64_t sequence_id, int64_t num_tokens) const;
  // The most slots the sequence could append now: the room in its last block plus every free
  // block.
  int64_t appendable_slots(int64_t sequence_id) const;

  // Adds `num_tokens` (≥ 1) slots at the end of the sequence, creating it when unknown. It is a
  // broken invariant to call this when can_append is false.
  void append_slots(int64_t sequence_id, int64_t num_tokens);
  // Keeps slots [0, num_tokens) and releases the blocks past them (a step that failed gives back
  // what it had reserved).
  void truncate(int64_t sequence_id, int64_t num_tokens);
  // Releases every block of the sequence and forgets it. Freeing an unknown sequence (freeing
  // twice) is a broken invariant.
  void free(int64_t sequence_id);

  // Makes `to` (a new sequence) start with the first `num_tokens` slots of `from`, sharing its
  // blocks. num_tokens must be a multiple of block_size: only full blocks are shared.
  void share_prefix(int64_t from, int64_t to, int64_t num_tokens);

  int32_t ref_count(int32_t block) const;
  // The free list, front first (for tests and debugging).
  std::vector<int32_t> free_list() const { return {free_blocks_.begin(), free_blocks_.end()}; }

  // Metrics. usage: used blocks / all blocks. fragmentation: slots in used blocks that hold no
  // token (the room left in each table's last block) / all slots of used blocks; 0 when nothing
  // is allocated.
  double usage() const;
  double fragmentation() const;
  int64_t unused_slots_in_used_blocks() const;

  // Walks every table and the free list (O(blocks)); stops the job on the first inconsistency:
  // a reference count that differs from the tables holding the block, a free list that is not
  // exactly the unreferenced blocks, a table whose length does not match its slots.
  void check_invariants() const;

 private:
  struct Table {
    std::vector<int32_t> blocks;
    int64_t num_slots = 0;
  };

  int32_t take_free_block();
  void release_block(int32_t block);
  const Table& table(int64_t sequence_id) const;

  int64_t block_size_;
  std::vector<int32_t> ref_counts_;  // [num_blocks]
  std::deque<int32_t> free_blocks_;  // blocks with ref_count 0, next to hand out first
  std::unordered_map<int64_t, Table> tables_;
};

}  // namespace dshpc
