#include "coordinator/tokenizer_pretokenize.h"

#include "coordinator/tokenizer_json.h"

namespace dshpc {
namespace {

namespace tj = tokenizer_json;

// tokenizers' ByteLevel pre-tokenizer pattern (GPT-2), used when "use_regex" is true.
constexpr std::string_view kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

StatusOr<SplitBehavior> parse_behavior(std::string_view name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return invalid_argument("unknown behavior '" + std::string(name) + "'");
}

}  // namespace

StatusOr<PreTokenizer> PreTokenizer::from_json(const boost::json::value* value,
                                               const std::string& file) {
  PreTokenizer pre_tokenizer;
  if (value == nullptr || value->is_null()) return pre_tokenizer;
  RETURN_IF_ERROR(add_from_json(*value, file, "pre_tokenizer", &pre_tokenizer.steps_));
  return pre_tokenizer;
}

Status PreTokenizer::add_from_json(const boost::json::value& value, const std::string& file,
                                   const std::string& field, std::vector<Step>* steps) {
  if (!value.is_object()) return tj::field_error(file, field, "must be an object");
  const boost::json::object& object = value.get_object();
  std::string type;
  RETURN_IF_ERROR(tj::read_string(object, "type", file, field + ".", &type));

  if (type == "Sequence") {
    const boost::json::value* list = tj::find(object, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return tj::field_error(file, field + ".pretokenizers", "is missing or not an array");
    }
    for (size_t i = 0; i < list->get_array().size(); ++i) {
      RETURN_IF_ERROR(add_from_json(list->get_array()[i], file,
                                    field + ".pretokenizers[" + std::to_string(i) + "]", steps));
    }
    return ok_status();
  }

  if (type == "Split") {
    Step step{Step::Kind::kSplit, UnicodeRegex(), SplitBehavior::kIsolated, false};
    const boost::json::value* pattern = tj::find(object, "pattern");
    if (pattern == nullptr || !pattern->is_object()) {
      return tj::field_error(file, field + ".pattern", "is missing or not an object");
    }
    const boost::json::object& pattern_object = pattern->get_object();
    std::string regex_text, literal_text;
    RETURN_IF_ERROR(
        tj::read_string(pattern_object, "Regex", file, field + ".pattern.", &regex_text));
    RETURN_IF_ERROR(
        tj::read_string(pattern_object, "String", file, field + ".pattern.", &literal_text));
    StatusOr<UnicodeRegex> regex = invalid_argument("no pattern");
    if (pattern_object.contains("Regex")) {
      regex = UnicodeRegex::compile(regex_text);
    } else if (pattern_object.contains("String")) {
      regex = UnicodeRegex::compile_literal(literal_text);
    } else {
      return tj::field_error(file, field + ".pattern", "must hold \"Regex\" or \"String\"");
    }
    if (!regex.ok()) {
      return tj::field_error(file, field + ".pattern", regex.status().message());
    }
    step.regex = std::move(regex).value();
    std::string behavior = "Isolated";
    RETURN_IF_ERROR(tj::read_string(object, "behavior", file, field + ".", &behavior));
    StatusOr<SplitBehavior> parsed = parse_behavior(behavior);
    if (!parsed.ok()) return tj::field_error(file, field + ".behavior", parsed.status().message());
    step.behavior = *parsed;
    RETURN_IF_ERROR(tj::read_bool(object, "invert", file, field + ".", &step.invert));
    steps->push_back(std::move(step));
    return ok_status();
  }

  if (type == "ByteLevel") {
    // tokenizers' defaults when a field is missing: add_prefix_space and use_regex are true.
    bool add_prefix_space = true, use_regex = true;
    RETURN_IF_ERROR(
        tj::read_bool(object, "add_prefix_space", file, field + ".", &add_prefix_space));
    RETURN_IF_ERROR(tj::read_bool(object, "use_regex", file, field + ".", &use_regex));
    if (add_prefix_space) {
      steps->push_back(Step{Step::Kind::kPrefixSpace, UnicodeRegex(), SplitBehavior::kIsolated});
    }
    if (use_regex) {
      ASSIGN_OR_RETURN(UnicodeRegex regex, UnicodeRegex::compile(kByteLevelPattern));
      steps->push_back(Step{Step::Kind::kSplit, std::move(regex), SplitBehavior::kIsolated});
    }
    // The byte-to-character mapping itself needs no step: the BPE model works on raw bytes.
    return ok_status();
  }

  return unimplemented(file + ": field '" + field + ".type' is '" + type +
                       "'; supported pre-tokenizers are Sequence, Split and ByteLevel");
}

Status PreTokenizer::split(std::string_view text, Scratch* scratch) const {
  scratch->pieces.clear();
  scratch->owned.clear();
  if (!text.empty()) scratch->pieces.push_back(text);
  for (const Step& step : steps_) {
    scratch->next_pieces.clear();
    for (std::string_view piece : scratch->pieces) {
      if (step.kind == Step::Kind::kPrefixSpace) {
        if (piece.front() == ' ') {
          scratch->next_pieces.push_back(piece);
        } else {
          scratch->owned.push_back(" " + std::string(piece));
          scratch->next_pieces.push_back(scratch->owned.back());
        }
      } else {
        RETURN_IF_ERROR(apply_split(step, piece, scratch));
      }
    }
    scratch->pieces.swap(scratch->next_pieces);
  }
  return ok_status();
}

// tokenizers' NormalizedString::split: the pattern cuts the piece into matches and the gaps
// between them; the behavior decides which become pieces of their own; empty pieces vanish.
Status PreTokenizer::apply_split(const Step& step, std::string_view piece, Scratch* scratch) const {
  auto& spans = scratch->spans;
  auto& is_match = scratch->is_match;
  spans.clear();
  is_match.clear();
  size_t previous_end = 0;
  RETURN_IF_ERROR(step.regex.for_each_match(piece, [&](size_t begin, size_t end) {
    if (begin != previous_end) {
      spans.emplace_back(previous_end, begin);
      is_match.push_back(step.invert);
    }
    spans.emplace_back(begin, end);
    is_match.push_back(!step.invert);
    previous_end = end;
  }));
  if (previous_end != piece.size()) {
    spans.emplace_back(previous_end, piece.size());
    is_match.push_back(step.invert);
  }

  auto emit = [&](size_t begin, size_t end) {
    if (end > begin) scratch->next_pieces.push_back(piece.substr(begin, end - begin));
  };
  switch (step.behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& [begin, end] : spans) emit(begin, end);
      return ok_status();
    case SplitBehavior::kRemoved:
      for (size_t i = 0; i < spans.size(); ++i) {
        if (!is_match[i]) emit(spans[i].first, spans[i].second);
      }
      return ok_status();
    default:
      break;
  }

  // The merging behaviors fold spans together first, then emit.
  std::vector<std::pair<size_t, size_t>> merged;
  bool previous_match = false;
  if (step.behavior == SplitBehavior::kMergedWithNext) {
    for (size_t k = spans.size(); k-- > 0;) {
      if (is_match[k] && !previous_match && !merged.empty()) {
        merged.back().first = spans[k].first;
      } else {
        merged.push_back(spans[k]);
      }
      previous_match = is_match[k];
    }
    for (size_t k = merged.size(); k-- > 0;) emit(merged[k].first, merged[k].second);
    return ok_status();
  }
  for (size_t k = 0; k < spans.size(); ++k) {
    bool join = step.behavior == SplitBehavior::kContiguous ? is_match[k] == previous_match
                                                            : is_match[k] && !previous_match;
    if (join && !merged.empty()) {
      merged.back().second = spans[k].second;
    } else {
      merged.push_back(spans[k]);
    }
    previous_match = is_match[k];
  }
  for (const auto& [begin, end] : merged) emit(begin, end);
  return ok_status();
}

}  // namespace dshpc
