#include "common/json_fields.h"

#include <cmath>
#include <fstream>
#include <sstream>

namespace dshpc {

StatusOr<boost::json::value> parse_json(std::string_view text, const std::string& where) {
  boost::json::stream_parser parser;
  boost::system::error_code ec;
  size_t consumed = parser.write_some(text.data(), text.size(), ec);
  if (!ec && consumed < text.size()) {
    ec = boost::json::make_error_code(boost::json::error::extra_data);
  }
  if (!ec) parser.finish(ec);
  if (ec) {
    return invalid_argument(where + ": invalid JSON near byte " + std::to_string(consumed) + ": " +
                            ec.message());
  }
  return parser.release();
}

StatusOr<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path + ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return invalid_argument(path + ": read error");
  return buffer.str();
}

StatusOr<boost::json::value> parse_json_file(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  return parse_json(text, path);
}

const boost::json::value* JsonFields::find(std::string_view key) const {
  auto it = object_.find(key);
  if (it == object_.end() || it->value().is_null()) return nullptr;
  return &it->value();
}

bool JsonFields::has(std::string_view key) const {
  return find(key) != nullptr;
}

Status JsonFields::error(std::string_view key, const std::string& what) const {
  return invalid_argument(where_ + ": field \"" + std::string(key) + "\" " + what);
}

StatusOr<int64_t> JsonFields::get_int(std::string_view key, int64_t fallback) const {
  const boost::json::value* v = find(key);
  if (v == nullptr) return fallback;
  if (v->is_int64()) return v->get_int64();
  if (v->is_uint64() && v->get_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
    return static_cast<int64_t>(v->get_uint64());
  }
  if (v->is_double()) {
    double d = v->get_double();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
      return static_cast<int64_t>(d);
    }
  }
  return error(key, "must be an integer, got " + boost::json::serialize(*v));
}

StatusOr<double> JsonFields::get_double(std::string_view key, double fallback) const {
  const boost::json::value* v = find(key);
  if (v == nullptr) return fallback;
  if (v->is_double()) return v->get_double();
  if (v->is_int64()) return static_cast<double>(v->get_int64());
  if (v->is_uint64()) return static_cast<double>(v->get_uint64());
  return error(key, "must be a number, got " + boost::json::serialize(*v));
}

StatusOr<bool> JsonFields::get_bool(std::string_view key, bool fallback) const {
  const boost::json::value* v = find(key);
  if (v == nullptr) return fallback;
  if (v->is_bool()) return v->get_bool();
  return error(key, "must be true or false, got " + boost::json::serialize(*v));
}

StatusOr<std::string> JsonFields::get_string(std::string_view key, std::string fallback) const {
  const boost::json::value* v = find(key);
  if (v == nullptr) return fallback;
  if (v->is_string()) return std::string(v->get_string());
  return error(key, "must be a string, got " + boost::json::serialize(*v));
}

StatusOr<int64_t> JsonFields::require_int(std::string_view key) const {
  if (!has(key)) return error(key, "is missing");
  return get_int(key, 0);
}

StatusOr<double> JsonFields::require_double(std::string_view key) const {
  if (!has(key)) return error(key, "is missing");
  return get_double(key, 0);
}

StatusOr<std::string> JsonFields::require_string(std::string_view key) const {
  if (!has(key)) return error(key, "is missing");
  return get_string(key, "");
}

StatusOr<std::optional<int64_t>> JsonFields::optional_int(std::string_view key) const {
  if (!has(key)) return std::optional<int64_t>();
  ASSIGN_OR_RETURN(int64_t v, get_int(key, 0));
  return std::optional<int64_t>(v);
}

}  // namespace dshpc
