// Byte-level BPE tokenizer loaded from a Hugging Face tokenizer directory (tokenizer.json and,
// when present, tokenizer_config.json), exact to the `tokenizers` library on DeepSeek's files.
//
// encode(text):
//   1. added tokens are cut out first, longest match leftmost (first those with
//      "normalized": false, then those with "normalized": true in what is left), honouring
//      single_word, lstrip and rstrip as tokenizers' AddedVocabulary does;
//   2. each stretch between them goes through the pre-tokenizer (Split / ByteLevel steps read from
//      tokenizer.json) and every resulting word through BPE merges by rank.
// decode(ids): model tokens map back through the ByteLevel decoder; added tokens decode to their
//   content. Byte runs between added tokens become UTF-8 with U+FFFD for ill-formed sequences.
//
// Text that is not valid UTF-8 is not rejected: each ill-formed sequence is replaced by U+FFFD
// first (the same result a client gets from Python's bytes.decode("utf-8", "replace")), because
// the tokenizers library only accepts valid strings. JSON front ends validate before this anyway.
//
// All const methods are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace dshpc {

// One entry of tokenizer.json's "added_tokens".
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

class Tokenizer {
 public:
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Loads DIR/tokenizer.json and, when it exists, DIR/tokenizer_config.json. Errors name the
  // file and field: NotFound (missing file), InvalidArgument (bad JSON or field),
  // Unimplemented (a valid tokenizer this code does not support, e.g. "model.type": "Unigram").
  static StatusOr<std::unique_ptr<Tokenizer>> load(const std::string& dir);
  // As load(), from explicit paths; an empty config path means "no tokenizer_config.json".
  static StatusOr<std::unique_ptr<Tokenizer>> load_files(const std::string& tokenizer_json_path,
                                                         const std::string& config_json_path);

  // Token ids of `text`. With add_special_tokens, the BOS (EOS) token is added when
  // tokenizer_config.json sets add_bos_token (add_eos_token); without it this equals
  // tokenizers' encode(text, add_special_tokens=False).
  StatusOr<std::vector<int32_t>> encode(std::string_view text,
                                        bool add_special_tokens = false) const;

  // Text of `ids`; an id that is neither a model nor an added token is OutOfRange.
  StatusOr<std::string> decode(std::span<const int32_t> ids,
                               bool skip_special_tokens = false) const;

  // 1 + the largest id the tokenizer knows (model or added token).
  int32_t id_limit() const;
  // Model vocabulary entries plus added tokens that are not also model entries.
  size_t vocab_size() const;
  size_t merge_count() const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The vocabulary string of a model token (byte-level characters) or an added token's content.
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_added(int32_t id) const;
  bool is_special(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;

  // From tokenizer_config.json; empty / nullopt when absent.
  const std::string& bos_token() const;
  const std::string& eos_token() const;
  std::optional<int32_t> bos_token_id() const;
  std::optional<int32_t> eos_token_id() const;
  const std::string& chat_template() const;

  // The raw bytes an id stands for in decoding (model tokens), or nullptr for added tokens and
  // unknown ids. Used by StreamDecoder.
  const std::string* model_token_bytes(int32_t id) const;

  struct Data;  // defined in tokenizer_data.h

 private:
  explicit Tokenizer(std::unique_ptr<Data> data);
  std::unique_ptr<Data> data_;
};

// Incremental decoding for streaming responses. push() takes one id and returns the text that is
// now complete; bytes of a character split across tokens are held until the character is whole.
// Concatenating every push() result and finish() equals Tokenizer::decode of all ids, and each
// piece is valid UTF-8 on its own.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);

  StatusOr<std::string> push(int32_t id);
  // Emits what is held back (an incomplete character becomes U+FFFD) and resets the decoder.
  std::string finish();
  // Bytes currently held back (0..3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;
};

}  // namespace dshpc
