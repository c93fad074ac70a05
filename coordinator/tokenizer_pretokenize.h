// The pre-tokenizer of a Hugging Face tokenizer.json: splits text (one stretch between added
// tokens) into the words the BPE model encodes one at a time. Internal to the tokenizer.
//
// Supported: "Sequence", "Split" (Regex or String pattern, every behavior, invert) and
// "ByteLevel" (add_prefix_space, use_regex with the GPT-2 pattern). Each step applies to every
// piece the previous step produced, on its own: a pattern's lookaround at a piece's end sees the
// end of the piece, never the text after it, just as tokenizers splits a PreTokenizedString.
#pragma once

#include <boost/json.hpp>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "coordinator/unicode_regex.h"

namespace dshpc {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class PreTokenizer {
 public:
  // Per-call working memory; reuse one per thread to avoid allocations.
  struct Scratch {
    std::vector<std::string_view> pieces;
    std::vector<std::string_view> next_pieces;
    std::deque<std::string> owned;  // pieces with a prepended space (add_prefix_space)
    std::vector<std::pair<size_t, size_t>> spans;
    std::vector<bool> is_match;
  };

  // `value` is tokenizer.json's "pre_tokenizer" (null means: the whole text is one word).
  static StatusOr<PreTokenizer> from_json(const boost::json::value* value, const std::string& file);

  // Splits `text` into scratch->pieces (views into `text` or into scratch->owned).
  Status split(std::string_view text, Scratch* scratch) const;

  size_t step_count() const { return steps_.size(); }

 private:
  struct Step {
    enum class Kind { kSplit, kPrefixSpace } kind;
    UnicodeRegex regex;
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
  };

  static Status add_from_json(const boost::json::value& value, const std::string& file,
                              const std::string& field, std::vector<Step>* steps);
  Status apply_split(const Step& step, std::string_view piece, Scratch* scratch) const;

  std::vector<Step> steps_;
};

}  // namespace dshpc
