#include "worker/safetensors.h"

#include <algorithm>
#include <boost/json.hpp>
#include <boost/json/basic_parser_impl.hpp>
#include <cstdint>
#include <new>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

namespace dshpc {
namespace {

namespace json = boost::json;

constexpr size_t kLengthPrefixBytes = 8;

std::string in_quotes(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

// "an array", "a number" …: the kind of a JSON value, for messages.
const char* kind_name(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null:
      return "null";
    case json::kind::bool_:
      return "a boolean";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_:
      return "a number";
    case json::kind::string:
      return "a string";
    case json::kind::array:
      return "an array";
    case json::kind::object:
      return "an object";
  }
  return "a value";
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// What the SAX pass found wrong with a JSON text. For a repeated key, `duplicate_key` is the key,
// `parent_key` the key of the enclosing object and `root_key` the top-level member that holds it
// (both "" when the duplicate is itself at the top level).
struct JsonProblem {
  std::string message;
  std::string duplicate_key;
  std::string parent_key;
  std::string root_key;
  bool top_level_duplicate = false;
};

// SAX handler for boost::json::basic_parser that only records, per open object, the keys seen
// so far. We need it because the DOM parser drops duplicate keys without telling us.
class DuplicateKeyFinder {
 public:
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code&) {
    frames_.push_back(Frame{true, {}, {}});
    return true;
  }
  bool on_object_end(std::size_t, json::error_code&) {
    frames_.pop_back();
    return true;
  }
  bool on_array_begin(json::error_code&) {
    frames_.push_back(Frame{false, {}, {}});
    return true;
  }
  bool on_array_end(std::size_t, json::error_code&) {
    frames_.pop_back();
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    key_.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    key_.append(s.data(), s.size());
    Frame& frame = frames_.back();
    if (!frame.keys.insert(key_).second) {
      duplicate_ = key_;
      for (size_t i = frames_.size() - 1; i-- > 0;) {
        if (frames_[i].is_object) {
          parent_ = frames_[i].current_key;
          break;
        }
      }
      top_level_ = frames_.size() == 1;
      if (!top_level_) root_ = frames_.front().current_key;
      ec = json::error::syntax;  // any error stops the parser; our fields say which
      return false;
    }
    frame.current_key = std::move(key_);
    key_.clear();
    return true;
  }
  bool on_string_part(json::string_view, std::size_t, json::error_code&) { return true; }
  bool on_string(json::string_view, std::size_t, json::error_code&) { return true; }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(int64_t, json::string_view, json::error_code&) { return true; }
  bool on_uint64(uint64_t, json::string_view, json::error_code&) { return true; }
  bool on_double(double, json::string_view, json::error_code&) { return true; }
  bool on_bool(bool, json::error_code&) { return true; }
  bool on_null(json::error_code&) { return true; }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

  const std::optional<std::string>& duplicate() const { return duplicate_; }
  const std::string& parent() const { return parent_; }
  const std::string& root() const { return root_; }
  bool top_level() const { return top_level_; }

 private:
  struct Frame {
    bool is_object;
    std::set<std::string> keys;
    std::string current_key;
  };
  std::vector<Frame> frames_;
  std::string key_;
  std::optional<std::string> duplicate_;
  std::string parent_;
  std::string root_;
  bool top_level_ = false;
};

JsonProblem syntax_problem(std::string message) {
  JsonProblem problem;
  problem.message = std::move(message);
  return problem;
}

std::optional<JsonProblem> find_json_problem(std::string_view text) {
  try {
    json::basic_parser<DuplicateKeyFinder> parser{json::parse_options{}};
    json::error_code ec;
    const size_t used = parser.write_some(false, text.data(), text.size(), ec);
    const DuplicateKeyFinder& finder = parser.handler();
    if (finder.duplicate()) {
      JsonProblem problem;
      problem.duplicate_key = *finder.duplicate();
      problem.parent_key = finder.parent();
      problem.root_key = finder.root();
      problem.top_level_duplicate = finder.top_level();
      problem.message = "duplicate key " + in_quotes(problem.duplicate_key) +
                        (problem.top_level_duplicate ? std::string(" at the top level")
                                                     : " inside " + in_quotes(problem.parent_key));
      return problem;
    }
    if (ec) {
      return syntax_problem("invalid JSON: " + ec.message() + " (at byte " + std::to_string(used) +
                            ")");
    }
    if (used != text.size()) {
      return syntax_problem("invalid JSON: unexpected text after the document at byte " +
                            std::to_string(used));
    }
  } catch (const std::bad_alloc&) {
    return syntax_problem("out of memory while parsing JSON");
  }
  return std::nullopt;
}

// Parses `text`, already checked by find_json_problem, into a DOM.
StatusOr<json::value> parse_json_dom(std::string_view text, const std::string& label) {
  json::error_code ec;
  json::value root;
  try {
    root = json::parse(json::string_view(text.data(), text.size()), ec);
  } catch (const std::bad_alloc&) {
    return resource_exhausted(label + ": out of memory while parsing JSON");
  }
  if (ec) return invalid_argument(label + ": invalid JSON: " + ec.message());
  return root;
}

// An integer JSON value as int64; nullopt for anything else (doubles such as 2.0 included).
std::optional<int64_t> as_int64(const json::value& v) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64() && v.get_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
    return static_cast<int64_t>(v.get_uint64());
  }
  return std::nullopt;
}

std::optional<uint64_t> as_uint64(const json::value& v) {
  if (v.is_uint64()) return v.get_uint64();
  if (v.is_int64() && v.get_int64() >= 0) return static_cast<uint64_t>(v.get_int64());
  return std::nullopt;
}

Status parse_metadata(const json::value& value, const std::string& file_name,
                      std::map<std::string, std::string>* metadata) {
  if (!value.is_object()) {
    return invalid_argument(file_name + ": \"__metadata__\" is " + kind_name(value) +
                            ", expected an object of strings");
  }
  for (const auto& entry : value.get_object()) {
    if (!entry.value().is_string()) {
      return invalid_argument(file_name + ": \"__metadata__\"[" + in_quotes(entry.key()) + "] is " +
                              kind_name(entry.value()) + ", expected a string");
    }
    (*metadata)[std::string(entry.key())] = std::string(entry.value().get_string());
  }
  return ok_status();
}

// Validates one header entry against a data region of `data_size` bytes.
StatusOr<SafetensorsTensor> parse_tensor_entry(const std::string& name, const json::value& value,
                                               uint64_t data_size, const std::string& file_name) {
  const std::string where = file_name + ": tensor " + in_quotes(name);
  if (!value.is_object()) {
    return invalid_argument(where + ": entry is " + kind_name(value) +
                            ", expected an object with dtype, shape and data_offsets");
  }
  const json::object& entry = value.get_object();
  SafetensorsTensor tensor;
  tensor.name = name;

  const json::value* dtype = entry.if_contains("dtype");
  if (dtype == nullptr) return invalid_argument(where + ": missing \"dtype\"");
  if (!dtype->is_string()) {
    return invalid_argument(where + ": \"dtype\" is " + kind_name(*dtype) + ", expected a string");
  }
  const std::string_view dtype_text(dtype->get_string().data(), dtype->get_string().size());
  const std::optional<DType> parsed = parse_dtype(dtype_text);
  if (!parsed) return invalid_argument(where + ": unknown dtype " + in_quotes(dtype_text));
  tensor.dtype = *parsed;

  const json::value* shape = entry.if_contains("shape");
  if (shape == nullptr) return invalid_argument(where + ": missing \"shape\"");
  if (!shape->is_array()) {
    return invalid_argument(where + ": \"shape\" is " + kind_name(*shape) + ", expected an array");
  }
  // Checked products: a crafted shape must not wrap around to match a small byte range.
  uint64_t num_elements = 1;
  bool overflow = false;
  for (size_t i = 0; i < shape->get_array().size(); ++i) {
    const json::value& dim_value = shape->get_array()[i];
    const std::optional<int64_t> dim = as_int64(dim_value);
    const std::string dim_label = "shape[" + std::to_string(i) + "]";
    if (!dim) {
      const char* problem = dim_value.is_uint64() ? " is too large" : " is not an integer";
      return invalid_argument(where + ": " + dim_label + problem);
    }
    if (*dim < 0) {
      return invalid_argument(where + ": " + dim_label + " is " + std::to_string(*dim) +
                              ", dims must be non-negative");
    }
    tensor.shape.push_back(*dim);
    overflow |= __builtin_mul_overflow(num_elements, static_cast<uint64_t>(*dim), &num_elements);
  }
  uint64_t expected_bytes = 0;
  overflow |= num_elements > static_cast<uint64_t>(INT64_MAX);
  overflow |= __builtin_mul_overflow(num_elements, dtype_size(tensor.dtype), &expected_bytes);
  if (overflow) {
    return invalid_argument(where + ": shape " + shape_string(tensor.shape) + " of " +
                            dtype_name(tensor.dtype) + " overflows 64-bit byte counts");
  }

  const json::value* offsets = entry.if_contains("data_offsets");
  if (offsets == nullptr) return invalid_argument(where + ": missing \"data_offsets\"");
  if (!offsets->is_array() || offsets->get_array().size() != 2) {
    return invalid_argument(where + ": \"data_offsets\" must be an array [begin, end]");
  }
  const std::optional<uint64_t> begin = as_uint64(offsets->get_array()[0]);
  const std::optional<uint64_t> end = as_uint64(offsets->get_array()[1]);
  if (!begin || !end) {
    return invalid_argument(where + ": \"data_offsets\" must hold two non-negative integers");
  }
  const std::string range =
      "data_offsets [" + std::to_string(*begin) + ", " + std::to_string(*end) + "]";
  if (*begin > *end) return invalid_argument(where + ": " + range + " has begin > end");
  if (*end > data_size) {
    return data_loss(where + ": " + range + " ends beyond the data region of " +
                     std::to_string(data_size) + " bytes (truncated file?)");
  }
  if (*end - *begin != expected_bytes) {
    return invalid_argument(where + ": shape " + shape_string(tensor.shape) + " of " +
                            dtype_name(tensor.dtype) + " needs " + std::to_string(expected_bytes) +
                            " bytes but " + range + " span " + std::to_string(*end - *begin));
  }
  tensor.data_begin = *begin;
  tensor.data_end = *end;
  return tensor;
}

}  // namespace

int64_t SafetensorsTensor::num_elements() const {
  int64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(count, dim, &count)) return -1;
  }
  return count;
}

Status check_json_document(std::string_view text, const std::string& file_name) {
  const std::optional<JsonProblem> problem = find_json_problem(text);
  if (problem) return invalid_argument(file_name + ": " + problem->message);
  return ok_status();
}

StatusOr<SafetensorsHeader> parse_safetensors_header(const uint8_t* bytes, size_t size,
                                                     const std::string& file_name) {
  if (bytes == nullptr || size < kLengthPrefixBytes) {
    return data_loss(file_name + ": " + std::to_string(size) +
                     " bytes is too small for a safetensors file (the header length alone is 8)");
  }
  uint64_t header_bytes = 0;
  for (size_t i = 0; i < kLengthPrefixBytes; ++i) {
    header_bytes |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  }
  if (header_bytes > kMaxSafetensorsHeaderBytes) {
    return invalid_argument(file_name + ": header length " + std::to_string(header_bytes) +
                            " exceeds the limit of " + std::to_string(kMaxSafetensorsHeaderBytes) +
                            " bytes");
  }
  if (header_bytes > size - kLengthPrefixBytes) {
    return data_loss(file_name + ": header length " + std::to_string(header_bytes) + " but only " +
                     std::to_string(size - kLengthPrefixBytes) +
                     " bytes follow the length (truncated file?)");
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes + kLengthPrefixBytes),
                              header_bytes);
  const std::string label = file_name + ": header";
  if (const std::optional<JsonProblem> problem = find_json_problem(text)) {
    if (problem->top_level_duplicate) {
      return invalid_argument(file_name + ": tensor " + in_quotes(problem->duplicate_key) +
                              " is named twice in the header");
    }
    if (!problem->root_key.empty()) {
      const std::string owner = problem->root_key == "__metadata__"
                                    ? std::string("\"__metadata__\"")
                                    : "tensor " + in_quotes(problem->root_key);
      return invalid_argument(file_name + ": " + owner + ": duplicate key " +
                              in_quotes(problem->duplicate_key));
    }
    return invalid_argument(label + ": " + problem->message);
  }
  ASSIGN_OR_RETURN(const json::value root, parse_json_dom(text, label));
  if (!root.is_object()) {
    return invalid_argument(label + " is " + kind_name(root) + ", expected an object");
  }

  const uint64_t data_size = size - kLengthPrefixBytes - header_bytes;
  SafetensorsHeader header;
  header.header_bytes = header_bytes;
  for (const auto& entry : root.get_object()) {
    const std::string name(entry.key());
    if (name == "__metadata__") {
      RETURN_IF_ERROR(parse_metadata(entry.value(), file_name, &header.metadata));
      continue;
    }
    ASSIGN_OR_RETURN(SafetensorsTensor tensor,
                     parse_tensor_entry(name, entry.value(), data_size, file_name));
    header.tensors.push_back(std::move(tensor));
  }

  // Sorted by begin (ties by end, then name, so the order never depends on the JSON's), every
  // tensor must start at or after the end of the one before it.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
              return std::tie(a.data_begin, a.data_end, a.name) <
                     std::tie(b.data_begin, b.data_end, b.name);
            });
  for (size_t i = 1; i < header.tensors.size(); ++i) {
    const SafetensorsTensor& prev = header.tensors[i - 1];
    const SafetensorsTensor& cur = header.tensors[i];
    if (cur.data_begin < prev.data_end) {
      return invalid_argument(
          file_name + ": tensor " + in_quotes(cur.name) + " [" + std::to_string(cur.data_begin) +
          ", " + std::to_string(cur.data_end) + ") overlaps tensor " + in_quotes(prev.name) + " [" +
          std::to_string(prev.data_begin) + ", " + std::to_string(prev.data_end) + ")");
    }
  }
  return header;
}

StatusOr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  ASSIGN_OR_RETURN(SafetensorsHeader header,
                   parse_safetensors_header(mapped.data(), mapped.size(), path));
  SafetensorsFile file;
  file.file_ = std::move(mapped);
  file.header_ = std::move(header);
  for (size_t i = 0; i < file.header_.tensors.size(); ++i) {
    file.index_.emplace(file.header_.tensors[i].name, i);
  }
  return file;
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const uint8_t* SafetensorsFile::data(const SafetensorsTensor& tensor) const {
  return file_.data() + kLengthPrefixBytes + header_.header_bytes + tensor.data_begin;
}

}  // namespace dshpc
