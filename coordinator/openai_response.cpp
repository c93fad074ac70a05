// Response and SSE chunk JSON for the OpenAI-compatible API (requests: openai_api.cpp).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "coordinator/openai_api.h"
#include "coordinator/tokenizer.h"

namespace dshpc {

namespace json = boost::json;

const char* openai_finish_reason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "abort";
    case FinishReason::kTimeout:
      return "timeout";
    case FinishReason::kError:
      return "error";
    case FinishReason::kNone:
      return "";
  }
  return "";
}

json::object usage_json(const Usage& usage) {
  json::object object;
  object["prompt_tokens"] = usage.prompt_tokens;
  object["completion_tokens"] = usage.completion_tokens;
  object["total_tokens"] = usage.prompt_tokens + usage.completion_tokens;
  return object;
}

std::string token_display(const Tokenizer& tokenizer, int32_t id) {
  const int32_t one[] = {id};
  StatusOr<std::string> text = tokenizer.decode(one);
  if (!text.ok()) return "token_id:" + std::to_string(id);
  return std::move(text).value();
}

std::string token_bytes(const Tokenizer& tokenizer, int32_t id) {
  if (const std::string* bytes = tokenizer.model_token_bytes(id)) return *bytes;
  if (tokenizer.is_added(id)) return tokenizer.id_to_token(id).value_or("");
  return {};
}

namespace {

// A float as the shortest decimal that reads back as the same float (-0.51, not
// -0.50999999046325684), so that logprobs look as they do from other servers.
json::value float_json(float value) {
  if (std::isnan(value)) return json::value(nullptr);
  if (std::isinf(value)) return json::value(value < 0 ? -9999.0 : 9999.0);  // OpenAI's -inf
  char text[32];
  for (int precision = 1; precision <= 9; ++precision) {
    std::snprintf(text, sizeof(text), "%.*g", precision, static_cast<double>(value));
    if (std::strtof(text, nullptr) == value) break;
  }
  return json::value(std::strtod(text, nullptr));
}

json::array bytes_json(const std::string& bytes) {
  json::array array;
  array.reserve(bytes.size());
  for (unsigned char byte : bytes) array.push_back(static_cast<int64_t>(byte));
  return array;
}

json::object chat_token_json(const Tokenizer& tokenizer, int32_t id, float logprob) {
  json::object entry;
  entry["token"] = token_display(tokenizer, id);
  entry["logprob"] = float_json(logprob);
  entry["bytes"] = bytes_json(token_bytes(tokenizer, id));
  return entry;
}

json::object response_head(const ResponseMeta& meta, const char* object) {
  json::object head;
  head["id"] = meta.id;
  head["object"] = object;
  head["created"] = meta.created;
  head["model"] = meta.model;
  return head;
}

json::value logprobs_or_null(const std::optional<json::object>& logprobs) {
  return logprobs ? json::value(*logprobs) : json::value(nullptr);
}

json::value reason_or_null(std::string_view finish_reason) {
  return finish_reason.empty() ? json::value(nullptr) : json::value(json::string(finish_reason));
}

}  // namespace

json::object completion_logprobs_json(const Tokenizer& tokenizer,
                                      std::span<const GeneratedToken> tokens,
                                      std::span<const int64_t> text_offsets, int top_n) {
  json::array token_texts, token_logprobs, top_logprobs, offsets;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const GeneratedToken& token = tokens[i];
    token_texts.push_back(json::string(token_display(tokenizer, token.token)));
    token_logprobs.push_back(float_json(token.logprob));
    json::object top;
    const size_t count = std::min<size_t>(token.top_logprobs.size(), std::max(top_n, 0));
    for (size_t k = 0; k < count; ++k) {
      top[token_display(tokenizer, token.top_logprobs[k].token)] =
          float_json(token.top_logprobs[k].logprob);
    }
    top[token_display(tokenizer, token.token)] =
        float_json(token.logprob);  // always the sampled one
    top_logprobs.push_back(std::move(top));
    offsets.push_back(i < text_offsets.size() ? text_offsets[i] : 0);
  }
  json::object object;
  object["tokens"] = std::move(token_texts);
  object["token_logprobs"] = std::move(token_logprobs);
  object["top_logprobs"] = std::move(top_logprobs);
  object["text_offset"] = std::move(offsets);
  return object;
}

json::object chat_logprobs_json(const Tokenizer& tokenizer, std::span<const GeneratedToken> tokens,
                                int top_n) {
  json::array content;
  for (const GeneratedToken& token : tokens) {
    json::object entry = chat_token_json(tokenizer, token.token, token.logprob);
    json::array top;
    const size_t count = std::min<size_t>(token.top_logprobs.size(), std::max(top_n, 0));
    for (size_t k = 0; k < count; ++k) {
      top.push_back(
          chat_token_json(tokenizer, token.top_logprobs[k].token, token.top_logprobs[k].logprob));
    }
    entry["top_logprobs"] = std::move(top);
    content.push_back(std::move(entry));
  }
  json::object object;
  object["content"] = std::move(content);
  return object;
}

json::object completion_response(const ResponseMeta& meta, std::span<const ChoiceOutput> choices,
                                 const Usage& usage) {
  json::object response = response_head(meta, "text_completion");
  json::array list;
  for (size_t i = 0; i < choices.size(); ++i) {
    json::object choice;
    choice["index"] = static_cast<int64_t>(i);
    choice["text"] = choices[i].text;
    choice["logprobs"] = logprobs_or_null(choices[i].logprobs);
    choice["finish_reason"] = reason_or_null(choices[i].finish_reason);
    list.push_back(std::move(choice));
  }
  response["choices"] = std::move(list);
  response["usage"] = usage_json(usage);
  return response;
}

json::object chat_response(const ResponseMeta& meta, std::span<const ChoiceOutput> choices,
                           const Usage& usage) {
  json::object response = response_head(meta, "chat.completion");
  json::array list;
  for (size_t i = 0; i < choices.size(); ++i) {
    json::object message;
    message["role"] = "assistant";
    message["content"] = choices[i].text;
    json::object choice;
    choice["index"] = static_cast<int64_t>(i);
    choice["message"] = std::move(message);
    choice["logprobs"] = logprobs_or_null(choices[i].logprobs);
    choice["finish_reason"] = reason_or_null(choices[i].finish_reason);
    list.push_back(std::move(choice));
  }
  response["choices"] = std::move(list);
  response["usage"] = usage_json(usage);
  return response;
}

json::object completion_chunk(const ResponseMeta& meta, int index, std::string_view text,
                              const std::optional<json::object>& logprobs,
                              std::string_view finish_reason, bool include_usage) {
  json::object chunk = response_head(meta, "text_completion");
  json::object choice;
  choice["index"] = index;
  choice["text"] = text;
  choice["logprobs"] = logprobs_or_null(logprobs);
  choice["finish_reason"] = reason_or_null(finish_reason);
  chunk["choices"] = json::array{std::move(choice)};
  if (include_usage) chunk["usage"] = nullptr;
  return chunk;
}

json::object chat_chunk(const ResponseMeta& meta, int index, json::object delta,
                        const std::optional<json::object>& logprobs, std::string_view finish_reason,
                        bool include_usage) {
  json::object chunk = response_head(meta, "chat.completion.chunk");
  json::object choice;
  choice["index"] = index;
  choice["delta"] = std::move(delta);
  choice["logprobs"] = logprobs_or_null(logprobs);
  choice["finish_reason"] = reason_or_null(finish_reason);
  chunk["choices"] = json::array{std::move(choice)};
  if (include_usage) chunk["usage"] = nullptr;
  return chunk;
}

json::object usage_chunk(const ResponseMeta& meta, ApiKind kind, const Usage& usage) {
  json::object chunk =
      response_head(meta, kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion");
  chunk["choices"] = json::array();
  chunk["usage"] = usage_json(usage);
  return chunk;
}

std::string sse_event(const json::value& value) {
  std::string event = "data: ";
  event += json::serialize(value);
  event += "\n\n";
  return event;
}

}  // namespace dshpc
