// Values of the chat-template interpreter (a Jinja subset): Python-like semantics for what chat
// templates use. Internal to coordinator/chat_template*.
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "common/status.h"

namespace dshpc::jinja {

class Value;
using List = std::vector<Value>;

// An insertion-ordered dict with string keys (Python dicts keep insertion order, and tojson and
// item iteration show it). Also the storage of a namespace() object.
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;

  const Value* find(std::string_view key) const;
  void set(std::string key, Value value);
};

class Value {
 public:
  struct Undefined {};
  struct None {};
  using Storage = std::variant<Undefined, None, bool, int64_t, double, std::string,
                               std::shared_ptr<const List>, std::shared_ptr<Dict>>;

  Value() = default;
  Value(None) : storage_(None{}) {}                                              // NOLINT
  Value(bool b) : storage_(b) {}                                                 // NOLINT
  Value(int64_t i) : storage_(i) {}                                              // NOLINT
  Value(int i) : storage_(static_cast<int64_t>(i)) {}                            // NOLINT
  Value(double d) : storage_(d) {}                                               // NOLINT
  Value(std::string s) : storage_(std::move(s)) {}                               // NOLINT
  Value(const char* s) : storage_(std::string(s)) {}                             // NOLINT
  Value(List list) : storage_(std::make_shared<const List>(std::move(list))) {}  // NOLINT
  Value(std::shared_ptr<Dict> dict) : storage_(std::move(dict)) {}               // NOLINT

  static Value from_json(const boost::json::value& json);

  bool is_undefined() const { return std::holds_alternative<Undefined>(storage_); }
  bool is_none() const { return std::holds_alternative<None>(storage_); }
  bool is_bool() const { return std::holds_alternative<bool>(storage_); }
  bool is_int() const { return std::holds_alternative<int64_t>(storage_); }
  bool is_float() const { return std::holds_alternative<double>(storage_); }
  bool is_number() const { return is_int() || is_float(); }  // bool is not a number here
  bool is_string() const { return std::holds_alternative<std::string>(storage_); }
  bool is_list() const { return std::holds_alternative<std::shared_ptr<const List>>(storage_); }
  bool is_dict() const { return std::holds_alternative<std::shared_ptr<Dict>>(storage_); }

  bool as_bool() const { return std::get<bool>(storage_); }
  int64_t as_int() const { return std::get<int64_t>(storage_); }
  double as_double() const { return is_int() ? static_cast<double>(as_int()) : as_float(); }
  double as_float() const { return std::get<double>(storage_); }
  const std::string& as_string() const { return std::get<std::string>(storage_); }
  const List& as_list() const { return *std::get<std::shared_ptr<const List>>(storage_); }
  const Dict& as_dict() const { return *std::get<std::shared_ptr<Dict>>(storage_); }
  Dict& mutable_dict() const { return *std::get<std::shared_ptr<Dict>>(storage_); }

  // Python truthiness; undefined is false.
  bool truthy() const;
  // Python str(): what {{ value }} prints. Undefined prints as "".
  std::string to_string() const;
  // Python repr() (used inside lists and dicts).
  std::string repr() const;
  // json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys), as transformers'
  // tojson filter; indent < 0 means none. Undefined values are an error.
  StatusOr<std::string> to_json(int indent = -1, bool sort_keys = false) const;
  // Python ==, with Jinja's undefined == undefined.
  bool equals(const Value& other) const;
  // A short type name for error messages ("string", "list", ...).
  const char* type_name() const;

 private:
  Storage storage_;
};

// Code points of a UTF-8 string (Python indexes and slices strings by code point).
std::vector<std::string_view> split_code_points(std::string_view text);

// Python's str.isspace for one code point.
bool is_python_space(uint32_t code_point);

}  // namespace dshpc::jinja
