// The OpenAI-compatible API as data: request bodies parsed and validated into GenerationParams,
// errors in OpenAI's shape, and the JSON of responses and of streamed (SSE) chunks. No I/O here;
// gateway.cpp does the HTTP side.
//
// Errors: {"error": {"message", "type", "param", "code"}}; "param" names the offending field
// (null when none does), "type" is "invalid_request_error" for 4xx, "rate_limit_error" for 429,
// "server_error" for 5xx.
//
// finish_reason: "stop" (end-of-sequence, a stop token id or a stop string), "length"
// (max_tokens or the context), "abort" (the request was cancelled on the server side, e.g. the
// server is shutting down; the name vLLM uses) and "timeout" (the request's deadline passed: its
// "timeout" field, or the server's --request-timeout; the response is a 200 with the text made so
// far). OpenAI's SDKs accept any string there; the last two never occur for a client that gets
// its full answer.
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "coordinator/inference_service.h"

namespace dshpc {

class Tokenizer;

struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // empty: null
  std::string code;   // empty: null
};

ApiError bad_request(std::string message, std::string param = {});
// What the service's Status means to a client: INVALID_ARGUMENT and OUT_OF_RANGE → 400,
// RESOURCE_EXHAUSTED → 429, UNAVAILABLE → 503, anything else → 500 (a server-side problem).
// The gateway adds Retry-After to 429 and 503.
ApiError api_error_from_status(const Status& status);
boost::json::object error_body(const ApiError& error);
std::string error_json(const ApiError& error);

// A value or an ApiError.
template <typename T>
class ApiResult {
 public:
  ApiResult(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  ApiResult(ApiError error) : error_(std::move(error)) {}  // NOLINT
  bool ok() const { return value_.has_value(); }
  const ApiError& error() const { return error_; }
  T& value() { return *value_; }
  const T& value() const { return *value_; }

 private:
  std::optional<T> value_;
  ApiError error_;
};

// Parses a request body that must be a JSON object: malformed JSON (including NaN, Infinity,
// trailing data and invalid UTF-8) or another JSON type → 400.
ApiResult<boost::json::object> parse_request_body(std::string_view body);

enum class ApiKind { kCompletion, kChat };

struct ApiLimits {
  std::string served_model;
  int max_n = 8;
  int max_stop_strings = 4;
  // Deadlines in seconds after the request's arrival, 0: none. A request's own "timeout" replaces
  // default_timeout_s; with max_timeout_s set, a larger "timeout" is a 400 and a request that
  // names none (with no default) gets max_timeout_s, so that no request outlives it.
  double default_timeout_s = 0.0;
  double max_timeout_s = 0.0;
};

// The largest "timeout" (and --request-timeout) accepted: one year, in seconds.
inline constexpr double kMaxRequestTimeoutSeconds = 365.0 * 24 * 3600;

// Everything a generation request asks for, validated but not yet tokenized.
struct GenerationParams {
  ApiKind kind = ApiKind::kCompletion;
  std::string model;

  // /v1/completions: a prompt given as text, or as token ids.
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_ids;

  // /v1/chat/completions: messages normalised for the chat template (content parts joined into
  // one string, "developer" mapped to "system"), plus template variables (tools,
  // chat_template_kwargs) and add_generation_prompt.
  boost::json::array messages;
  boost::json::object template_variables;
  bool add_generation_prompt = true;

  std::optional<int64_t> max_tokens;  // absent: the gateway picks a default
  SamplingOptions sampling;           // sampling.top_logprobs set from the logprobs fields
  int n = 1;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;
  // Completions: logprobs = k (0..5) gives k alternatives per token. Chat: logprobs = true and
  // top_logprobs = k (0..20). logprobs_count < 0: none asked for.
  int logprobs_count = -1;
  // Seconds from arrival until the request ends with finish_reason "timeout": the "timeout"
  // field, else the limits' default or maximum (ApiLimits). Absent: no deadline.
  std::optional<double> timeout_seconds;
};

ApiResult<GenerationParams> parse_completion_request(const boost::json::object& body,
                                                     const ApiLimits& limits);
ApiResult<GenerationParams> parse_chat_request(const boost::json::object& body,
                                               const ApiLimits& limits);
// "model" absent → fine; a name other than the served one → 404 "model_not_found".
std::optional<ApiError> check_model(const boost::json::object& body, const ApiLimits& limits);
// Every id must be in [0, vocab_size): 400 naming `param` and the first bad id.
std::optional<ApiError> check_token_ids(std::span<const int32_t> ids, int64_t vocab_size,
                                        const std::string& param);
// An array of integer token ids (for /detokenize and prompt lists).
ApiResult<std::vector<int32_t>> parse_token_id_array(const boost::json::value& value,
                                                     const std::string& param);

// ---- responses ----

const char* openai_finish_reason(FinishReason reason);

struct ResponseMeta {
  std::string id;       // "cmpl-…" or "chatcmpl-…"
  int64_t created = 0;  // Unix seconds
  std::string model;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};
boost::json::object usage_json(const Usage& usage);

// How logprobs fields show tokens: the token's text (U+FFFD for a piece of a character; an id
// the tokenizer does not know is "token_id:N") and its raw bytes.
std::string token_display(const Tokenizer& tokenizer, int32_t id);
std::string token_bytes(const Tokenizer& tokenizer, int32_t id);

// Completions "logprobs": {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
// "text_offset"}. `text_offsets[i]` is where token i's text starts in the choice's text.
// The sampled token is always in its top_logprobs dict (so up to top_n + 1 entries).
boost::json::object completion_logprobs_json(const Tokenizer& tokenizer,
                                             std::span<const GeneratedToken> tokens,
                                             std::span<const int64_t> text_offsets, int top_n);
// Chat "logprobs": {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
// "logprob", "bytes"}]}]} with top_n alternatives each.
boost::json::object chat_logprobs_json(const Tokenizer& tokenizer,
                                       std::span<const GeneratedToken> tokens, int top_n);

struct ChoiceOutput {
  std::string text;
  std::string finish_reason;
  std::optional<boost::json::object> logprobs;
};

// Whole responses (non-streaming).
boost::json::object completion_response(const ResponseMeta& meta,
                                        std::span<const ChoiceOutput> choices, const Usage& usage);
boost::json::object chat_response(const ResponseMeta& meta, std::span<const ChoiceOutput> choices,
                                  const Usage& usage);

// Streamed chunks. `finish_reason` empty: null. With include_usage every chunk carries
// "usage": null and the last one (usage_chunk, empty choices) the totals.
boost::json::object completion_chunk(const ResponseMeta& meta, int index, std::string_view text,
                                     const std::optional<boost::json::object>& logprobs,
                                     std::string_view finish_reason, bool include_usage);
// `delta` is {"role": "assistant", "content": ""} for the first chunk of a choice,
// {"content": text} after, {} with the finish reason.
boost::json::object chat_chunk(const ResponseMeta& meta, int index, boost::json::object delta,
                               const std::optional<boost::json::object>& logprobs,
                               std::string_view finish_reason, bool include_usage);
boost::json::object usage_chunk(const ResponseMeta& meta, ApiKind kind, const Usage& usage);

// One Server-Sent Event: "data: <json>\n\n".
std::string sse_event(const boost::json::value& value);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace dshpc
