#include "coordinator/chat_template_builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>

#include "coordinator/unicode.h"

namespace dshpc::jinja {
namespace {

Status type_error(std::string what) {
  return invalid_argument(std::move(what));
}

// Positional argument `index`, else keyword `name`, else nullptr.
const Value* argument(const Args& args, const KeywordArgs& keyword_args, size_t index,
                      std::string_view name) {
  if (index < args.size()) return &args[index];
  for (const auto& [key, value] : keyword_args) {
    if (key == name) return &value;
  }
  return nullptr;
}

StatusOr<std::string> string_argument(const Args& args, const KeywordArgs& keyword_args,
                                      size_t index, std::string_view name,
                                      std::string_view function) {
  const Value* value = argument(args, keyword_args, index, name);
  if (value == nullptr || !value->is_string()) {
    return type_error(std::string(function) + ": argument '" + std::string(name) +
                      "' must be a string");
  }
  return value->as_string();
}

bool in_set(uint32_t cp, const std::string* chars) {
  if (chars == nullptr) return is_python_space(cp);
  size_t pos = 0;
  while (pos < chars->size()) {
    if (next_code_point(*chars, &pos) == cp) return true;
  }
  return false;
}

// Python str.strip / lstrip / rstrip; `chars` nullptr strips whitespace.
std::string strip(const std::string& s, const std::string* chars, bool left, bool right) {
  size_t begin = 0, end = s.size();
  while (left && begin < end) {
    size_t next = begin;
    if (!in_set(next_code_point(s, &next), chars)) break;
    begin = next;
  }
  while (right && end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t cursor = start;
    if (!in_set(next_code_point(s, &cursor), chars)) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

// Python str.split(sep, maxsplit); a missing sep splits on whitespace runs.
List split(const std::string& s, const std::string* sep, int64_t max_split) {
  List parts;
  if (sep == nullptr) {
    size_t pos = 0;
    while (pos < s.size()) {
      size_t cursor = pos;
      while (cursor < s.size()) {  // skip whitespace
        size_t next = cursor;
        if (!is_python_space(next_code_point(s, &next))) break;
        cursor = next;
      }
      if (cursor >= s.size()) break;
      if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
        parts.push_back(Value(strip(s.substr(cursor), nullptr, false, true)));
        return parts;
      }
      size_t word_end = cursor;
      while (word_end < s.size()) {
        size_t next = word_end;
        if (is_python_space(next_code_point(s, &next))) break;
        word_end = next;
      }
      parts.push_back(Value(s.substr(cursor, word_end - cursor)));
      pos = word_end;
    }
    return parts;
  }
  size_t start = 0;
  while (max_split < 0 || static_cast<int64_t>(parts.size()) < max_split) {
    size_t hit = s.find(*sep, start);
    if (hit == std::string::npos) break;
    parts.push_back(Value(s.substr(start, hit - start)));
    start = hit + sep->size();
  }
  parts.push_back(Value(s.substr(start)));
  return parts;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to,
                        int64_t count) {
  if (from.empty()) return s;
  std::string out;
  size_t start = 0;
  for (int64_t n = 0; count < 0 || n < count; ++n) {
    size_t hit = s.find(from, start);
    if (hit == std::string::npos) break;
    out.append(s, start, hit - start).append(to);
    start = hit + from.size();
  }
  return out.append(s, start, std::string::npos);
}

std::string ascii_case(std::string s, bool upper) {
  for (char& c : s) c = static_cast<char>(upper ? std::toupper(c) : std::tolower(c));
  return s;
}

std::string title_case(std::string s) {
  bool start = true;
  for (char& c : s) {
    bool alpha = std::isalpha(static_cast<unsigned char>(c)) != 0;
    if (alpha) c = static_cast<char>(start ? std::toupper(c) : std::tolower(c));
    start = !alpha;
  }
  return s;
}

int64_t length_of(const Value& value) {
  if (value.is_string()) return static_cast<int64_t>(split_code_points(value.as_string()).size());
  if (value.is_list()) return static_cast<int64_t>(value.as_list().size());
  if (value.is_dict()) return static_cast<int64_t>(value.as_dict().items.size());
  return -1;
}

bool contains(const Value& container, const Value& item, Status* error) {
  if (container.is_string()) {
    if (!item.is_string()) {
      *error = type_error("'in <string>' needs a string on the left, not " +
                          std::string(item.type_name()));
      return false;
    }
    return container.as_string().find(item.as_string()) != std::string::npos;
  }
  if (container.is_list()) {
    for (const Value& element : container.as_list()) {
      if (element.equals(item)) return true;
    }
    return false;
  }
  if (container.is_dict()) return item.is_string() && container.as_dict().find(item.as_string());
  *error = type_error(std::string("'in' needs a string, list or dict on the right, not ") +
                      container.type_name());
  return false;
}

// Python floor division and modulo on integers.
int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

StatusOr<Value> arithmetic(std::string_view op, const Value& a, const Value& b) {
  auto is_numeric = [](const Value& v) { return v.is_number() || v.is_bool(); };
  auto as_int = [](const Value& v) {
    return v.is_bool() ? static_cast<int64_t>(v.as_bool()) : v.as_int();
  };
  auto as_real = [](const Value& v) {
    return v.is_bool() ? static_cast<double>(v.as_bool()) : v.as_double();
  };
  if (!is_numeric(a) || !is_numeric(b)) {
    return type_error("unsupported operand types for " + std::string(op) + ": " + a.type_name() +
                      " and " + b.type_name());
  }
  bool integers = !a.is_float() && !b.is_float();
  if (op == "/") {
    if (as_real(b) == 0.0) return type_error("division by zero");
    return Value(as_real(a) / as_real(b));
  }
  if (op == "**") {
    if (integers && as_int(b) >= 0) {
      int64_t result = 1;
      for (int64_t i = 0; i < as_int(b); ++i) result *= as_int(a);
      return Value(result);
    }
    return Value(std::pow(as_real(a), as_real(b)));
  }
  if (integers) {
    int64_t x = as_int(a), y = as_int(b);
    if (op == "+") return Value(x + y);
    if (op == "-") return Value(x - y);
    if (op == "*") return Value(x * y);
    if (y == 0) return type_error("integer division or modulo by zero");
    if (op == "//") return Value(floor_div(x, y));
    return Value(x - floor_div(x, y) * y);  // "%"
  }
  double x = as_real(a), y = as_real(b);
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (y == 0.0) return type_error("float division or modulo by zero");
  if (op == "//") return Value(std::floor(x / y));
  return Value(x - std::floor(x / y) * y);
}

StatusOr<bool> less_than(const Value& a, const Value& b) {
  if ((a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool())) {
    auto real = [](const Value& v) {
      return v.is_bool() ? static_cast<double>(v.as_bool()) : v.as_double();
    };
    if (a.is_int() && b.is_int()) return a.as_int() < b.as_int();
    return real(a) < real(b);
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();  // code point order
  return type_error(std::string("cannot order ") + a.type_name() + " and " + b.type_name());
}

// Python's rules for resolving slice bounds against a length.
void resolve_slice(int64_t length, const Value& start_value, const Value& stop_value, int64_t step,
                   int64_t* start, int64_t* stop) {
  auto clamp = [&](const Value& v, int64_t fallback) {
    if (!v.is_int()) return fallback;
    int64_t i = v.as_int();
    if (i < 0) i += length;
    if (step > 0) return std::clamp<int64_t>(i, 0, length);
    return std::clamp<int64_t>(i, -1, length - 1);
  };
  *start = clamp(start_value, step > 0 ? 0 : length - 1);
  *stop = clamp(stop_value, step > 0 ? length : -1);
}

StatusOr<Value> select_items(const Value& input, const Args& args, bool by_attribute, bool keep) {
  ASSIGN_OR_RETURN(List items, iterate(input));
  size_t first_test_arg = by_attribute ? 1 : 0;
  if (by_attribute && (args.empty() || !args[0].is_string())) {
    return type_error("selectattr/rejectattr need an attribute name");
  }
  List selected;
  for (const Value& item : items) {
    Value subject = item;
    if (by_attribute) {
      ASSIGN_OR_RETURN(subject, attribute(item, args[0].as_string()));
    }
    bool passed;
    if (args.size() > first_test_arg) {
      if (!args[first_test_arg].is_string()) return type_error("test name must be a string");
      Args test_args(args.begin() + static_cast<long>(first_test_arg) + 1, args.end());
      ASSIGN_OR_RETURN(passed, apply_test(args[first_test_arg].as_string(), subject, test_args));
    } else {
      passed = subject.truthy();
    }
    if (passed == keep) selected.push_back(item);
  }
  return Value(std::move(selected));
}

}  // namespace

StatusOr<Value> binary_operator(std::string_view op, const Value& a, const Value& b) {
  if (op == "~") return Value(a.to_string() + b.to_string());
  if (op == "==") return Value(a.equals(b));
  if (op == "!=") return Value(!a.equals(b));
  if (op == "<" || op == ">" || op == "<=" || op == ">=") {
    // a < b, b < a, !(b < a), !(a < b).
    bool swapped = op == ">" || op == "<=";
    ASSIGN_OR_RETURN(bool less, swapped ? less_than(b, a) : less_than(a, b));
    return Value(op == "<" || op == ">" ? less : !less);
  }
  if (op == "in" || op == "not in") {
    Status error;
    bool found = contains(b, a, &error);
    if (!error.ok()) return error;
    return Value(op == "in" ? found : !found);
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list()) {
      List joined = a.as_list();
      joined.insert(joined.end(), b.as_list().begin(), b.as_list().end());
      return Value(std::move(joined));
    }
  }
  if (op == "*" && (a.is_string() || a.is_list()) && b.is_int()) {
    if (a.is_string()) {
      std::string out;
      for (int64_t i = 0; i < b.as_int(); ++i) out += a.as_string();
      return Value(std::move(out));
    }
    List out;
    for (int64_t i = 0; i < b.as_int(); ++i)
      out.insert(out.end(), a.as_list().begin(), a.as_list().end());
    return Value(std::move(out));
  }
  if (a.is_undefined() || b.is_undefined()) {
    return type_error("cannot apply '" + std::string(op) + "' to " + a.type_name() + " and " +
                      b.type_name() + " (a missing variable or field is undefined)");
  }
  return arithmetic(op, a, b);
}

StatusOr<Value> subscript(const Value& object, const Value& key) {
  if (object.is_dict()) {
    if (!key.is_string()) return Value();
    const Value* found = object.as_dict().find(key.as_string());
    return found != nullptr ? *found : Value();
  }
  if (object.is_list() || object.is_string()) {
    if (!key.is_int()) {
      return type_error(std::string(object.type_name()) + " indices must be integers, not " +
                        key.type_name());
    }
    int64_t index = key.as_int();
    if (object.is_list()) {
      auto length = static_cast<int64_t>(object.as_list().size());
      if (index < 0) index += length;
      if (index < 0 || index >= length) return Value();
      return object.as_list()[static_cast<size_t>(index)];
    }
    std::vector<std::string_view> points = split_code_points(object.as_string());
    auto length = static_cast<int64_t>(points.size());
    if (index < 0) index += length;
    if (index < 0 || index >= length) return Value();
    return Value(std::string(points[static_cast<size_t>(index)]));
  }
  if (object.is_undefined()) {
    return type_error("cannot index an undefined value with " + key.repr());
  }
  return type_error(std::string("cannot index a value of type ") + object.type_name());
}

StatusOr<Value> attribute(const Value& object, const std::string& name) {
  if (object.is_dict()) {
    const Value* found = object.as_dict().find(name);
    return found != nullptr ? *found : Value();
  }
  if (object.is_undefined()) {
    return type_error("cannot read attribute '" + name + "' of an undefined value");
  }
  if (object.is_none()) return type_error("cannot read attribute '" + name + "' of none");
  return Value();
}

StatusOr<Value> slice(const Value& object, const Value& start_value, const Value& stop_value,
                      const Value& step_value) {
  int64_t step = step_value.is_int() ? step_value.as_int() : 1;
  if (step == 0) return type_error("slice step cannot be zero");
  int64_t start, stop;
  if (object.is_list()) {
    const List& list = object.as_list();
    resolve_slice(static_cast<int64_t>(list.size()), start_value, stop_value, step, &start, &stop);
    List out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      out.push_back(list[static_cast<size_t>(i)]);
    }
    return Value(std::move(out));
  }
  if (object.is_string()) {
    std::vector<std::string_view> points = split_code_points(object.as_string());
    resolve_slice(static_cast<int64_t>(points.size()), start_value, stop_value, step, &start,
                  &stop);
    std::string out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      out += points[static_cast<size_t>(i)];
    }
    return Value(std::move(out));
  }
  return type_error(std::string("cannot slice a value of type ") + object.type_name());
}

StatusOr<List> iterate(const Value& value) {
  if (value.is_list()) return value.as_list();
  if (value.is_undefined()) return List();
  if (value.is_dict()) {
    List keys;
    for (const auto& item : value.as_dict().items) keys.push_back(Value(item.first));
    return keys;
  }
  if (value.is_string()) {
    List chars;
    for (std::string_view point : split_code_points(value.as_string())) {
      chars.push_back(Value(std::string(point)));
    }
    return chars;
  }
  return type_error(std::string("a value of type ") + value.type_name() + " is not iterable");
}

StatusOr<Value> apply_filter(std::string_view name, const Value& input, const Args& args,
                             const KeywordArgs& keyword_args) {
  auto arg = [&](size_t index, std::string_view key) {
    return argument(args, keyword_args, index, key);
  };
  if (name == "tojson") {
    const Value* indent = argument({}, keyword_args, 0, "indent");
    const Value* sort_keys = argument({}, keyword_args, 0, "sort_keys");
    const Value* ensure_ascii = argument({}, keyword_args, 0, "ensure_ascii");
    if (ensure_ascii != nullptr && ensure_ascii->truthy()) {
      return unimplemented("tojson(ensure_ascii=true) is not supported");
    }
    ASSIGN_OR_RETURN(std::string json, input.to_json(indent != nullptr && indent->is_int()
                                                         ? static_cast<int>(indent->as_int())
                                                         : -1,
                                                     sort_keys != nullptr && sort_keys->truthy()));
    return Value(std::move(json));
  }
  if (name == "safe") return input;
  if (name == "string") return Value(input.to_string());
  if (name == "length" || name == "count") {
    int64_t length = length_of(input);
    if (length < 0) return type_error(std::string("length of ") + input.type_name());
    return Value(length);
  }
  if (name == "default" || name == "d") {
    const Value* fallback = arg(0, "default_value");
    const Value* boolean = arg(1, "boolean");
    bool use_fallback =
        input.is_undefined() || (boolean != nullptr && boolean->truthy() && !input.truthy());
    if (!use_fallback) return input;
    return fallback != nullptr ? *fallback : Value(std::string());
  }
  if (name == "first" || name == "last") {
    ASSIGN_OR_RETURN(List items, iterate(input));
    if (items.empty()) return Value();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    ASSIGN_OR_RETURN(List items, iterate(input));
    return Value(std::move(items));
  }
  if (name == "reverse") {
    if (input.is_string()) {
      std::vector<std::string_view> points = split_code_points(input.as_string());
      std::string out;
      for (auto it = points.rbegin(); it != points.rend(); ++it) out += *it;
      return Value(std::move(out));
    }
    ASSIGN_OR_RETURN(List items, iterate(input));
    std::reverse(items.begin(), items.end());
    return Value(std::move(items));
  }
  if (name == "items") {
    if (!input.is_dict()) return type_error("items filter needs a dict");
    return call_method(input, "items", {}, {});
  }
  if (name == "join") {
    ASSIGN_OR_RETURN(List items, iterate(input));
    const Value* separator = arg(0, "d");
    const Value* attribute_name = arg(1, "attribute");
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0 && separator != nullptr) out += separator->to_string();
      Value item = items[i];
      if (attribute_name != nullptr) {
        ASSIGN_OR_RETURN(item, attribute(item, attribute_name->to_string()));
      }
      out += item.to_string();
    }
    return Value(std::move(out));
  }
  if (name == "map") {
    ASSIGN_OR_RETURN(List items, iterate(input));
    const Value* attribute_name = argument({}, keyword_args, 0, "attribute");
    List out;
    for (const Value& item : items) {
      if (attribute_name != nullptr) {
        ASSIGN_OR_RETURN(Value mapped, attribute(item, attribute_name->to_string()));
        out.push_back(std::move(mapped));
      } else if (!args.empty() && args[0].is_string()) {
        Args rest(args.begin() + 1, args.end());
        ASSIGN_OR_RETURN(Value mapped, apply_filter(args[0].as_string(), item, rest, {}));
        out.push_back(std::move(mapped));
      } else {
        return type_error("map needs attribute= or a filter name");
      }
    }
    return Value(std::move(out));
  }
  if (name == "selectattr" || name == "rejectattr") {
    return select_items(input, args, true, name == "selectattr");
  }
  if (name == "select" || name == "reject")
    return select_items(input, args, false, name == "select");
  if (name == "int") {
    if (input.is_int()) return input;
    if (input.is_float()) return Value(static_cast<int64_t>(input.as_float()));
    if (input.is_bool()) return Value(int64_t{input.as_bool()});
    if (input.is_string()) {
      std::string text = strip(input.as_string(), nullptr, true, true);
      char* end = nullptr;
      long long parsed = std::strtoll(text.c_str(), &end, 10);
      if (!text.empty() && end == text.c_str() + text.size()) return Value(int64_t{parsed});
    }
    const Value* fallback = arg(0, "default");
    return fallback != nullptr ? *fallback : Value(int64_t{0});
  }
  if (name == "float") {
    if (input.is_number()) return Value(input.as_double());
    if (input.is_string()) {
      char* end = nullptr;
      double parsed = std::strtod(input.as_string().c_str(), &end);
      if (end != input.as_string().c_str()) return Value(parsed);
    }
    return Value(0.0);
  }
  if (name == "abs") {
    if (input.is_int()) return Value(input.as_int() < 0 ? -input.as_int() : input.as_int());
    if (input.is_float()) return Value(std::fabs(input.as_float()));
    return type_error("abs needs a number");
  }
  // The string filters convert their input with str() first, as Jinja's soft_str does.
  const std::string s = input.to_string();
  if (name == "trim") {
    const Value* chars = arg(0, "chars");
    return Value(strip(s, chars != nullptr && chars->is_string() ? &chars->as_string() : nullptr,
                       true, true));
  }
  if (name == "lower") return Value(ascii_case(s, false));
  if (name == "upper") return Value(ascii_case(s, true));
  if (name == "title") return Value(title_case(s));
  if (name == "capitalize") {
    std::string out = ascii_case(s, false);
    if (!out.empty()) out[0] = static_cast<char>(std::toupper(out[0]));
    return Value(std::move(out));
  }
  if (name == "replace") {
    ASSIGN_OR_RETURN(std::string from, string_argument(args, keyword_args, 0, "old", name));
    ASSIGN_OR_RETURN(std::string to, string_argument(args, keyword_args, 1, "new", name));
    const Value* count = arg(2, "count");
    return Value(
        replace_all(s, from, to, count != nullptr && count->is_int() ? count->as_int() : -1));
  }
  return unimplemented("filter '" + std::string(name) + "' is not supported");
}

StatusOr<bool> apply_test(std::string_view name, const Value& v, const Args& args) {
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "mapping") return v.is_dict();
  if (name == "sequence") return v.is_list() || v.is_string() || v.is_dict();
  if (name == "iterable") return v.is_list() || v.is_string() || v.is_dict();
  if (name == "lower") return v.is_string() && v.as_string() == ascii_case(v.as_string(), false);
  if (name == "upper") return v.is_string() && v.as_string() == ascii_case(v.as_string(), true);
  if (name == "odd" || name == "even") {
    if (!v.is_int()) return type_error("odd/even need an integer");
    return (v.as_int() % 2 != 0) == (name == "odd");
  }
  if (args.empty()) {
    return unimplemented("test '" + std::string(name) +
                         "' is not supported (or needs an argument)");
  }
  const Value& other = args[0];
  if (name == "eq" || name == "equalto" || name == "==" || name == "sameas") return v.equals(other);
  if (name == "ne" || name == "!=") return !v.equals(other);
  if (name == "in") {
    ASSIGN_OR_RETURN(Value found, binary_operator("in", v, other));
    return found.truthy();
  }
  if (name == "lt" || name == "<") return less_than(v, other);
  if (name == "gt" || name == ">") return less_than(other, v);
  if (name == "le" || name == "<=") {
    ASSIGN_OR_RETURN(bool greater, less_than(other, v));
    return !greater;
  }
  if (name == "ge" || name == ">=") {
    ASSIGN_OR_RETURN(bool less, less_than(v, other));
    return !less;
  }
  if (name == "divisibleby") {
    if (!v.is_int() || !other.is_int() || other.as_int() == 0) {
      return type_error("divisibleby needs integers");
    }
    return v.as_int() % other.as_int() == 0;
  }
  return unimplemented("test '" + std::string(name) + "' is not supported");
}

StatusOr<Value> call_method(const Value& object, std::string_view name, const Args& args,
                            const KeywordArgs& keyword_args) {
  auto arg = [&](size_t index, std::string_view key) {
    return argument(args, keyword_args, index, key);
  };
  if (object.is_dict() && !object.as_dict().is_namespace) {
    const Dict& dict = object.as_dict();
    if (name == "items" || name == "keys" || name == "values") {
      List out;
      for (const auto& [key, value] : dict.items) {
        if (name == "items") out.push_back(Value(List{Value(key), value}));
        if (name == "keys") out.push_back(Value(key));
        if (name == "values") out.push_back(value);
      }
      return Value(std::move(out));
    }
    if (name == "get") {
      const Value* key = arg(0, "key");
      const Value* fallback = arg(1, "default");
      const Value* found =
          key != nullptr && key->is_string() ? dict.find(key->as_string()) : nullptr;
      if (found != nullptr) return *found;
      return fallback != nullptr ? *fallback : Value(Value::None{});
    }
  }
  if (object.is_string()) {
    const std::string& s = object.as_string();
    const Value* first = arg(0, "");
    const std::string* first_string =
        first != nullptr && first->is_string() ? &first->as_string() : nullptr;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      return Value(strip(s, first_string, name != "rstrip", name != "lstrip"));
    }
    if (name == "split") {
      const Value* max_split = arg(1, "maxsplit");
      return Value(split(s, first_string,
                         max_split != nullptr && max_split->is_int() ? max_split->as_int() : -1));
    }
    if (name == "startswith" || name == "endswith") {
      List candidates;
      if (first != nullptr && first->is_list()) candidates = first->as_list();
      if (first_string != nullptr) candidates.push_back(*first);
      for (const Value& candidate : candidates) {
        if (!candidate.is_string()) continue;
        const std::string& c = candidate.as_string();
        bool hit = c.size() <= s.size() &&
                   (name == "startswith" ? s.compare(0, c.size(), c) == 0
                                         : s.compare(s.size() - c.size(), c.size(), c) == 0);
        if (hit) return Value(true);
      }
      return Value(false);
    }
    if (name == "lower" || name == "upper" || name == "title" || name == "capitalize" ||
        name == "replace") {
      return apply_filter(name, object, args, keyword_args);
    }
    if (name == "find" && first_string != nullptr) {
      size_t hit = s.find(*first_string);
      if (hit == std::string::npos) return Value(int64_t{-1});
      return Value(static_cast<int64_t>(split_code_points(s.substr(0, hit)).size()));
    }
    if (name == "join" && first != nullptr) {
      ASSIGN_OR_RETURN(List items, iterate(*first));
      std::string out;
      for (size_t i = 0; i < items.size(); ++i) out += (i > 0 ? s : "") + items[i].to_string();
      return Value(std::move(out));
    }
  }
  return type_error(std::string("a ") + object.type_name() + " value has no method '" +
                    std::string(name) + "'");
}

StatusOr<Value> call_global(std::string_view name, const Args& args,
                            const KeywordArgs& keyword_args) {
  if (name == "namespace" || name == "dict") {
    auto dict = std::make_shared<Dict>();
    dict->is_namespace = name == "namespace";
    if (!args.empty() && args[0].is_dict()) dict->items = args[0].as_dict().items;
    for (const auto& [key, value] : keyword_args) dict->set(key, value);
    return Value(std::move(dict));
  }
  if (name == "range") {
    int64_t start = 0, stop = 0, step = 1;
    for (const Value& a : args) {
      if (!a.is_int()) return type_error("range needs integers");
    }
    if (args.size() == 1) {
      stop = args[0].as_int();
    } else if (args.size() >= 2) {
      start = args[0].as_int();
      stop = args[1].as_int();
      if (args.size() >= 3) step = args[2].as_int();
    }
    if (step == 0) return type_error("range step cannot be zero");
    List out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (out.size() >= 1'000'000) return resource_exhausted("range is too long");
      out.push_back(Value(i));
    }
    return Value(std::move(out));
  }
  if (name == "raise_exception") {
    return invalid_argument("the chat template raised: " +
                            (args.empty() ? std::string() : args[0].to_string()));
  }
  if (name == "strftime_now") {
    if (args.empty() || !args[0].is_string()) return type_error("strftime_now needs a format");
    std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buffer[256];
    size_t length = std::strftime(buffer, sizeof(buffer), args[0].as_string().c_str(), &local);
    return Value(std::string(buffer, length));
  }
  return unimplemented("function '" + std::string(name) + "' is not supported");
}

}  // namespace dshpc::jinja
