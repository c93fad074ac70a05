// The OpenAI API layer without sockets: request validation (every error names its param), stop
// string filtering, response and chunk shapes, error mapping and the config check.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cmath>
#include <sstream>
#include <string>

#include "coordinator/openai_api.h"
#include "coordinator/server_config.h"
#include "coordinator/stop_strings.h"
#include "coordinator/unicode.h"

namespace dshpc {
namespace {

namespace json = boost::json;

ApiLimits limits() {
  ApiLimits l;
  l.served_model = "test-model";
  l.max_n = 8;
  l.max_stop_strings = 4;
  return l;
}

ApiResult<GenerationParams> completion(std::string_view body_text) {
  ApiResult<json::object> body = parse_request_body(body_text);
  if (!body.ok()) return body.error();
  return parse_completion_request(body.value(), limits());
}

ApiResult<GenerationParams> chat(std::string_view body_text) {
  ApiResult<json::object> body = parse_request_body(body_text);
  if (!body.ok()) return body.error();
  return parse_chat_request(body.value(), limits());
}

// Expects a 400 naming `param` (empty: none).
void expect_bad(const ApiResult<GenerationParams>& result, const std::string& param,
                const std::string& message_part = {}) {
  ASSERT_FALSE(result.ok()) << "expected an error for param " << param;
  EXPECT_EQ(result.error().http_status, 400) << result.error().message;
  EXPECT_EQ(result.error().param, param) << result.error().message;
  EXPECT_EQ(result.error().type, "invalid_request_error");
  if (!message_part.empty()) {
    EXPECT_NE(result.error().message.find(message_part), std::string::npos)
        << result.error().message;
  }
}

TEST(OpenAiRequest, MalformedBodiesAre400WithoutParam) {
  for (const char* body :
       {"", "   ", "{", "{\"prompt\": NaN}", "{\"prompt\": Infinity}", "{\"a\":1} trailing",
        "[1, 2]", "\"text\"", "{\"prompt\": \"\xff\"}", "{'prompt': 'single quotes'}"}) {
    ApiResult<json::object> parsed = parse_request_body(body);
    ASSERT_FALSE(parsed.ok()) << body;
    EXPECT_EQ(parsed.error().http_status, 400) << body;
    EXPECT_TRUE(parsed.error().param.empty()) << body;
  }
}

TEST(OpenAiRequest, CompletionDefaultsAndEveryField) {
  ApiResult<GenerationParams> minimal = completion(R"({"prompt": "hi"})");
  ASSERT_TRUE(minimal.ok()) << minimal.error().message;
  EXPECT_EQ(minimal.value().model, "test-model");
  EXPECT_EQ(*minimal.value().prompt_text, "hi");
  EXPECT_FALSE(minimal.value().max_tokens.has_value());
  EXPECT_EQ(minimal.value().n, 1);
  EXPECT_EQ(minimal.value().logprobs_count, -1);
  EXPECT_EQ(minimal.value().sampling.top_logprobs, -1);
  EXPECT_FALSE(minimal.value().stream);

  ApiResult<GenerationParams> full = completion(R"({
      "model": "test-model", "prompt": [1, 2, 3], "max_tokens": 7, "temperature": 0.5,
      "top_p": 0.9, "top_k": 40, "seed": 42, "stop": ["a", "bc"], "stop_token_ids": [5, 6],
      "n": 3, "presence_penalty": -1.5, "frequency_penalty": 2, "repetition_penalty": 1.1,
      "logprobs": 2, "ignore_eos": true, "stream": true,
      "stream_options": {"include_usage": true}, "user": "x", "some_unknown_field": {"a": 1}})");
  ASSERT_TRUE(full.ok()) << full.error().message;
  const GenerationParams& p = full.value();
  EXPECT_EQ(p.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_FALSE(p.prompt_text.has_value());
  EXPECT_EQ(*p.max_tokens, 7);
  EXPECT_FLOAT_EQ(p.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(p.sampling.top_p, 0.9f);
  EXPECT_EQ(p.sampling.top_k, 40);
  EXPECT_EQ(*p.sampling.seed, 42u);
  EXPECT_EQ(p.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(p.sampling.stop_token_ids, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(p.n, 3);
  EXPECT_FLOAT_EQ(p.sampling.presence_penalty, -1.5f);
  EXPECT_FLOAT_EQ(p.sampling.frequency_penalty, 2.0f);
  EXPECT_FLOAT_EQ(p.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(p.logprobs_count, 2);
  EXPECT_EQ(p.sampling.top_logprobs, 2);
  EXPECT_TRUE(p.sampling.ignore_eos);
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);

  // top_k -1 and 0 both switch it off; a one-element list of strings is one prompt.
  EXPECT_EQ(completion(R"({"prompt": "x", "top_k": -1})").value().sampling.top_k, 0);
  EXPECT_EQ(completion(R"({"prompt": "x", "top_k": 0})").value().sampling.top_k, 0);
  EXPECT_EQ(*completion(R"({"prompt": ["one"]})").value().prompt_text, "one");
  EXPECT_EQ(completion(R"({"prompt": "x", "stop": "end"})").value().stop,
            std::vector<std::string>{"end"});
  EXPECT_EQ(completion(R"({"prompt": "x", "max_tokens": 5.0})").value().max_tokens, 5);
  EXPECT_TRUE(completion(R"({"prompt": "x", "temperature": null})").ok());
}

TEST(OpenAiRequest, CompletionErrorsNameTheParam) {
  expect_bad(completion(R"({})"), "prompt", "required");
  expect_bad(completion(R"({"prompt": 5})"), "prompt");
  expect_bad(completion(R"({"prompt": []})"), "prompt");
  expect_bad(completion(R"({"prompt": ["a", "b"]})"), "prompt", "one prompt");
  expect_bad(completion(R"({"prompt": [[1, 2], [3]]})"), "prompt");
  expect_bad(completion(R"({"prompt": [1, -2]})"), "prompt");
  expect_bad(completion(R"({"prompt": [1, 2.5]})"), "prompt");
  expect_bad(completion(R"({"prompt": "x", "max_tokens": "10"})"), "max_tokens", "integer");
  expect_bad(completion(R"({"prompt": "x", "max_tokens": -5})"), "max_tokens");
  expect_bad(completion(R"({"prompt": "x", "max_tokens": 0})"), "max_tokens");
  expect_bad(completion(R"({"prompt": "x", "max_tokens": 1e30})"), "max_tokens");
  expect_bad(completion(R"({"prompt": "x", "temperature": "hot"})"), "temperature", "number");
  expect_bad(completion(R"({"prompt": "x", "temperature": 2.5})"), "temperature", "[0, 2]");
  expect_bad(completion(R"({"prompt": "x", "temperature": -0.1})"), "temperature");
  expect_bad(completion(R"({"prompt": "x", "temperature": true})"), "temperature");
  expect_bad(completion(R"({"prompt": "x", "top_p": 0})"), "top_p", "(0, 1]");
  expect_bad(completion(R"({"prompt": "x", "top_p": 1.01})"), "top_p");
  expect_bad(completion(R"({"prompt": "x", "top_k": -2})"), "top_k");
  expect_bad(completion(R"({"prompt": "x", "top_k": 1.5})"), "top_k");
  expect_bad(completion(R"({"prompt": "x", "seed": "abc"})"), "seed");
  expect_bad(completion(R"({"prompt": "x", "n": 0})"), "n");
  expect_bad(completion(R"({"prompt": "x", "n": 9})"), "n", "[1, 8]");
  expect_bad(completion(R"({"prompt": "x", "presence_penalty": 2.1})"), "presence_penalty");
  expect_bad(completion(R"({"prompt": "x", "frequency_penalty": -3})"), "frequency_penalty");
  expect_bad(completion(R"({"prompt": "x", "repetition_penalty": 0})"), "repetition_penalty");
  expect_bad(completion(R"({"prompt": "x", "repetition_penalty": -1})"), "repetition_penalty");
  // Finite as a double, infinite as the float it is kept in (found by fuzz_openai_request).
  expect_bad(completion(R"({"prompt": "x", "repetition_penalty": 1.6e128})"), "repetition_penalty",
             "too large");
  expect_bad(completion(R"({"prompt": "x", "repetition_penalty": -1e300})"), "repetition_penalty");
  // Positive as a double, zero as a float: the open bound still refuses it.
  expect_bad(completion(R"({"prompt": "x", "top_p": 1e-50})"), "top_p", "(0, 1]");
  // Above the bound as sent, on it as a float: still refused.
  expect_bad(completion(R"({"prompt": "x", "temperature": 2.0000001})"), "temperature", "[0, 2]");
  expect_bad(completion(R"({"prompt": "x", "repetition_penalty": 1e-60})"), "repetition_penalty");
  expect_bad(completion(R"({"prompt": "x", "stop": 5})"), "stop");
  expect_bad(completion(R"({"prompt": "x", "stop": ["a", 5]})"), "stop");
  expect_bad(completion(R"({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})"), "stop", "4");
  expect_bad(completion(R"({"prompt": "x", "stop": [""]})"), "stop", "empty");
  expect_bad(completion(R"({"prompt": "x", "stop_token_ids": [1, "2"]})"), "stop_token_ids");
  expect_bad(completion(R"({"prompt": "x", "stop_token_ids": 3})"), "stop_token_ids");
  expect_bad(completion(R"({"prompt": "x", "logprobs": 6})"), "logprobs", "[0, 5]");
  expect_bad(completion(R"({"prompt": "x", "logprobs": true})"), "logprobs");
  expect_bad(completion(R"({"prompt": "x", "echo": true})"), "echo", "not supported");
  expect_bad(completion(R"({"prompt": "x", "echo": "yes"})"), "echo");
  expect_bad(completion(R"({"prompt": "x", "suffix": "tail"})"), "suffix");
  expect_bad(completion(R"({"prompt": "x", "best_of": 3})"), "best_of");
  expect_bad(completion(R"({"prompt": "x", "stream": "yes"})"), "stream");
  expect_bad(completion(R"({"prompt": "x", "ignore_eos": 1})"), "ignore_eos");
  expect_bad(completion(R"({"prompt": "x", "stream_options": {"include_usage": true}})"),
             "stream_options", "stream");
  expect_bad(completion(R"({"prompt": "x", "stream": true, "stream_options": 1})"),
             "stream_options");
  expect_bad(completion(R"({"prompt": "x", "stream": true,
                            "stream_options": {"include_usage": "yes"}})"),
             "stream_options.include_usage");
  expect_bad(completion(R"({"prompt": "x", "model": 7})"), "model");
  // Numbers too large for a double are malformed JSON to the parser.
  ApiResult<GenerationParams> huge = completion(R"({"prompt": "x", "temperature": 1e999})");
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.error().http_status, 400);
}

// "timeout": seconds > 0 on both endpoints; absent, the server's default, else its maximum.
TEST(OpenAiRequest, TimeoutIsADeadlineInSecondsWithServerDefaultAndMaximum) {
  ApiLimits none = limits();
  auto parse = [](std::string_view text, const ApiLimits& l, ApiKind kind) {
    ApiResult<json::object> body = parse_request_body(text);
    EXPECT_TRUE(body.ok());
    return kind == ApiKind::kChat ? parse_chat_request(body.value(), l)
                                  : parse_completion_request(body.value(), l);
  };
  const std::string chat_messages = R"("messages": [{"role": "user", "content": "x"}])";
  for (ApiKind kind : {ApiKind::kCompletion, ApiKind::kChat}) {
    const std::string base = kind == ApiKind::kChat ? chat_messages : R"("prompt": "x")";
    auto with = [&](const std::string& extra) { return "{" + base + extra + "}"; };
    ApiResult<GenerationParams> plain = parse(with(""), none, kind);
    ASSERT_TRUE(plain.ok()) << plain.error().message;
    EXPECT_FALSE(plain.value().timeout_seconds.has_value());
    ApiResult<GenerationParams> given = parse(with(R"(, "timeout": 2.5)"), none, kind);
    ASSERT_TRUE(given.ok()) << given.error().message;
    EXPECT_DOUBLE_EQ(*given.value().timeout_seconds, 2.5);
    EXPECT_DOUBLE_EQ(*parse(with(R"(, "timeout": 7)"), none, kind).value().timeout_seconds, 7.0);
    EXPECT_FALSE(parse(with(R"(, "timeout": null)"), none, kind).value().timeout_seconds);

    expect_bad(parse(with(R"(, "timeout": 0)"), none, kind), "timeout", "(0, 31536000]");
    expect_bad(parse(with(R"(, "timeout": -1)"), none, kind), "timeout");
    expect_bad(parse(with(R"(, "timeout": 1e-60)"), none, kind), "timeout");
    expect_bad(parse(with(R"(, "timeout": "5")"), none, kind), "timeout", "number");
    expect_bad(parse(with(R"(, "timeout": true)"), none, kind), "timeout", "number");
    expect_bad(parse(with(R"(, "timeout": [1])"), none, kind), "timeout");
    expect_bad(parse(with(R"(, "timeout": 1e300)"), none, kind), "timeout");
    expect_bad(parse(with(R"(, "timeout": 40000000)"), none, kind), "timeout");

    ApiLimits defaults = limits();
    defaults.default_timeout_s = 30;
    EXPECT_DOUBLE_EQ(*parse(with(""), defaults, kind).value().timeout_seconds, 30.0);
    EXPECT_DOUBLE_EQ(*parse(with(R"(, "timeout": 90)"), defaults, kind).value().timeout_seconds,
                     90.0);  // a default is no limit

    ApiLimits capped = defaults;
    capped.max_timeout_s = 60;
    EXPECT_DOUBLE_EQ(*parse(with(R"(, "timeout": 60)"), capped, kind).value().timeout_seconds,
                     60.0);
    expect_bad(parse(with(R"(, "timeout": 90)"), capped, kind), "timeout", "at most 60");
    EXPECT_DOUBLE_EQ(*parse(with(""), capped, kind).value().timeout_seconds, 30.0);
    capped.default_timeout_s = 0;  // no default: the maximum bounds requests that name none
    EXPECT_DOUBLE_EQ(*parse(with(""), capped, kind).value().timeout_seconds, 60.0);
  }
}

TEST(GatewayConfigCheck, RequestTimeoutsAreSecondsAndTheDefaultFitsTheMaximum) {
  GatewayConfig config;
  EXPECT_TRUE(config.validate().ok());
  config.request_timeout_s = 30;
  config.max_request_timeout_s = 60;
  EXPECT_TRUE(config.validate().ok()) << config.validate().to_string();
  config.request_timeout_s = 90;
  Status too_long = config.validate();
  ASSERT_FALSE(too_long.ok());
  EXPECT_NE(too_long.message().find("gateway.request_timeout_s"), std::string::npos)
      << too_long.message();
  config.request_timeout_s = -1;
  config.max_request_timeout_s = std::nan("");
  Status bad = config.validate();
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("request_timeout_s: must be in [0, 31536000] seconds"),
            std::string::npos)
      << bad.message();
  EXPECT_NE(bad.message().find("max_request_timeout_s: must be in"), std::string::npos)
      << bad.message();
}

TEST(OpenAiRequest, UnknownModelIs404ModelNotFound) {
  ApiResult<GenerationParams> result = completion(R"({"model": "gpt-4", "prompt": "x"})");
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().http_status, 404);
  EXPECT_EQ(result.error().code, "model_not_found");
  EXPECT_EQ(result.error().param, "model");
  EXPECT_NE(result.error().message.find("gpt-4"), std::string::npos);
}

TEST(OpenAiRequest, ChatMessagesAreNormalised) {
  ApiResult<GenerationParams> result = chat(R"({
      "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "first"},
                                     {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": null, "tool_calls": []},
        {"role": "user", "content": "again", "name": "bob"}],
      "max_tokens": 3, "max_completion_tokens": 9, "logprobs": true, "top_logprobs": 4,
      "tools": [{"type": "function"}], "chat_template_kwargs": {"thinking": true}})");
  ASSERT_TRUE(result.ok()) << result.error().message;
  const GenerationParams& p = result.value();
  ASSERT_EQ(p.messages.size(), 4u);
  EXPECT_EQ(p.messages[0].at("role"), "system");
  EXPECT_EQ(p.messages[1].at("content"), "first\nsecond");
  EXPECT_EQ(p.messages[2].at("content"), "");
  EXPECT_TRUE(p.messages[2].as_object().contains("tool_calls"));
  EXPECT_EQ(p.messages[3].at("name"), "bob");
  EXPECT_EQ(*p.max_tokens, 9);  // max_completion_tokens wins
  EXPECT_EQ(p.logprobs_count, 4);
  EXPECT_EQ(p.sampling.top_logprobs, 4);
  EXPECT_TRUE(p.template_variables.contains("tools"));
  EXPECT_EQ(p.template_variables.at("thinking"), true);

  ApiResult<GenerationParams> plain = chat(R"({"messages": [{"role": "user", "content": "x"}],
                                               "logprobs": true})");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain.value().logprobs_count, 0);
}

TEST(OpenAiRequest, ChatErrorsNameTheParam) {
  expect_bad(chat(R"({})"), "messages", "required");
  expect_bad(chat(R"({"messages": "hi"})"), "messages");
  expect_bad(chat(R"({"messages": []})"), "messages", "empty");
  expect_bad(chat(R"({"messages": [5]})"), "messages[0]");
  expect_bad(chat(R"({"messages": [{"content": "x"}]})"), "messages[0].role");
  expect_bad(chat(R"({"messages": [{"role": "wizard", "content": "x"}]})"), "messages[0].role");
  expect_bad(chat(R"({"messages": [{"role": "user"}]})"), "messages[0].content");
  expect_bad(chat(R"({"messages": [{"role": "user", "content": 5}]})"), "messages[0].content");
  expect_bad(chat(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})"),
             "messages[0].content[0]", "not supported");
  expect_bad(chat(R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})"),
             "messages[0].content[0]");
  const std::string ok_messages = R"("messages": [{"role": "user", "content": "x"}])";
  expect_bad(chat("{" + ok_messages + R"(, "top_logprobs": 2})"), "top_logprobs", "logprobs");
  expect_bad(chat("{" + ok_messages + R"(, "logprobs": true, "top_logprobs": 21})"),
             "top_logprobs");
  expect_bad(chat("{" + ok_messages + R"(, "logprobs": 1})"), "logprobs");
  expect_bad(chat("{" + ok_messages + R"(, "max_completion_tokens": -1})"),
             "max_completion_tokens");
  expect_bad(chat("{" + ok_messages + R"(, "tools": {}})"), "tools");
}

TEST(OpenAiRequest, TokenIdChecks) {
  const std::vector<int32_t> ids = {0, 5, 99};
  EXPECT_FALSE(check_token_ids(ids, 100, "prompt").has_value());
  std::optional<ApiError> error = check_token_ids(ids, 99, "prompt");
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->param, "prompt");
  EXPECT_NE(error->message.find("99"), std::string::npos);
  EXPECT_FALSE(parse_token_id_array(json::parse("[1, \"a\"]"), "tokens").ok());
  EXPECT_FALSE(parse_token_id_array(json::parse("[3000000000]"), "tokens").ok());
}

TEST(OpenAiErrors, StatusMappingAndShape) {
  EXPECT_EQ(api_error_from_status(invalid_argument("x")).http_status, 400);
  EXPECT_EQ(api_error_from_status(out_of_range("x")).http_status, 400);
  EXPECT_EQ(api_error_from_status(not_found("x")).http_status, 500);
  EXPECT_EQ(api_error_from_status(deadline_exceeded("x")).http_status, 500);
  EXPECT_EQ(api_error_from_status(unimplemented("x")).type, "server_error");
  ApiError busy = api_error_from_status(resource_exhausted("queue full"));
  EXPECT_EQ(busy.http_status, 429);
  EXPECT_EQ(busy.type, "rate_limit_error");
  EXPECT_EQ(api_error_from_status(unavailable("x")).http_status, 503);
  EXPECT_EQ(api_error_from_status(internal_error("x")).http_status, 500);
  EXPECT_EQ(api_error_from_status(data_loss("x")).http_status, 500);

  json::value body = json::parse(error_json(bad_request("bad thing", "temperature")));
  const json::object& error = body.at("error").as_object();
  EXPECT_EQ(error.at("message"), "bad thing");
  EXPECT_EQ(error.at("type"), "invalid_request_error");
  EXPECT_EQ(error.at("param"), "temperature");
  EXPECT_TRUE(error.at("code").is_null());
  EXPECT_TRUE(json::parse(error_json(bad_request("x"))).at("error").at("param").is_null());
}

// Found by tests/fuzz/fuzz_http: a 404 quoting a request path with a 0xFF byte was not JSON.
TEST(OpenAiErrors, ClientBytesThatAreNotUtf8AreReplacedInErrorBodies) {
  const std::string text =
      error_json(bad_request("no route for '/v1/com\xffpletions\xc3'", "a\xfe"));
  EXPECT_TRUE(is_valid_utf8(text)) << text;
  boost::system::error_code ec;
  json::value body = json::parse(text, ec);
  ASSERT_FALSE(ec) << text;
  EXPECT_EQ(body.at("error").at("message"),
            "no route for '/v1/com\xef\xbf\xbdpletions\xef\xbf\xbd'");
  EXPECT_EQ(body.at("error").at("param"), "a\xef\xbf\xbd");
}

TEST(OpenAiResponse, ShapesOfResponsesAndChunks) {
  ResponseMeta meta{"cmpl-1", 1700000000, "test-model"};
  std::vector<ChoiceOutput> choices = {{"hello", "stop", std::nullopt},
                                       {"bye", "length", std::nullopt}};
  json::object response = completion_response(meta, choices, Usage{5, 7});
  EXPECT_EQ(response.at("object"), "text_completion");
  EXPECT_EQ(response.at("id"), "cmpl-1");
  EXPECT_EQ(response.at("created"), 1700000000);
  EXPECT_EQ(response.at("choices").at(1).at("index"), 1);
  EXPECT_EQ(response.at("choices").at(1).at("text"), "bye");
  EXPECT_EQ(response.at("choices").at(1).at("finish_reason"), "length");
  EXPECT_TRUE(response.at("choices").at(0).at("logprobs").is_null());
  EXPECT_EQ(response.at("usage").at("total_tokens"), 12);

  json::object chat_body = chat_response(meta, choices, Usage{5, 7});
  EXPECT_EQ(chat_body.at("object"), "chat.completion");
  EXPECT_EQ(chat_body.at("choices").at(0).at("message").at("role"), "assistant");
  EXPECT_EQ(chat_body.at("choices").at(0).at("message").at("content"), "hello");

  json::object chunk = chat_chunk(meta, 1, json::object{{"content", "hi"}}, std::nullopt, "", true);
  EXPECT_EQ(chunk.at("object"), "chat.completion.chunk");
  EXPECT_TRUE(chunk.at("choices").at(0).at("finish_reason").is_null());
  EXPECT_EQ(chunk.at("choices").at(0).at("delta").at("content"), "hi");
  EXPECT_TRUE(chunk.at("usage").is_null());
  EXPECT_FALSE(completion_chunk(meta, 0, "x", std::nullopt, "stop", false).contains("usage"));

  json::object last = usage_chunk(meta, ApiKind::kChat, Usage{3, 4});
  EXPECT_TRUE(last.at("choices").as_array().empty());
  EXPECT_EQ(last.at("usage").at("completion_tokens"), 4);

  EXPECT_EQ(sse_event(json::object{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(std::string(openai_finish_reason(FinishReason::kCancelled)), "abort");
  EXPECT_EQ(std::string(openai_finish_reason(FinishReason::kTimeout)), "timeout");
}

// ---- stop strings ----

std::string run_filter(StopStringFilter& filter, const std::vector<std::string>& pieces,
                       std::vector<std::string>* shown = nullptr) {
  std::string out;
  for (const std::string& piece : pieces) {
    std::string part = filter.push(piece);
    if (shown) shown->push_back(part);
    out += part;
    if (filter.stopped()) break;
  }
  if (!filter.stopped()) out += filter.flush();
  return out;
}

TEST(StopStrings, WithinOnePieceAndAcrossPieces) {
  StopStringFilter one({"END"});
  EXPECT_EQ(run_filter(one, {"abc END def"}), "abc ");
  EXPECT_TRUE(one.stopped());
  EXPECT_EQ(one.matched(), "END");

  StopStringFilter split({"END"});
  std::vector<std::string> shown;
  EXPECT_EQ(run_filter(split, {"abc E", "N", "D tail"}, &shown), "abc ");
  EXPECT_EQ(shown[0], "abc ");  // "E" is held back
  EXPECT_EQ(shown[1], "");      // "EN" still could become END
  EXPECT_TRUE(split.stopped());
}

TEST(StopStrings, HeldTextIsReleasedWhenItCannotMatch) {
  StopStringFilter filter({"END"});
  std::vector<std::string> shown;
  EXPECT_EQ(run_filter(filter, {"xE", "Nx", "yy"}, &shown), "xENxyy");
  EXPECT_EQ(shown, (std::vector<std::string>{"x", "ENx", "yy"}));
  EXPECT_FALSE(filter.stopped());

  StopStringFilter tail({"END"});
  EXPECT_EQ(run_filter(tail, {"abc EN"}), "abc EN");  // flushed at the end
}

TEST(StopStrings, EarliestOfSeveralWins) {
  StopStringFilter filter({"world", "o", "lo w"});
  EXPECT_EQ(run_filter(filter, {"hello world"}), "hel");
  EXPECT_EQ(filter.matched(), "lo w");
  StopStringFilter overlap({"aab"});
  EXPECT_EQ(run_filter(overlap, {"a", "a", "a", "b", "c"}), "a");
  StopStringFilter none;
  EXPECT_EQ(run_filter(none, {"a", "b"}), "ab");
  EXPECT_EQ(none.held_bytes(), 0u);
}

TEST(StopStrings, MultiByteTextStaysValid) {
  StopStringFilter filter({"🌍!"});
  std::vector<std::string> shown;
  EXPECT_EQ(run_filter(filter, {"héllo ", "🌍", "!", "x"}, &shown), "héllo ");
  EXPECT_EQ(shown[1], "");  // the globe could start the stop string
  StopStringFilter other({"é"});
  EXPECT_EQ(run_filter(other, {"ab", "cé"}), "abc");
}

}  // namespace
}  // namespace dshpc
