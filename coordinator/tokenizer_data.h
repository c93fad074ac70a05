// What a loaded Tokenizer holds. Internal to the tokenizer (tokenizer*.cpp).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "coordinator/tokenizer.h"
#include "coordinator/tokenizer_bpe.h"
#include "coordinator/tokenizer_pretokenize.h"
#include "coordinator/unicode_regex.h"

namespace dshpc {

// A byte trie over added-token contents that finds the leftmost match, longest at that position:
// the same matches, in the same order, as tokenizers' Aho-Corasick automaton built with
// MatchKind::LeftmostLongest. Added tokens are few (818 in DeepSeek-V3) and nearly all start with
// one byte ('<'), so scanning for possible first bytes and walking the trie there is fast.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher();
  void add(std::string_view content, int32_t token_index);
  bool empty() const { return nodes_.size() == 1; }

  struct Match {
    size_t begin;
    size_t end;
    int32_t token_index;
  };
  // The first match that starts at or after `from`, if any.
  bool find(std::string_view text, size_t from, Match* match) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // byte -> node, sorted by byte
    int32_t token_index = -1;
  };
  int32_t child(int32_t node, uint8_t byte) const;

  std::vector<Node> nodes_;
  std::array<bool, 256> first_bytes_{};
  int distinct_first_bytes_ = 0;
  uint8_t only_first_byte_ = 0;
};

struct Tokenizer::Data {
  std::string tokenizer_path;
  std::string config_path;

  BpeModel model;
  PreTokenizer pre_tokenizer;

  std::vector<AddedToken> added_tokens;
  AddedTokenMatcher non_normalized_matcher;  // tokens with "normalized": false
  AddedTokenMatcher normalized_matcher;      // tokens with "normalized": true
  std::unordered_map<std::string, int32_t> added_id_by_content;
  std::vector<int32_t> added_index_by_id;  // id -> index into added_tokens, or -1
  UnicodeRegex word_character;             // Rust regex \w, for single_word tokens
  int32_t id_limit = 0;

  // tokenizer_config.json
  std::string bos_token;
  std::string eos_token;
  bool add_bos_token = false;
  bool add_eos_token = false;
  std::string chat_template;

  const AddedToken* added_token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= added_index_by_id.size()) return nullptr;
    int32_t index = added_index_by_id[static_cast<size_t>(id)];
    return index < 0 ? nullptr : &added_tokens[static_cast<size_t>(index)];
  }
};

// Builds Tokenizer::Data from the two files (tokenizer_load.cpp).
StatusOr<std::unique_ptr<Tokenizer::Data>> load_tokenizer_data(const std::string& tokenizer_json,
                                                               const std::string& config_json);

}  // namespace dshpc
