// libFuzzer target: an HTTP request body turned into a generation request, the way the gateway
// does it for POST /v1/completions and /v1/chat/completions: parse_request_body, then
// parse_completion_request and parse_chat_request, then (chat) the DeepSeek-V3 chat template
// rendered and tokenized.
//
// Oracles beyond "no crash, no sanitizer report":
//   - a refusal is a 4xx in the OpenAI shape whose JSON round-trips;
//   - an accepted request holds only values inside the documented ranges (finite sampling
//     parameters, 1 ≤ n ≤ max_n, max_tokens ≥ 1, logprobs within bounds, stop strings non-empty).
#include <boost/json.hpp>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string_view>

#include "coordinator/chat_template.h"
#include "coordinator/openai_api.h"
#include "coordinator/tokenizer.h"
#include "fuzz_check.h"

namespace {

using namespace dshpc;
namespace json = boost::json;

struct State {
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<ChatRenderer> renderer;
  ApiLimits limits;
};

State& state() {
  static State* s = [] {
    auto* created = new State;
    StatusOr<std::unique_ptr<Tokenizer>> t =
        Tokenizer::load(DSHPC_SOURCE_DIR "/configs/tokenizers/deepseek-v3");
    if (!t.ok()) {
      std::fprintf(stderr, "fuzz_openai_request: %s\n", t.status().to_string().c_str());
      std::abort();
    }
    created->tokenizer = std::move(t).value();
    StatusOr<ChatRenderer> r = ChatRenderer::for_tokenizer(*created->tokenizer);
    if (!r.ok()) {
      std::fprintf(stderr, "fuzz_openai_request: %s\n", r.status().to_string().c_str());
      std::abort();
    }
    created->renderer.emplace(std::move(r).value());
    created->limits.served_model = "demo";
    created->limits.max_n = 8;
    created->limits.max_stop_strings = 4;
    return created;
  }();
  return *s;
}

void check_error(const ApiError& error) {
  FUZZ_CHECK(error.http_status >= 400 && error.http_status < 500);
  FUZZ_CHECK(!error.message.empty());
  const std::string text = error_json(error);
  json::error_code ec;
  json::value back = json::parse(text, ec);
  FUZZ_CHECK(!ec);
  FUZZ_CHECK(back.is_object() && back.as_object().contains("error"));
  const json::value& inner = back.at("error");
  FUZZ_CHECK(inner.at("message").is_string() && inner.at("type").is_string());
}

void check_params(const GenerationParams& p, const ApiLimits& limits) {
  const SamplingOptions& s = p.sampling;
  FUZZ_CHECK(std::isfinite(s.temperature) && s.temperature >= 0.0f && s.temperature <= 2.0f);
  FUZZ_CHECK(std::isfinite(s.top_p) && s.top_p > 0.0f && s.top_p <= 1.0f);
  FUZZ_CHECK(std::isfinite(s.presence_penalty) && std::fabs(s.presence_penalty) <= 2.0f);
  FUZZ_CHECK(std::isfinite(s.frequency_penalty) && std::fabs(s.frequency_penalty) <= 2.0f);
  FUZZ_CHECK(std::isfinite(s.repetition_penalty) && s.repetition_penalty > 0.0f);
  FUZZ_CHECK(s.top_k >= 0);
  FUZZ_CHECK(p.n >= 1 && p.n <= limits.max_n);
  FUZZ_CHECK(!p.max_tokens || *p.max_tokens >= 1);
  FUZZ_CHECK(static_cast<int>(p.stop.size()) <= limits.max_stop_strings);
  for (const std::string& stop : p.stop) FUZZ_CHECK(!stop.empty());
  for (int32_t id : s.stop_token_ids) FUZZ_CHECK(id >= 0);
  FUZZ_CHECK(p.logprobs_count >= -1 && p.logprobs_count <= 20);
  FUZZ_CHECK(s.top_logprobs == p.logprobs_count || (p.logprobs_count < 0 && s.top_logprobs < 0));
  FUZZ_CHECK(!p.include_usage || p.stream);
  if (p.kind == ApiKind::kCompletion) {
    FUZZ_CHECK(p.logprobs_count <= 5);
    FUZZ_CHECK(p.prompt_text.has_value() != !p.prompt_ids.empty());  // exactly one form
    for (int32_t id : p.prompt_ids) FUZZ_CHECK(id >= 0);
  } else {
    FUZZ_CHECK(!p.messages.empty());
    for (const json::value& m : p.messages) {
      FUZZ_CHECK(m.is_object());
      FUZZ_CHECK(m.at("role").is_string() && m.at("content").is_string());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  state();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  State& s = state();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  ApiResult<json::object> body = parse_request_body(text);
  if (!body.ok()) {
    check_error(body.error());
    return 0;
  }
  ApiResult<GenerationParams> completion = parse_completion_request(body.value(), s.limits);
  if (completion.ok()) {
    check_params(completion.value(), s.limits);
    if (completion.value().prompt_text) {
      FUZZ_CHECK(s.tokenizer->encode(*completion.value().prompt_text, true).ok());
    }
  } else {
    check_error(completion.error());
  }
  ApiResult<GenerationParams> chat = parse_chat_request(body.value(), s.limits);
  if (!chat.ok()) {
    check_error(chat.error());
    return 0;
  }
  check_params(chat.value(), s.limits);
  ChatOptions options;
  options.add_generation_prompt = chat.value().add_generation_prompt;
  options.extra_variables = chat.value().template_variables;
  // A template error is the client's problem (a 400), never a crash.
  StatusOr<std::vector<int32_t>> ids =
      s.renderer->render_ids(*s.tokenizer, chat.value().messages, options);
  if (ids.ok()) {
    for (int32_t id : *ids) FUZZ_CHECK(id >= 0 && id < s.tokenizer->id_limit());
  } else {
    FUZZ_CHECK(!ids.status().message().empty());
  }
  return 0;
}
