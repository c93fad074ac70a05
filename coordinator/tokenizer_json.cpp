#include "coordinator/tokenizer_json.h"

#include <fstream>
#include <sstream>

namespace dshpc::tokenizer_json {

StatusOr<boost::json::value> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path + ": cannot open file");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return data_loss(path + ": read error");
  std::string text = std::move(buffer).str();

  boost::json::stream_parser parser;
  boost::system::error_code error;
  size_t consumed = parser.write_some(text.data(), text.size(), error);
  if (!error) parser.finish(error);
  if (error) {
    // Report the line and column of the first byte the parser did not accept.
    size_t line = 1, column = 1;
    for (size_t i = 0; i < consumed && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    return invalid_argument(path + ": invalid JSON at line " + std::to_string(line) + ", column " +
                            std::to_string(column) + ": " + error.message());
  }
  return parser.release();
}

Status field_error(const std::string& file, std::string_view field, std::string_view what) {
  return invalid_argument(file + ": field '" + std::string(field) + "' " + std::string(what));
}

const boost::json::value* find(const boost::json::object& object, std::string_view key) {
  const boost::json::value* value = object.if_contains(key);
  if (value == nullptr || value->is_null()) return nullptr;
  return value;
}

Status read_bool(const boost::json::object& object, std::string_view key, const std::string& file,
                 std::string_view field_prefix, bool* out) {
  const boost::json::value* value = find(object, key);
  if (value == nullptr) return ok_status();
  if (!value->is_bool()) {
    return field_error(file, std::string(field_prefix) + std::string(key),
                       std::string("must be a boolean, not ") + kind_name(*value));
  }
  *out = value->get_bool();
  return ok_status();
}

Status read_string(const boost::json::object& object, std::string_view key, const std::string& file,
                   std::string_view field_prefix, std::string* out) {
  const boost::json::value* value = find(object, key);
  if (value == nullptr) return ok_status();
  if (!value->is_string()) {
    return field_error(file, std::string(field_prefix) + std::string(key),
                       std::string("must be a string, not ") + kind_name(*value));
  }
  *out = std::string(value->get_string());
  return ok_status();
}

const char* kind_name(const boost::json::value& value) {
  switch (value.kind()) {
    case boost::json::kind::null:
      return "null";
    case boost::json::kind::bool_:
      return "a boolean";
    case boost::json::kind::int64:
    case boost::json::kind::uint64:
      return "an integer";
    case boost::json::kind::double_:
      return "a number";
    case boost::json::kind::string:
      return "a string";
    case boost::json::kind::array:
      return "an array";
    case boost::json::kind::object:
      return "an object";
  }
  return "a value";
}

}  // namespace dshpc::tokenizer_json
