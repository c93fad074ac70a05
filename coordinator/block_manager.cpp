#include "coordinator/block_manager.h"

#include <algorithm>

#include "common/check.h"

namespace dshpc {

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size) : block_size_(block_size) {
  DSHPC_CHECK(num_blocks >= 1 && num_blocks <= INT32_MAX) << "num_blocks " << num_blocks;
  DSHPC_CHECK(block_size >= 1) << "block_size " << block_size;
  ref_counts_.assign(static_cast<size_t>(num_blocks), 0);
  for (int64_t b = 0; b < num_blocks; ++b) free_blocks_.push_back(static_cast<int32_t>(b));
}

bool BlockManager::has_sequence(int64_t sequence_id) const {
  return tables_.count(sequence_id) > 0;
}

const BlockManager::Table& BlockManager::table(int64_t sequence_id) const {
  auto it = tables_.find(sequence_id);
  DSHPC_CHECK(it != tables_.end()) << "sequence " << sequence_id << " holds no KV blocks";
  return it->second;
}

int64_t BlockManager::num_slots(int64_t sequence_id) const {
  auto it = tables_.find(sequence_id);
  return it == tables_.end() ? 0 : it->second.num_slots;
}

const std::vector<int32_t>& BlockManager::block_table(int64_t sequence_id) const {
  return table(sequence_id).blocks;
}

int64_t BlockManager::blocks_needed(int64_t sequence_id, int64_t num_tokens) const {
  DSHPC_CHECK(num_tokens >= 0) << "num_tokens " << num_tokens;
  auto it = tables_.find(sequence_id);
  const int64_t held_blocks =
      it == tables_.end() ? 0 : static_cast<int64_t>(it->second.blocks.size());
  const int64_t slots = (it == tables_.end() ? 0 : it->second.num_slots) + num_tokens;
  const int64_t wanted_blocks = (slots + block_size_ - 1) / block_size_;
  return std::max<int64_t>(0, wanted_blocks - held_blocks);
}

bool BlockManager::can_append(int64_t sequence_id, int64_t num_tokens) const {
  return blocks_needed(sequence_id, num_tokens) <= num_free_blocks();
}

int64_t BlockManager::appendable_slots(int64_t sequence_id) const {
  auto it = tables_.find(sequence_id);
  int64_t room = 0;
  if (it != tables_.end()) {
    room = static_cast<int64_t>(it->second.blocks.size()) * block_size_ - it->second.num_slots;
  }
  return room + num_free_blocks() * block_size_;
}

int32_t BlockManager::take_free_block() {
  DSHPC_CHECK(!free_blocks_.empty()) << "no free KV block";
  const int32_t block = free_blocks_.front();
  free_blocks_.pop_front();
  DSHPC_CHECK_EQ(ref_counts_[block], 0) << "block " << block << " on the free list is referenced";
  ref_counts_[block] = 1;
  return block;
}

void BlockManager::release_block(int32_t block) {
  DSHPC_CHECK(block >= 0 && block < num_blocks()) << "block " << block;
  DSHPC_CHECK(ref_counts_[block] > 0) << "block " << block << " released more often than held";
  if (--ref_counts_[block] == 0) free_blocks_.push_back(block);
}

void BlockManager::append_slots(int64_t sequence_id, int64_t num_tokens) {
  DSHPC_CHECK(num_tokens >= 1) << "sequence " << sequence_id << " appends " << num_tokens;
  const int64_t needed = blocks_needed(sequence_id, num_tokens);
  DSHPC_CHECK_LE(needed, num_free_blocks())
      << "sequence " << sequence_id << " appends " << num_tokens << " slots without room";
  Table& t = tables_[sequence_id];
  if (t.num_slots % block_size_ != 0) {
    // The first new slot lands in the partly filled last block, which must be ours alone.
    const int32_t last = t.blocks.back();
    DSHPC_CHECK_EQ(ref_counts_[last], 1)
        << "sequence " << sequence_id << " would write into shared block " << last;
  }
  for (int64_t i = 0; i < needed; ++i) t.blocks.push_back(take_free_block());
  t.num_slots += num_tokens;
}

void BlockManager::truncate(int64_t sequence_id, int64_t num_tokens) {
  auto it = tables_.find(sequence_id);
  DSHPC_CHECK(it != tables_.end()) << "truncate of unknown sequence " << sequence_id;
  Table& t = it->second;
  DSHPC_CHECK(num_tokens >= 0 && num_tokens <= t.num_slots)
      << "sequence " << sequence_id << " truncated to " << num_tokens << " of " << t.num_slots;
  const size_t keep = static_cast<size_t>((num_tokens + block_size_ - 1) / block_size_);
  while (t.blocks.size() > keep) {
    release_block(t.blocks.back());
    t.blocks.pop_back();
  }
  t.num_slots = num_tokens;
}

void BlockManager::free(int64_t sequence_id) {
  auto it = tables_.find(sequence_id);
  DSHPC_CHECK(it != tables_.end())
      << "free of sequence " << sequence_id << " that holds no blocks (freed twice?)";
  // Tail blocks first: under prefix caching the free list is the eviction order, and a
  // sequence's head blocks are the ones other requests are likely to share.
  const std::vector<int32_t>& blocks = it->second.blocks;
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) release_block(*b);
  tables_.erase(it);
}

void BlockManager::share_prefix(int64_t from, int64_t to, int64_t num_tokens) {
  DSHPC_CHECK(!has_sequence(to)) << "share_prefix into existing sequence " << to;
  DSHPC_CHECK(num_tokens % block_size_ == 0)
      << "share_prefix of " << num_tokens << " tokens: only whole blocks of " << block_size_;
  const Table& source = table(from);
  DSHPC_CHECK(num_tokens >= 0 && num_tokens <= source.num_slots)
      << "share_prefix of " << num_tokens << " tokens from a sequence of " << source.num_slots;
  Table shared;
  shared.blocks.assign(source.blocks.begin(), source.blocks.begin() + num_tokens / block_size_);
  shared.num_slots = num_tokens;
  for (int32_t b : shared.blocks) ++ref_counts_[b];
  tables_.emplace(to, std::move(shared));
}

int32_t BlockManager::ref_count(int32_t block) const {
  DSHPC_CHECK(block >= 0 && block < num_blocks()) << "block " << block;
  return ref_counts_[block];
}

double BlockManager::usage() const {
  return static_cast<double>(num_used_blocks()) / static_cast<double>(num_blocks());
}

int64_t BlockManager::unused_slots_in_used_blocks() const {
  int64_t unused = 0;
  for (const auto& [id, t] : tables_) {
    unused += static_cast<int64_t>(t.blocks.size()) * block_size_ - t.num_slots;
  }
  return unused;
}

double BlockManager::fragmentation() const {
  const int64_t allocated = num_used_blocks() * block_size_;
  if (allocated == 0) return 0.0;
  return static_cast<double>(unused_slots_in_used_blocks()) / static_cast<double>(allocated);
}

void BlockManager::check_invariants() const {
  std::vector<int32_t> holders(ref_counts_.size(), 0);
  for (const auto& [id, t] : tables_) {
    const int64_t wanted = (t.num_slots + block_size_ - 1) / block_size_;
    DSHPC_CHECK_EQ(static_cast<int64_t>(t.blocks.size()), wanted)
        << "sequence " << id << " holds " << t.num_slots << " slots";
    for (int32_t b : t.blocks) {
      DSHPC_CHECK(b >= 0 && b < num_blocks()) << "sequence " << id << " names block " << b;
      ++holders[b];
    }
  }
  std::vector<bool> on_free_list(ref_counts_.size(), false);
  for (int32_t b : free_blocks_) {
    DSHPC_CHECK(b >= 0 && b < num_blocks()) << "free list names block " << b;
    DSHPC_CHECK(!on_free_list[b]) << "block " << b << " is twice on the free list";
    on_free_list[b] = true;
  }
  for (size_t b = 0; b < ref_counts_.size(); ++b) {
    DSHPC_CHECK_EQ(ref_counts_[b], holders[b]) << "reference count of block " << b;
    DSHPC_CHECK_EQ(on_free_list[b], ref_counts_[b] == 0) << "free-list membership of block " << b;
  }
}

}  // namespace dshpc
