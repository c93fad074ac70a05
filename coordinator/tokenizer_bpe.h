// Byte-level BPE model of a Hugging Face tokenizer.json ("model": {"type": "BPE", ...}).
// Internal to the tokenizer; use coordinator/tokenizer.h.
//
// A word (one pre-tokenized piece, as raw bytes) starts as one symbol per byte, each the
// vocabulary id of that byte's byte-level character. Merging repeatedly joins the adjacent pair of
// lowest merge rank, leftmost first, exactly as tokenizers' Word::merge_all does: the symbols form
// a linked list, candidate pairs sit in a min-heap ordered by (rank, position), and a popped pair
// is skipped when either side has changed since it was pushed. Results are cached per word:
// short words in a lock-free per-thread table (1 MiB per encoding thread), all words up to 256
// bytes in a shared sharded map behind it.
#pragma once

#include <array>
#include <boost/json.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace dshpc {

// (left id, right id) -> (rank, merged id): open addressing with linear probing; about 4 MB for
// DeepSeek-V3's 127,741 merges, and one multiply plus usually one probe per lookup.
class MergeTable {
 public:
  struct Entry {
    uint64_t key;
    uint32_t rank;
    int32_t merged_id;
  };

  void reserve(size_t merges);
  // A later merge of the same pair replaces the earlier one, as a Rust HashMap collect does.
  void insert(int32_t left, int32_t right, uint32_t rank, int32_t merged_id);
  const Entry* find(int32_t left, int32_t right) const {
    uint64_t key = pack(left, right);
    for (size_t slot = hash(key);; slot = (slot + 1) & mask_) {
      const Entry& entry = slots_[slot];
      if (entry.key == key) return &entry;
      if (entry.key == kEmptyKey) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmptyKey = ~0ull;
  static uint64_t pack(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  size_t hash(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }

  std::vector<Entry> slots_ = std::vector<Entry>(1, Entry{kEmptyKey, 0, 0});
  size_t mask_ = 0;
  int shift_ = 63;
  size_t size_ = 0;
};

class BpeModel {
 public:
  BpeModel();
  ~BpeModel();
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;

  // Reads tokenizer.json's "model" object; `file` names the file in error messages.
  static StatusOr<BpeModel> from_json(const boost::json::value& model, const std::string& file);

  // Appends the ids of one word (raw bytes of a pre-tokenized piece). Thread-safe.
  void encode_word(std::string_view word, std::vector<int32_t>* ids) const;

  // Number of ids the model's vocabulary spans (1 + largest id).
  int32_t id_limit() const { return static_cast<int32_t>(id_to_token_.size()); }
  bool has_id(int32_t id) const {
    return id >= 0 && id < id_limit() && id_present_[static_cast<size_t>(id)];
  }
  // The vocabulary string (byte-level characters) and the raw bytes it stands for.
  const std::string& token(int32_t id) const { return id_to_token_[static_cast<size_t>(id)]; }
  const std::string& token_bytes(int32_t id) const { return id_to_bytes_[static_cast<size_t>(id)]; }
  std::optional<int32_t> token_to_id(std::string_view token) const;
  size_t vocab_size() const { return token_to_id_.size(); }
  size_t merge_count() const { return merges_.size(); }

 private:
  class WordCache;
  class ShortWordCache;

  void merge_word(std::string_view word, std::vector<int32_t>* ids) const;

  std::unordered_map<std::string, int32_t> token_to_id_;
  std::vector<std::string> id_to_token_;
  std::vector<std::string> id_to_bytes_;
  std::vector<bool> id_present_;
  std::array<int32_t, 256> byte_ids_{};  // -1 when the byte's character is not in the vocabulary
  MergeTable merges_;
  bool ignore_merges_ = false;
  uint32_t cache_owner_ = 0;  // tags this model's entries in the per-thread short-word cache
  std::unique_ptr<WordCache> cache_;
};

}  // namespace dshpc
