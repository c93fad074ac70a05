// Request parsing and validation for the OpenAI-compatible API (responses: openai_response.cpp).
#include "coordinator/openai_api.h"

#include <cmath>
#include <limits>

#include "common/json_fields.h"
#include "coordinator/unicode.h"

namespace dshpc {

namespace json = boost::json;

ApiError bad_request(std::string message, std::string param) {
  ApiError error;
  error.http_status = 400;
  error.message = std::move(message);
  error.param = std::move(param);
  return error;
}

ApiError api_error_from_status(const Status& status) {
  ApiError error;
  error.message = status.message().empty() ? status.to_string() : status.message();
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      error.http_status = 400;
      break;
    case StatusCode::kResourceExhausted:
      error.http_status = 429;
      error.type = "rate_limit_error";
      error.code = "rate_limit_exceeded";
      break;
    case StatusCode::kUnavailable:
      error.http_status = 503;
      error.type = "server_error";
      error.code = "service_unavailable";
      break;
    default:
      error.http_status = 500;
      error.type = "server_error";
      error.code = "internal_error";
      break;
  }
  return error;
}

json::object error_body(const ApiError& error) {
  // Messages quote what the client sent (a path, a method, a model name), which need not be
  // UTF-8; Boost.JSON would copy such bytes verbatim and make the body invalid JSON.
  json::object inner;
  inner["message"] = utf8_lossy(error.message);
  inner["type"] = error.type;
  inner["param"] =
      error.param.empty() ? json::value(nullptr) : json::value(utf8_lossy(error.param));
  inner["code"] = error.code.empty() ? json::value(nullptr) : json::value(error.code);
  json::object body;
  body["error"] = std::move(inner);
  return body;
}

std::string error_json(const ApiError& error) {
  return json::serialize(error_body(error));
}

ApiResult<json::object> parse_request_body(std::string_view body) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return bad_request("the request body is empty; expected a JSON object");
  }
  StatusOr<json::value> parsed = parse_json(body, "request body");
  if (!parsed.ok()) return bad_request(parsed.status().message());
  if (!parsed->is_object()) return bad_request("the request body must be a JSON object");
  return std::move(parsed->as_object());
}

namespace {

std::string describe(const json::value& value) {
  std::string text = json::serialize(value);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

const json::value* find(const json::object& object, std::string_view key) {
  auto it = object.find(key);
  if (it == object.end() || it->value().is_null()) return nullptr;
  return &it->value();
}

// Typed field readers: absent or null leaves `out` unchanged; a wrong type or a bad value is an
// ApiError naming the field. They return false on error and keep the first error.
class Fields {
 public:
  explicit Fields(const json::object& object) : object_(object) {}

  bool failed() const { return error_.has_value(); }
  ApiError take_error() { return std::move(*error_); }
  bool fail(ApiError error) {
    if (!error_) error_ = std::move(error);
    return false;
  }
  bool fail(const std::string& key, const std::string& what) {
    return fail(bad_request("'" + key + "' " + what, key));
  }
  const json::value* get(std::string_view key) const { return find(object_, key); }

  bool number(const std::string& key, double lo, double hi, bool lo_open, bool hi_open,
              float* out) {
    const json::value* v = get(key);
    if (v == nullptr) return true;
    double d;
    if (v->is_double()) {
      d = v->get_double();
    } else if (v->is_int64()) {
      d = static_cast<double>(v->get_int64());
    } else if (v->is_uint64()) {
      d = static_cast<double>(v->get_uint64());
    } else {
      return fail(key, "must be a number, got " + describe(*v));
    }
    // The value is stored as a float: a double beyond the float range would become infinite
    // (and the conversion is undefined), and one too close to an open bound would round onto
    // it (1e-50 for top_p becomes 0), so the range is also checked on the float that is kept.
    const bool representable =
        std::isfinite(d) && std::fabs(d) <= static_cast<double>(std::numeric_limits<float>::max());
    const double kept = representable ? static_cast<double>(static_cast<float>(d)) : d;
    // Both the value sent and the float kept must be in range (2.0000001 is above 2 though it
    // rounds to 2; 1e-50 is above an open 0 though it rounds onto it).
    const bool below = lo_open ? !(d > lo && kept > lo) : !(d >= lo && kept >= lo);
    const bool above = hi_open ? !(d < hi && kept < hi) : !(d <= hi && kept <= hi);
    if (std::isfinite(d) && !representable) {
      return fail(key, "is too large (the largest accepted magnitude is " +
                           format(std::numeric_limits<float>::max()) + "), got " + describe(*v));
    }
    if (!representable || below || above) {
      std::string range = std::string(lo_open ? "(" : "[") + format(lo) + ", " +
                          (std::isinf(hi) ? std::string("inf") : format(hi)) +
                          (hi_open ? ")" : "]");
      return fail(key, "must be in " + range + ", got " + describe(*v));
    }
    *out = static_cast<float>(kept);
    return true;
  }

  bool integer(const std::string& key, int64_t lo, int64_t hi, std::optional<int64_t>* out) {
    const json::value* v = get(key);
    if (v == nullptr) return true;
    int64_t i;
    if (!to_integer(*v, &i)) return fail(key, "must be an integer, got " + describe(*v));
    if (i < lo || i > hi) {
      return fail(key, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                           describe(*v));
    }
    *out = i;
    return true;
  }

  bool boolean(const std::string& key, bool* out) {
    const json::value* v = get(key);
    if (v == nullptr) return true;
    if (!v->is_bool()) return fail(key, "must be true or false, got " + describe(*v));
    *out = v->get_bool();
    return true;
  }

  static bool to_integer(const json::value& v, int64_t* out) {
    if (v.is_int64()) {
      *out = v.get_int64();
      return true;
    }
    if (v.is_uint64() && v.get_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
      *out = static_cast<int64_t>(v.get_uint64());
      return true;
    }
    if (v.is_double()) {
      const double d = v.get_double();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
        *out = static_cast<int64_t>(d);
        return true;
      }
    }
    return false;
  }

  static std::string format(double d) {
    json::value v(d);
    if (d == std::floor(d) && std::fabs(d) < 1e15) v = static_cast<int64_t>(d);
    return json::serialize(v);
  }

 private:
  const json::object& object_;
  std::optional<ApiError> error_;
};

// "timeout": seconds, a number > 0, at most limits.max_timeout_s when that is set; absent: the
// server's default (or its maximum). Sets p->timeout_seconds to the deadline that applies.
bool parse_timeout(Fields& f, const ApiLimits& limits, GenerationParams* p) {
  float requested = 0.0f;
  if (!f.number("timeout", 0.0, kMaxRequestTimeoutSeconds, true, false, &requested)) return false;
  if (requested > 0.0f) {
    if (limits.max_timeout_s > 0.0 && requested > limits.max_timeout_s) {
      return f.fail("timeout", "must be at most " + Fields::format(limits.max_timeout_s) +
                                   " seconds (this server's maximum), got " +
                                   describe(*f.get("timeout")));
    }
    p->timeout_seconds = requested;
  } else if (limits.default_timeout_s > 0.0) {
    p->timeout_seconds = limits.default_timeout_s;
  } else if (limits.max_timeout_s > 0.0) {
    p->timeout_seconds = limits.max_timeout_s;
  }
  return true;
}

// The fields both endpoints share: sampling, stop, n, stream, max_tokens, timeout.
bool parse_common(Fields& f, const ApiLimits& limits, GenerationParams* p) {
  SamplingOptions& s = p->sampling;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  f.number("temperature", 0.0, 2.0, false, false, &s.temperature);
  f.number("top_p", 0.0, 1.0, true, false, &s.top_p);
  f.number("presence_penalty", -2.0, 2.0, false, false, &s.presence_penalty);
  f.number("frequency_penalty", -2.0, 2.0, false, false, &s.frequency_penalty);
  f.number("repetition_penalty", 0.0, kInf, true, true, &s.repetition_penalty);
  if (f.failed()) return false;

  std::optional<int64_t> top_k;
  if (!f.integer("top_k", -1, std::numeric_limits<int32_t>::max(), &top_k)) return false;
  if (top_k) s.top_k = *top_k <= 0 ? 0 : *top_k;  // -1 and 0 both mean "off"

  if (const json::value* seed = f.get("seed")) {
    int64_t value;
    if (seed->is_uint64()) {
      s.seed = seed->get_uint64();
    } else if (Fields::to_integer(*seed, &value)) {
      s.seed = static_cast<uint64_t>(value);
    } else {
      return f.fail("seed", "must be an integer, got " + describe(*seed));
    }
  }

  std::optional<int64_t> n;
  if (!f.integer("n", 1, limits.max_n, &n)) return false;
  if (n) p->n = static_cast<int>(*n);

  if (!f.boolean("ignore_eos", &s.ignore_eos)) return false;

  // max_completion_tokens is the newer chat name; it wins when both are given.
  std::optional<int64_t> max_tokens, max_completion_tokens;
  if (!f.integer("max_tokens", 1, std::numeric_limits<int32_t>::max(), &max_tokens)) return false;
  if (p->kind == ApiKind::kChat &&
      !f.integer("max_completion_tokens", 1, std::numeric_limits<int32_t>::max(),
                 &max_completion_tokens)) {
    return false;
  }
  p->max_tokens = max_completion_tokens ? max_completion_tokens : max_tokens;

  if (const json::value* stop = f.get("stop")) {
    if (stop->is_string()) {
      p->stop.emplace_back(stop->get_string());
    } else if (stop->is_array()) {
      for (const json::value& entry : stop->get_array()) {
        if (!entry.is_string()) {
          return f.fail("stop", "must be a string or a list of strings, got " + describe(*stop));
        }
        p->stop.emplace_back(entry.get_string());
      }
    } else {
      return f.fail("stop", "must be a string or a list of strings, got " + describe(*stop));
    }
    if (static_cast<int>(p->stop.size()) > limits.max_stop_strings) {
      return f.fail("stop", "may hold at most " + std::to_string(limits.max_stop_strings) +
                                " strings, got " + std::to_string(p->stop.size()));
    }
    for (const std::string& entry : p->stop) {
      if (entry.empty()) return f.fail("stop", "must not contain an empty string");
    }
  }

  if (const json::value* ids = f.get("stop_token_ids")) {
    ApiResult<std::vector<int32_t>> parsed = parse_token_id_array(*ids, "stop_token_ids");
    if (!parsed.ok()) return f.fail(parsed.error());
    s.stop_token_ids = std::move(parsed.value());
  }

  if (!parse_timeout(f, limits, p)) return false;

  if (!f.boolean("stream", &p->stream)) return false;
  if (const json::value* options = f.get("stream_options")) {
    if (!options->is_object()) {
      return f.fail("stream_options", "must be an object, got " + describe(*options));
    }
    if (!p->stream) return f.fail("stream_options", "is only allowed when 'stream' is true");
    Fields o(options->get_object());
    if (!o.boolean("include_usage", &p->include_usage)) {
      return f.fail(bad_request("'stream_options.include_usage' must be true or false",
                                "stream_options.include_usage"));
    }
  }
  return !f.failed();
}

// Chat content: a string, or a list of {"type": "text", "text": ...} parts joined with "\n".
bool normalise_content(Fields& f, const json::value& content, size_t index, json::value* out) {
  const std::string param = "messages[" + std::to_string(index) + "].content";
  if (content.is_string()) {
    *out = content;
    return true;
  }
  if (!content.is_array()) {
    return f.fail(bad_request(
        "'" + param + "' must be a string or a list of content parts, got " + describe(content),
        param));
  }
  std::string joined;
  size_t part_index = 0;
  for (const json::value& part : content.get_array()) {
    const std::string part_param = param + "[" + std::to_string(part_index) + "]";
    const json::object* object = part.if_object();
    const json::value* type = object ? find(*object, "type") : nullptr;
    if (object == nullptr || type == nullptr || !type->is_string()) {
      return f.fail(
          bad_request("'" + part_param + "' must be an object with a \"type\"", part_param));
    }
    if (type->get_string() != "text") {
      return f.fail(bad_request("'" + part_param + "': content parts of type \"" +
                                    std::string(type->get_string()) +
                                    "\" are not supported; only \"text\"",
                                part_param));
    }
    const json::value* text = find(*object, "text");
    if (text == nullptr || !text->is_string()) {
      return f.fail(bad_request("'" + part_param + ".text' must be a string", part_param));
    }
    if (part_index > 0) joined += "\n";
    joined += text->get_string();
    ++part_index;
  }
  *out = json::string(joined);
  return true;
}

bool parse_messages(Fields& f, GenerationParams* p) {
  const json::value* messages = f.get("messages");
  if (messages == nullptr) return f.fail("messages", "is required");
  if (!messages->is_array()) {
    return f.fail("messages", "must be a list of messages, got " + describe(*messages));
  }
  if (messages->get_array().empty()) return f.fail("messages", "must not be empty");
  size_t index = 0;
  for (const json::value& message : messages->get_array()) {
    const std::string param = "messages[" + std::to_string(index) + "]";
    if (!message.is_object()) {
      return f.fail(
          bad_request("'" + param + "' must be an object, got " + describe(message), param));
    }
    json::object normalised = message.get_object();
    const json::value* role = find(normalised, "role");
    if (role == nullptr || !role->is_string()) {
      return f.fail(bad_request("'" + param + ".role' must be a string", param + ".role"));
    }
    std::string role_name(role->get_string());
    if (role_name == "developer") role_name = "system";
    if (role_name != "system" && role_name != "user" && role_name != "assistant" &&
        role_name != "tool") {
      return f.fail(bad_request("'" + param +
                                    ".role' must be one of system, developer, user, "
                                    "assistant, tool; got \"" +
                                    role_name + "\"",
                                param + ".role"));
    }
    normalised["role"] = role_name;
    const json::value* content = find(normalised, "content");
    if (content == nullptr) {
      // Only an assistant message (which may carry tool_calls instead) may go without content.
      if (role_name != "assistant") {
        return f.fail(bad_request("'" + param + ".content' is required", param + ".content"));
      }
      normalised["content"] = "";
    } else {
      json::value text;
      if (!normalise_content(f, *content, index, &text)) return false;
      normalised["content"] = std::move(text);
    }
    p->messages.push_back(std::move(normalised));
    ++index;
  }
  return true;
}

}  // namespace

std::optional<ApiError> check_model(const json::object& body, const ApiLimits& limits) {
  const json::value* model = find(body, "model");
  if (model == nullptr) return std::nullopt;
  if (!model->is_string()) {
    return bad_request("'model' must be a string, got " + describe(*model), "model");
  }
  if (model->get_string() != limits.served_model) {
    ApiError error;
    error.http_status = 404;
    error.message = "The model '" + std::string(model->get_string()) +
                    "' does not exist; this server serves '" + limits.served_model + "'";
    error.param = "model";
    error.code = "model_not_found";
    return error;
  }
  return std::nullopt;
}

std::optional<ApiError> check_token_ids(std::span<const int32_t> ids, int64_t vocab_size,
                                        const std::string& param) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return bad_request("'" + param + "' holds token id " + std::to_string(ids[i]) + " at index " +
                             std::to_string(i) + ", outside the vocabulary [0, " +
                             std::to_string(vocab_size) + ")",
                         param);
    }
  }
  return std::nullopt;
}

ApiResult<std::vector<int32_t>> parse_token_id_array(const json::value& value,
                                                     const std::string& param) {
  if (!value.is_array()) {
    return bad_request("'" + param + "' must be a list of token ids, got " + describe(value),
                       param);
  }
  std::vector<int32_t> ids;
  ids.reserve(value.get_array().size());
  for (const json::value& entry : value.get_array()) {
    int64_t id;
    if (!Fields::to_integer(entry, &id) || id < 0 || id > std::numeric_limits<int32_t>::max()) {
      return bad_request(
          "'" + param + "' must hold non-negative integer token ids, got " + describe(entry),
          param);
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

ApiResult<GenerationParams> parse_completion_request(const json::object& body,
                                                     const ApiLimits& limits) {
  if (std::optional<ApiError> error = check_model(body, limits)) return *error;
  GenerationParams p;
  p.kind = ApiKind::kCompletion;
  p.model = limits.served_model;
  Fields f(body);

  const json::value* prompt = f.get("prompt");
  if (prompt == nullptr) return bad_request("'prompt' is required", "prompt");
  if (prompt->is_string()) {
    p.prompt_text = std::string(prompt->get_string());
  } else if (prompt->is_array()) {
    const json::array& list = prompt->get_array();
    if (list.empty()) return bad_request("'prompt' must not be an empty list", "prompt");
    if (list.size() == 1 && list[0].is_string()) {
      p.prompt_text = std::string(list[0].get_string());  // ["text"] is one prompt
    } else if (list[0].is_string() || list[0].is_array()) {
      return bad_request(
          "'prompt' holds several prompts; this server takes one prompt per "
          "request (a string or a list of token ids)",
          "prompt");
    } else {
      ApiResult<std::vector<int32_t>> ids = parse_token_id_array(*prompt, "prompt");
      if (!ids.ok()) return ids.error();
      p.prompt_ids = std::move(ids.value());
    }
  } else {
    return bad_request("'prompt' must be a string or a list of token ids, got " + describe(*prompt),
                       "prompt");
  }

  bool echo = false;
  if (!f.boolean("echo", &echo)) return f.take_error();
  if (echo) return bad_request("'echo' is not supported", "echo");
  if (const json::value* suffix = f.get("suffix")) {
    if (!suffix->is_string() || !suffix->get_string().empty()) {
      return bad_request("'suffix' is not supported", "suffix");
    }
  }
  if (const json::value* best_of = f.get("best_of")) {
    int64_t value;
    if (!Fields::to_integer(*best_of, &value) || value != 1) {
      return bad_request("'best_of' is not supported (only 1); use 'n' for several choices",
                         "best_of");
    }
  }

  if (!parse_common(f, limits, &p)) return f.take_error();

  if (const json::value* logprobs = f.get("logprobs")) {
    int64_t k;
    if (logprobs->is_bool() || !Fields::to_integer(*logprobs, &k) || k < 0 || k > 5) {
      return bad_request("'logprobs' must be an integer in [0, 5], got " + describe(*logprobs),
                         "logprobs");
    }
    p.logprobs_count = static_cast<int>(k);
    p.sampling.top_logprobs = static_cast<int32_t>(k);
  }
  return p;
}

ApiResult<GenerationParams> parse_chat_request(const json::object& body, const ApiLimits& limits) {
  if (std::optional<ApiError> error = check_model(body, limits)) return *error;
  GenerationParams p;
  p.kind = ApiKind::kChat;
  p.model = limits.served_model;
  Fields f(body);
  if (!parse_messages(f, &p)) return f.take_error();
  if (!parse_common(f, limits, &p)) return f.take_error();

  bool logprobs = false;
  if (!f.boolean("logprobs", &logprobs)) return f.take_error();
  std::optional<int64_t> top_logprobs;
  if (!f.integer("top_logprobs", 0, 20, &top_logprobs)) return f.take_error();
  if (top_logprobs && !logprobs) {
    return bad_request("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
  }
  if (logprobs) {
    p.logprobs_count = static_cast<int>(top_logprobs.value_or(0));
    p.sampling.top_logprobs = p.logprobs_count;
  }

  if (!f.boolean("add_generation_prompt", &p.add_generation_prompt)) return f.take_error();
  if (const json::value* tools = f.get("tools")) {
    if (!tools->is_array()) return bad_request("'tools' must be a list", "tools");
    p.template_variables["tools"] = *tools;
  }
  if (const json::value* kwargs = f.get("chat_template_kwargs")) {
    if (!kwargs->is_object()) {
      return bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs");
    }
    for (const auto& entry : kwargs->get_object()) {
      p.template_variables[entry.key()] = entry.value();
    }
  }
  return p;
}

}  // namespace dshpc
