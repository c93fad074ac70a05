#include "coordinator/tokenizer_bpe.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>

#include "coordinator/tokenizer_json.h"
#include "coordinator/unicode.h"

namespace dshpc {
namespace {

namespace tj = tokenizer_json;

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Splits a legacy merge line "left right" at its single space.
bool split_merge_line(std::string_view line, std::string_view* left, std::string_view* right) {
  size_t space = line.find(' ');
  if (space == std::string_view::npos || space == 0 || space + 1 >= line.size()) return false;
  if (line.find(' ', space + 1) != std::string_view::npos) return false;
  *left = line.substr(0, space);
  *right = line.substr(space + 1);
  return true;
}

// Scratch buffers reused by every word a thread merges.
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  int32_t length;  // bytes covered; 0 once merged into its left neighbour
};
struct Candidate {
  uint32_t rank;
  int32_t position;  // index of the pair's left symbol
  int32_t merged_id;
};
// std heap functions build a max-heap, so "greater" puts the lowest (rank, position) on top.
struct CandidateAfter {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.position > b.position;
  }
};
struct MergeScratch {
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
};

}  // namespace

void MergeTable::reserve(size_t merges) {
  size_t capacity = 16;
  int bits = 4;
  while (capacity < 2 * merges) {
    capacity *= 2;
    ++bits;
  }
  slots_.assign(capacity, Entry{kEmptyKey, 0, 0});
  mask_ = capacity - 1;
  shift_ = 64 - bits;
  size_ = 0;
}

void MergeTable::insert(int32_t left, int32_t right, uint32_t rank, int32_t merged_id) {
  if (2 * (size_ + 1) > slots_.size()) {
    std::vector<Entry> old = std::move(slots_);
    reserve(std::max<size_t>(size_ + 1, old.size()));
    for (const Entry& entry : old) {
      if (entry.key != kEmptyKey) {
        insert(static_cast<int32_t>(entry.key >> 32), static_cast<int32_t>(entry.key & 0xFFFFFFFF),
               entry.rank, entry.merged_id);
      }
    }
  }
  uint64_t key = pack(left, right);
  for (size_t slot = hash(key);; slot = (slot + 1) & mask_) {
    Entry& entry = slots_[slot];
    if (entry.key == key) {
      entry.rank = rank;
      entry.merged_id = merged_id;
      return;
    }
    if (entry.key == kEmptyKey) {
      entry = Entry{key, rank, merged_id};
      ++size_;
      return;
    }
  }
}

// Word -> ids, sharded so that concurrent encoders rarely wait on one another. A full shard is
// simply cleared: the cache only saves time, it never changes a result.
class BpeModel::WordCache {
 public:
  static constexpr size_t kShards = 32;
  static constexpr size_t kMaxEntriesPerShard = 8192;
  static constexpr size_t kMaxWordBytes = 256;

  bool lookup(std::string_view word, std::vector<int32_t>* ids) const {
    const Shard& shard = shards_[shard_of(word)];
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.words.find(word);
    if (it == shard.words.end()) return false;
    ids->insert(ids->end(), it->second.begin(), it->second.end());
    return true;
  }

  void insert(std::string_view word, const int32_t* ids, size_t count) {
    Shard& shard = shards_[shard_of(word)];
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.words.size() >= kMaxEntriesPerShard) shard.words.clear();
    shard.words.emplace(std::string(word), std::vector<int32_t>(ids, ids + count));
  }

 private:
  struct Shard {
    mutable std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
  };
  static size_t shard_of(std::string_view word) { return (StringHash{}(word) >> 7) % kShards; }
  std::array<Shard, kShards> shards_;
};

// Per-thread, direct-mapped cache of short words: no lock and usually one cache line per lookup.
// A slot holds a word of up to kMaxWordBytes bytes and up to kMaxIds ids; a colliding word
// simply replaces it. Entries are tagged with their model so that tokenizers never mix.
class BpeModel::ShortWordCache {
 public:
  static constexpr size_t kMaxWordBytes = 18;
  static constexpr size_t kMaxIds = 8;

  static ShortWordCache& for_this_thread() {
    thread_local ShortWordCache cache;
    return cache;
  }

  static uint64_t hash(std::string_view word) {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, then a final mix
    for (unsigned char c : word) h = (h ^ c) * 0x100000001b3ull;
    h = (h ^ (h >> 31)) * 0xbf58476d1ce4e5b9ull;
    return (h ^ (h >> 29)) | 1;  // never 0, which marks an empty slot
  }

  bool lookup(uint32_t owner, std::string_view word, uint64_t h, std::vector<int32_t>* ids) {
    const Slot& slot = slots_[slot_of(h)];
    if (slot.hash != h || slot.owner != owner || slot.key_length != word.size() ||
        std::memcmp(slot.key, word.data(), word.size()) != 0) {
      return false;
    }
    ids->insert(ids->end(), slot.ids, slot.ids + slot.id_count);
    return true;
  }

  void insert(uint32_t owner, std::string_view word, uint64_t h, const int32_t* ids, size_t count) {
    if (count > kMaxIds) return;
    Slot& slot = slots_[slot_of(h)];
    slot.hash = h;
    slot.owner = owner;
    slot.key_length = static_cast<uint8_t>(word.size());
    slot.id_count = static_cast<uint8_t>(count);
    std::memcpy(slot.key, word.data(), word.size());
    std::memcpy(slot.ids, ids, count * sizeof(int32_t));
  }

 private:
  static constexpr int kSlotBits = 14;
  static constexpr size_t kSlots = size_t{1} << kSlotBits;  // 1 MiB per thread
  static size_t slot_of(uint64_t h) { return static_cast<size_t>(h >> (64 - kSlotBits)); }
  struct alignas(64) Slot {
    uint64_t hash = 0;
    uint32_t owner = 0;
    uint8_t key_length = 0;
    uint8_t id_count = 0;
    char key[kMaxWordBytes];
    int32_t ids[kMaxIds];
  };
  static_assert(sizeof(Slot) == 64);
  std::vector<Slot> slots_ = std::vector<Slot>(kSlots);
};

namespace {
std::atomic<uint32_t> next_cache_owner{1};
}  // namespace

BpeModel::BpeModel()
    : cache_owner_(next_cache_owner.fetch_add(1)), cache_(std::make_unique<WordCache>()) {}
BpeModel::~BpeModel() = default;
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;

StatusOr<BpeModel> BpeModel::from_json(const boost::json::value& model_value,
                                       const std::string& file) {
  if (!model_value.is_object()) return tj::field_error(file, "model", "must be an object");
  const boost::json::object& model = model_value.get_object();

  std::string type = "BPE";
  RETURN_IF_ERROR(tj::read_string(model, "type", file, "model.", &type));
  if (type != "BPE") {
    return unimplemented(file + ": field 'model.type' is '" + type +
                         "'; only byte-level BPE tokenizers are supported");
  }
  bool byte_fallback = false;
  RETURN_IF_ERROR(tj::read_bool(model, "byte_fallback", file, "model.", &byte_fallback));
  if (byte_fallback) {
    return unimplemented(file + ": field 'model.byte_fallback' is true; not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const boost::json::value* value = tj::find(model, key);
    if (value != nullptr && !(value->is_string() && value->get_string().empty())) {
      return unimplemented(file + ": field 'model." + key + "' is set; not supported");
    }
  }
  if (const boost::json::value* dropout = tj::find(model, "dropout");
      dropout != nullptr && dropout->is_number() && dropout->to_number<double>() != 0.0) {
    return unimplemented(file + ": field 'model.dropout' is set; BPE dropout is not supported");
  }

  BpeModel bpe;
  RETURN_IF_ERROR(tj::read_bool(model, "ignore_merges", file, "model.", &bpe.ignore_merges_));

  const boost::json::value* vocab_value = tj::find(model, "vocab");
  if (vocab_value == nullptr || !vocab_value->is_object()) {
    return tj::field_error(file, "model.vocab", "is missing or not an object");
  }
  const boost::json::object& vocab = vocab_value->get_object();
  int64_t max_id = -1;
  for (const auto& [token, id_value] : vocab) {
    if (!id_value.is_int64() && !id_value.is_uint64()) {
      return tj::field_error(file, "model.vocab[\"" + std::string(token) + "\"]",
                             "must be an integer id");
    }
    int64_t id = id_value.to_number<int64_t>();
    if (id < 0 || id > INT32_MAX) {
      return tj::field_error(file, "model.vocab[\"" + std::string(token) + "\"]",
                             "is out of range: " + std::to_string(id));
    }
    max_id = std::max(max_id, id);
  }
  bpe.id_to_token_.resize(static_cast<size_t>(max_id + 1));
  bpe.id_to_bytes_.resize(static_cast<size_t>(max_id + 1));
  bpe.id_present_.assign(static_cast<size_t>(max_id + 1), false);
  bpe.token_to_id_.reserve(vocab.size());
  for (const auto& [token, id_value] : vocab) {
    auto id = static_cast<size_t>(id_value.to_number<int64_t>());
    if (bpe.id_present_[id]) {
      return tj::field_error(
          file, "model.vocab[\"" + std::string(token) + "\"]",
          "reuses id " + std::to_string(id) + " of \"" + bpe.id_to_token_[id] + "\"");
    }
    bpe.id_present_[id] = true;
    bpe.id_to_token_[id] = std::string(token);
    bpe.id_to_bytes_[id] = byte_level_decode(token);
    bpe.token_to_id_.emplace(std::string(token), static_cast<int32_t>(id));
  }
  for (int b = 0; b < 256; ++b) {
    std::string character;
    append_utf8(byte_level_char(static_cast<uint8_t>(b)), &character);
    auto it = bpe.token_to_id_.find(character);
    bpe.byte_ids_[b] = it == bpe.token_to_id_.end() ? -1 : it->second;
  }

  const boost::json::value* merges_value = tj::find(model, "merges");
  if (merges_value == nullptr || !merges_value->is_array()) {
    return tj::field_error(file, "model.merges", "is missing or not an array");
  }
  const boost::json::array& merges = merges_value->get_array();
  bpe.merges_.reserve(merges.size());
  std::string merged;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const boost::json::value& merge = merges[rank];
    std::string field = "model.merges[" + std::to_string(rank) + "]";
    std::string_view left, right;
    if (merge.is_string()) {
      if (!split_merge_line(merge.get_string(), &left, &right)) {
        return tj::field_error(file, field, "must be \"LEFT RIGHT\" with one space");
      }
    } else if (merge.is_array() && merge.get_array().size() == 2 &&
               merge.get_array()[0].is_string() && merge.get_array()[1].is_string()) {
      left = merge.get_array()[0].get_string();
      right = merge.get_array()[1].get_string();
    } else {
      return tj::field_error(file, field, "must be \"LEFT RIGHT\" or [\"LEFT\", \"RIGHT\"]");
    }
    auto left_it = bpe.token_to_id_.find(std::string(left));
    auto right_it = bpe.token_to_id_.find(std::string(right));
    merged.assign(left).append(right);
    auto merged_it = bpe.token_to_id_.find(merged);
    if (left_it == bpe.token_to_id_.end() || right_it == bpe.token_to_id_.end() ||
        merged_it == bpe.token_to_id_.end()) {
      return tj::field_error(file, field,
                             "names a token that is not in model.vocab: \"" + std::string(left) +
                                 "\" + \"" + std::string(right) + "\"");
    }
    bpe.merges_.insert(left_it->second, right_it->second, static_cast<uint32_t>(rank),
                       merged_it->second);
  }
  return bpe;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    int32_t id = byte_ids_[static_cast<unsigned char>(word[0])];
    if (id >= 0) ids->push_back(id);
    return;
  }
  if (ignore_merges_) {
    auto it = token_to_id_.find(byte_level_encode(word));
    if (it != token_to_id_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  // Per-thread table first, then the shared map (which also backs up the per-thread table's
  // evictions), then the merge itself.
  size_t first = ids->size();
  bool short_word = word.size() <= ShortWordCache::kMaxWordBytes;
  ShortWordCache* local = short_word ? &ShortWordCache::for_this_thread() : nullptr;
  uint64_t h = short_word ? ShortWordCache::hash(word) : 0;
  if (local != nullptr && local->lookup(cache_owner_, word, h, ids)) return;
  bool cacheable = word.size() <= WordCache::kMaxWordBytes;
  bool found = cacheable && cache_->lookup(word, ids);
  if (!found) merge_word(word, ids);
  const int32_t* word_ids = ids->data() + first;
  size_t count = ids->size() - first;
  if (local != nullptr) local->insert(cache_owner_, word, h, word_ids, count);
  if (cacheable && !found) cache_->insert(word, word_ids, count);
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>* ids) const {
  thread_local MergeScratch scratch;
  std::vector<Symbol>& symbols = scratch.symbols;
  std::vector<Candidate>& heap = scratch.heap;
  symbols.clear();
  heap.clear();

  // Bytes whose character is not in the vocabulary are dropped (no unk token, no byte fallback).
  for (unsigned char b : word) {
    int32_t id = byte_ids_[b];
    if (id < 0) continue;
    auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, index - 1, index + 1, 1});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  auto push_pair = [&](int32_t position) {
    const Symbol& left = symbols[static_cast<size_t>(position)];
    const MergeTable::Entry* merge =
        merges_.find(left.id, symbols[static_cast<size_t>(left.next)].id);
    if (merge == nullptr) return;
    heap.push_back(Candidate{merge->rank, position, merge->merged_id});
    std::push_heap(heap.begin(), heap.end(), CandidateAfter{});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), CandidateAfter{});
    Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[static_cast<size_t>(top.position)];
    if (left.length == 0 || left.next < 0) continue;
    Symbol& right = symbols[static_cast<size_t>(left.next)];
    // Stale when either side changed since the push (tokenizers compares the merged id only).
    const MergeTable::Entry* merge = merges_.find(left.id, right.id);
    if (merge == nullptr || merge->merged_id != top.merged_id) continue;

    left.id = top.merged_id;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (left.next >= 0) symbols[static_cast<size_t>(left.next)].prev = top.position;
    if (left.prev >= 0) push_pair(left.prev);
    if (left.next >= 0) push_pair(top.position);
  }
  for (int32_t i = 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    ids->push_back(symbols[static_cast<size_t>(i)].id);
  }
}

}  // namespace dshpc
