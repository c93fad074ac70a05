// Typed, named access to the fields of a JSON object, for configs and requests: every wrong type
// or missing required field becomes a Status that names the field (prefixed by `where`).
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace dshpc {

// Parses `text` as JSON; the error names `where` and the byte offset.
StatusOr<boost::json::value> parse_json(std::string_view text, const std::string& where);
// Reads a whole file and parses it.
StatusOr<boost::json::value> parse_json_file(const std::string& path);
// Reads a whole file into a string.
StatusOr<std::string> read_text_file(const std::string& path);

class JsonFields {
 public:
  // `where` labels errors, e.g. "config.json".
  JsonFields(const boost::json::object& object, std::string where)
      : object_(object), where_(std::move(where)) {}

  bool has(std::string_view key) const;  // present and not null

  // Missing or null fields give `fallback`; a present field of the wrong type is an error.
  StatusOr<int64_t> get_int(std::string_view key, int64_t fallback) const;
  StatusOr<double> get_double(std::string_view key, double fallback) const;
  StatusOr<bool> get_bool(std::string_view key, bool fallback) const;
  StatusOr<std::string> get_string(std::string_view key, std::string fallback) const;

  // Required variants: missing or null is an error naming the field.
  StatusOr<int64_t> require_int(std::string_view key) const;
  StatusOr<double> require_double(std::string_view key) const;
  StatusOr<std::string> require_string(std::string_view key) const;

  // Present-or-not variant (null counts as absent).
  StatusOr<std::optional<int64_t>> optional_int(std::string_view key) const;

  const boost::json::value* find(std::string_view key) const;
  Status error(std::string_view key, const std::string& what) const;
  const std::string& where() const { return where_; }

 private:
  const boost::json::object& object_;
  std::string where_;
};

}  // namespace dshpc
