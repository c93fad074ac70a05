#include "coordinator/tokenizer.h"

#include <algorithm>
#include <cstring>

#include "coordinator/tokenizer_data.h"
#include "coordinator/unicode.h"

namespace dshpc {

// ---------------------------------------------------------------------------------------------
// Added-token matching

AddedTokenMatcher::AddedTokenMatcher() : nodes_(1) {}

int32_t AddedTokenMatcher::child(int32_t node, uint8_t byte) const {
  for (const auto& [key, next] : nodes_[static_cast<size_t>(node)].children) {
    if (key == byte) return next;
    if (key > byte) break;
  }
  return -1;
}

void AddedTokenMatcher::add(std::string_view content, int32_t token_index) {
  if (content.empty()) return;
  int32_t node = 0;
  for (unsigned char byte : content) {
    int32_t next = child(node, byte);
    if (next < 0) {
      next = static_cast<int32_t>(nodes_.size());
      nodes_.emplace_back();
      auto& children = nodes_[static_cast<size_t>(node)].children;
      auto at = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, -1));
      children.insert(at, std::make_pair(byte, next));
    }
    node = next;
  }
  int32_t& slot = nodes_[static_cast<size_t>(node)].token_index;
  if (slot < 0) slot = token_index;

  auto first = static_cast<unsigned char>(content[0]);
  if (!first_bytes_[first]) {
    first_bytes_[first] = true;
    ++distinct_first_bytes_;
    only_first_byte_ = first;
  }
}

bool AddedTokenMatcher::find(std::string_view text, size_t from, Match* match) const {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  for (size_t pos = from; pos < n; ++pos) {
    if (distinct_first_bytes_ == 0) return false;
    if (distinct_first_bytes_ == 1) {
      const void* hit = std::memchr(s + pos, only_first_byte_, n - pos);
      if (hit == nullptr) return false;
      pos = static_cast<size_t>(static_cast<const uint8_t*>(hit) - s);
    } else if (!first_bytes_[s[pos]]) {
      continue;
    }
    int32_t node = 0;
    int32_t best = -1;
    size_t best_end = 0;
    for (size_t j = pos; j < n; ++j) {
      node = child(node, s[j]);
      if (node < 0) break;
      int32_t token = nodes_[static_cast<size_t>(node)].token_index;
      if (token >= 0) {
        best = token;
        best_end = j + 1;
      }
    }
    if (best >= 0) {
      *match = Match{pos, best_end, best};
      return true;
    }
  }
  return false;
}

namespace {

// Byte offset where the character before `end` starts.
size_t previous_boundary(std::string_view text, size_t end) {
  size_t pos = end - 1;
  while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) --pos;
  return pos;
}

bool is_word_character_at(const Tokenizer::Data& data, std::string_view text, size_t pos) {
  size_t end = pos;
  next_code_point(text, &end);
  StatusOr<UnicodeRegex::Match> match = data.word_character.find(text.substr(pos, end - pos), 0);
  return match.ok() && match->found;
}

// tokenizers' AddedVocabulary::find_matches over one sentence: calls on_text(begin, end) for the
// stretches between added tokens and on_token(index) for each token, in order.
template <typename OnText, typename OnToken>
Status split_on_added_tokens(const Tokenizer::Data& data, const AddedTokenMatcher& matcher,
                             std::string_view sentence, OnText&& on_text, OnToken&& on_token) {
  size_t start_offset = 0;  // end of the last piece handed out
  size_t search_from = 0;
  AddedTokenMatcher::Match match{};
  while (!matcher.empty() && matcher.find(sentence, search_from, &match)) {
    const AddedToken& token = data.added_tokens[static_cast<size_t>(match.token_index)];
    size_t start = match.begin;
    size_t stop = match.end;
    search_from = match.end;
    if (token.single_word) {
      bool word_before =
          start > 0 && is_word_character_at(data, sentence, previous_boundary(sentence, start));
      bool word_after = stop < sentence.size() && is_word_character_at(data, sentence, stop);
      if (word_before || word_after) continue;  // part of a longer word: not this token
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > start_offset) {
        size_t prev = previous_boundary(sentence, new_start);
        size_t cursor = prev;
        if (!is_unicode_whitespace(next_code_point(sentence, &cursor))) break;
        new_start = prev;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < sentence.size()) {
        size_t cursor = stop;
        if (!is_unicode_whitespace(next_code_point(sentence, &cursor))) break;
        stop = cursor;
      }
    }
    if (start_offset < start) RETURN_IF_ERROR(on_text(start_offset, start));
    RETURN_IF_ERROR(on_token(match.token_index));
    start_offset = stop;
    search_from = std::max(search_from, stop);
  }
  if (start_offset < sentence.size()) RETURN_IF_ERROR(on_text(start_offset, sentence.size()));
  return ok_status();
}

Status unknown_id(int32_t id, int32_t id_limit) {
  return out_of_range("token id " + std::to_string(id) + " is not in the tokenizer's vocabulary" +
                      " (known ids lie in 0.." + std::to_string(id_limit - 1) + ")");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Tokenizer

Tokenizer::Tokenizer(std::unique_ptr<Data> data) : data_(std::move(data)) {}
Tokenizer::~Tokenizer() = default;

StatusOr<std::vector<int32_t>> Tokenizer::encode(std::string_view text,
                                                 bool add_special_tokens) const {
  std::string repaired;
  if (!is_valid_utf8(text)) {
    repaired = utf8_lossy(text);
    text = repaired;
  }
  const Data& data = *data_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens && data.add_bos_token) {
    if (std::optional<int32_t> bos = bos_token_id()) ids.push_back(*bos);
  }

  thread_local PreTokenizer::Scratch scratch;
  auto push_token = [&](int32_t index) {
    ids.push_back(data.added_tokens[static_cast<size_t>(index)].id);
    return ok_status();
  };
  auto encode_stretch = [&](std::string_view stretch) {
    RETURN_IF_ERROR(data.pre_tokenizer.split(stretch, &scratch));
    for (std::string_view word : scratch.pieces) data.model.encode_word(word, &ids);
    return ok_status();
  };
  // Pass 1 cuts out non-normalized added tokens; pass 2 the normalized ones in what is left.
  RETURN_IF_ERROR(split_on_added_tokens(
      data, data.non_normalized_matcher, text,
      [&](size_t begin, size_t end) {
        std::string_view part = text.substr(begin, end - begin);
        return split_on_added_tokens(
            data, data.normalized_matcher, part,
            [&](size_t b, size_t e) { return encode_stretch(part.substr(b, e - b)); }, push_token);
      },
      push_token));

  if (add_special_tokens && data.add_eos_token) {
    if (std::optional<int32_t> eos = eos_token_id()) ids.push_back(*eos);
  }
  return ids;
}

StatusOr<std::string> Tokenizer::decode(std::span<const int32_t> ids,
                                        bool skip_special_tokens) const {
  const Data& data = *data_;
  std::string text;
  std::string bytes;  // model-token bytes since the last added token
  for (int32_t id : ids) {
    if (const AddedToken* token = data.added_token(id)) {
      if (skip_special_tokens && token->special) continue;
      append_utf8_lossy(bytes, /*final=*/true, &text);
      bytes.clear();
      text += token->content;
    } else if (data.model.has_id(id)) {
      bytes += data.model.token_bytes(id);
    } else {
      return unknown_id(id, data.id_limit);
    }
  }
  append_utf8_lossy(bytes, /*final=*/true, &text);
  return text;
}

int32_t Tokenizer::id_limit() const {
  return data_->id_limit;
}

size_t Tokenizer::vocab_size() const {
  size_t size = data_->model.vocab_size();
  for (const AddedToken& token : data_->added_tokens) {
    if (!data_->model.token_to_id(token.content).has_value()) ++size;
  }
  return size;
}

size_t Tokenizer::merge_count() const {
  return data_->model.merge_count();
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = data_->added_id_by_content.find(std::string(token));
  if (it != data_->added_id_by_content.end()) return it->second;
  return data_->model.token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* token = data_->added_token(id)) return token->content;
  if (data_->model.has_id(id)) return data_->model.token(id);
  return std::nullopt;
}

bool Tokenizer::is_added(int32_t id) const {
  return data_->added_token(id) != nullptr;
}

bool Tokenizer::is_special(int32_t id) const {
  const AddedToken* token = data_->added_token(id);
  return token != nullptr && token->special;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return data_->added_tokens;
}
const std::string& Tokenizer::bos_token() const {
  return data_->bos_token;
}
const std::string& Tokenizer::eos_token() const {
  return data_->eos_token;
}
const std::string& Tokenizer::chat_template() const {
  return data_->chat_template;
}

std::optional<int32_t> Tokenizer::bos_token_id() const {
  if (data_->bos_token.empty()) return std::nullopt;
  return token_to_id(data_->bos_token);
}

std::optional<int32_t> Tokenizer::eos_token_id() const {
  if (data_->eos_token.empty()) return std::nullopt;
  return token_to_id(data_->eos_token);
}

const std::string* Tokenizer::model_token_bytes(int32_t id) const {
  if (data_->added_token(id) != nullptr || !data_->model.has_id(id)) return nullptr;
  return &data_->model.token_bytes(id);
}

// ---------------------------------------------------------------------------------------------
// StreamDecoder

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens) {}

StatusOr<std::string> StreamDecoder::push(int32_t id) {
  std::string text;
  if (const std::string* bytes = tokenizer_->model_token_bytes(id)) {
    pending_ += *bytes;
    size_t consumed = append_utf8_lossy(pending_, /*final=*/false, &text);
    pending_.erase(0, consumed);
    return text;
  }
  if (!tokenizer_->is_added(id)) return unknown_id(id, tokenizer_->id_limit());
  if (skip_special_tokens_ && tokenizer_->is_special(id)) return text;
  // An added token ends the byte run, as in Tokenizer::decode.
  append_utf8_lossy(pending_, /*final=*/true, &text);
  pending_.clear();
  text += *tokenizer_->id_to_token(id);
  return text;
}

std::string StreamDecoder::finish() {
  std::string text = utf8_lossy(pending_);
  pending_.clear();
  return text;
}

}  // namespace dshpc
