// Operators, filters, tests, methods and global functions of the chat-template interpreter.
// Internal to coordinator/chat_template*. Errors carry no position; the evaluator adds it.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "coordinator/chat_template_value.h"

namespace dshpc::jinja {

using Args = std::vector<Value>;
using KeywordArgs = std::vector<std::pair<std::string, Value>>;

// Arithmetic, "~", comparisons, "in" and "not in" ("and" / "or" short-circuit in the evaluator).
StatusOr<Value> binary_operator(std::string_view op, const Value& left, const Value& right);

// x[key] and x.name: a missing key or index gives undefined; indexing undefined or none fails.
StatusOr<Value> subscript(const Value& object, const Value& key);
StatusOr<Value> attribute(const Value& object, const std::string& name);
// x[start:stop:step] on a list or string (Python semantics, negative bounds count from the end).
StatusOr<Value> slice(const Value& object, const Value& start, const Value& stop,
                      const Value& step);

// The items a for loop visits: a list's elements, a dict's keys, a string's characters;
// undefined visits nothing (as Jinja's default Undefined does).
StatusOr<List> iterate(const Value& value);

StatusOr<Value> apply_filter(std::string_view name, const Value& input, const Args& args,
                             const KeywordArgs& keyword_args);
StatusOr<bool> apply_test(std::string_view name, const Value& input, const Args& args);
StatusOr<Value> call_method(const Value& object, std::string_view name, const Args& args,
                            const KeywordArgs& keyword_args);
// namespace(), range(), dict(), raise_exception() and strftime_now(), as transformers provides.
StatusOr<Value> call_global(std::string_view name, const Args& args,
                            const KeywordArgs& keyword_args);

}  // namespace dshpc::jinja
