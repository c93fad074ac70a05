#include "coordinator/chat_template_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "coordinator/unicode.h"

namespace dshpc::jinja {
namespace {

std::string format_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  std::string text(buffer, result.ptr);
  // Python's repr keeps a ".0" on integral values written without an exponent.
  if (text.find_first_of(".en") == std::string::npos) text += ".0";
  return text;
}

std::string python_string_repr(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char c : s) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c == quote) {
          out += '\\';
          out += c;
        } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
          char hex[8];
          std::snprintf(hex, sizeof(hex), "\\x%02x", static_cast<unsigned char>(c));
          out += hex;
        } else {
          out += c;
        }
    }
  }
  out += quote;
  return out;
}

void append_json_string(const std::string& s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char hex[8];
          std::snprintf(hex, sizeof(hex), "\\u%04x", static_cast<unsigned char>(c));
          *out += hex;
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

Status append_json(const Value& value, int indent, bool sort_keys, int depth, std::string* out) {
  auto newline = [&](int level) {
    if (indent < 0) return;
    out->push_back('\n');
    out->append(static_cast<size_t>(indent * level), ' ');
  };
  // Python's default separators: ", " without indent, "," with it.
  const char* item_separator = indent < 0 ? ", " : ",";
  if (value.is_undefined()) return invalid_argument("tojson: value is undefined");
  if (value.is_none()) {
    *out += "null";
  } else if (value.is_bool()) {
    *out += value.as_bool() ? "true" : "false";
  } else if (value.is_int()) {
    *out += std::to_string(value.as_int());
  } else if (value.is_float()) {
    double d = value.as_float();
    *out += std::isnan(d)   ? "NaN"
            : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity")
                            : format_float(d);
  } else if (value.is_string()) {
    append_json_string(value.as_string(), out);
  } else if (value.is_list()) {
    const List& list = value.as_list();
    out->push_back('[');
    for (size_t i = 0; i < list.size(); ++i) {
      if (i > 0) *out += item_separator;
      newline(depth + 1);
      RETURN_IF_ERROR(append_json(list[i], indent, sort_keys, depth + 1, out));
    }
    if (!list.empty()) newline(depth);
    out->push_back(']');
  } else {
    std::vector<const std::pair<std::string, Value>*> items;
    for (const auto& item : value.as_dict().items) items.push_back(&item);
    if (sort_keys) {
      std::stable_sort(items.begin(), items.end(),
                       [](const auto* a, const auto* b) { return a->first < b->first; });
    }
    out->push_back('{');
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) *out += item_separator;
      newline(depth + 1);
      append_json_string(items[i]->first, out);
      *out += ": ";
      RETURN_IF_ERROR(append_json(items[i]->second, indent, sort_keys, depth + 1, out));
    }
    if (!items.empty()) newline(depth);
    out->push_back('}');
  }
  return ok_status();
}

}  // namespace

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : items) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Dict::set(std::string key, Value value) {
  for (auto& [k, v] : items) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}

Value Value::from_json(const boost::json::value& json) {
  switch (json.kind()) {
    case boost::json::kind::null:
      return Value(None{});
    case boost::json::kind::bool_:
      return Value(json.get_bool());
    case boost::json::kind::int64:
      return Value(json.get_int64());
    case boost::json::kind::uint64:
      return Value(static_cast<int64_t>(json.get_uint64()));
    case boost::json::kind::double_:
      return Value(json.get_double());
    case boost::json::kind::string:
      return Value(std::string(json.get_string()));
    case boost::json::kind::array: {
      List list;
      list.reserve(json.get_array().size());
      for (const auto& item : json.get_array()) list.push_back(from_json(item));
      return Value(std::move(list));
    }
    case boost::json::kind::object: {
      auto dict = std::make_shared<Dict>();
      for (const auto& [key, item] : json.get_object())
        dict->set(std::string(key), from_json(item));
      return Value(std::move(dict));
    }
  }
  return Value();
}

bool Value::truthy() const {
  if (is_bool()) return as_bool();
  if (is_int()) return as_int() != 0;
  if (is_float()) return as_float() != 0.0;
  if (is_string()) return !as_string().empty();
  if (is_list()) return !as_list().empty();
  if (is_dict()) return as_dict().is_namespace || !as_dict().items.empty();
  return false;  // undefined, none
}

std::string Value::to_string() const {
  if (is_undefined()) return "";
  if (is_string()) return as_string();
  return repr();
}

std::string Value::repr() const {
  if (is_undefined()) return "";
  if (is_none()) return "None";
  if (is_bool()) return as_bool() ? "True" : "False";
  if (is_int()) return std::to_string(as_int());
  if (is_float()) return format_float(as_float());
  if (is_string()) return python_string_repr(as_string());
  std::string out;
  if (is_list()) {
    out = "[";
    const List& list = as_list();
    for (size_t i = 0; i < list.size(); ++i) {
      if (i > 0) out += ", ";
      out += list[i].repr();
    }
    return out + "]";
  }
  const Dict& dict = as_dict();
  out = dict.is_namespace ? "<Namespace {" : "{";
  for (size_t i = 0; i < dict.items.size(); ++i) {
    if (i > 0) out += ", ";
    out += python_string_repr(dict.items[i].first) + ": " + dict.items[i].second.repr();
  }
  return out + (dict.is_namespace ? "}>" : "}");
}

StatusOr<std::string> Value::to_json(int indent, bool sort_keys) const {
  std::string out;
  RETURN_IF_ERROR(append_json(*this, indent, sort_keys, 0, &out));
  return out;
}

bool Value::equals(const Value& other) const {
  if ((is_number() || is_bool()) && (other.is_number() || other.is_bool())) {
    auto numeric = [](const Value& v) {
      return v.is_bool() ? (v.as_bool() ? 1.0 : 0.0) : v.as_double();
    };
    if (is_int() && other.is_int()) return as_int() == other.as_int();
    return numeric(*this) == numeric(other);
  }
  if (storage_.index() != other.storage_.index()) return false;
  if (is_undefined() || is_none()) return true;
  if (is_string()) return as_string() == other.as_string();
  if (is_list()) {
    const List& a = as_list();
    const List& b = other.as_list();
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].equals(b[i])) return false;
    }
    return true;
  }
  const Dict& a = as_dict();
  const Dict& b = other.as_dict();
  if (a.is_namespace || b.is_namespace) return &a == &b;
  if (a.items.size() != b.items.size()) return false;
  for (const auto& [key, value] : a.items) {
    const Value* match = b.find(key);
    if (match == nullptr || !value.equals(*match)) return false;
  }
  return true;
}

const char* Value::type_name() const {
  if (is_undefined()) return "undefined";
  if (is_none()) return "none";
  if (is_bool()) return "bool";
  if (is_int()) return "int";
  if (is_float()) return "float";
  if (is_string()) return "string";
  if (is_list()) return "list";
  return as_dict().is_namespace ? "namespace" : "dict";
}

std::vector<std::string_view> split_code_points(std::string_view text) {
  std::vector<std::string_view> points;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t start = pos;
    next_code_point(text, &pos);
    points.push_back(text.substr(start, pos - start));
  }
  return points;
}

bool is_python_space(uint32_t code_point) {
  return is_unicode_whitespace(code_point) || (code_point >= 0x1C && code_point <= 0x1F);
}

}  // namespace dshpc::jinja
