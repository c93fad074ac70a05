// Small helpers for reading tokenizer files with errors that name the file and the field.
// Internal to the tokenizer.
#pragma once

#include <boost/json.hpp>
#include <string>
#include <string_view>

#include "common/status.h"

namespace dshpc::tokenizer_json {

// Reads and parses a JSON file: NotFound when it cannot be opened, InvalidArgument (with the line
// and column) when it is not JSON.
StatusOr<boost::json::value> read_file(const std::string& path);

// "FILE: field 'FIELD' WHAT", as InvalidArgument.
Status field_error(const std::string& file, std::string_view field, std::string_view what);

// The member `key` of `object`, or nullptr when absent. A JSON null counts as absent.
const boost::json::value* find(const boost::json::object& object, std::string_view key);

// Optional members with a type check: absent or null leaves *out unchanged.
Status read_bool(const boost::json::object& object, std::string_view key, const std::string& file,
                 std::string_view field_prefix, bool* out);
Status read_string(const boost::json::object& object, std::string_view key, const std::string& file,
                   std::string_view field_prefix, std::string* out);

// A short description of a JSON value's kind, for messages ("a string", "an array", ...).
const char* kind_name(const boost::json::value& value);

}  // namespace dshpc::tokenizer_json
