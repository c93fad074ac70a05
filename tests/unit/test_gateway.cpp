// The gateway over real sockets, non-streaming: completions and chat, parameters reaching the
// service, n, logprobs, stop strings, every error status, and the other routes.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <regex>
#include <sstream>

#include "coordinator/chat_template.h"
#include "gateway_test_fixture.h"

namespace dshpc::gateway_test {
namespace {

namespace json = boost::json;

using GatewayApi = GatewayFixture;

TEST_F(GatewayApi, CompletionReturnsTheGeneratedTextAndUsage) {
  start();
  HttpResult result =
      post("/v1/completions", R"({"model": "test-model", "prompt": "Say hi", "max_tokens": 50})");
  ASSERT_EQ(result.status, 200) << result.body;
  EXPECT_EQ(result.header("content-type"), "application/json");
  json::value body = json_of(result);
  EXPECT_EQ(body.at("object"), "text_completion");
  EXPECT_EQ(std::string(body.at("id").as_string()).rfind("cmpl-", 0), 0u);
  EXPECT_EQ(body.at("model"), kModel);
  EXPECT_GT(body.at("created").as_int64(), 1600000000);
  ASSERT_EQ(body.at("choices").as_array().size(), 1u);
  EXPECT_EQ(body.at("choices").at(0).at("index"), 0);
  EXPECT_EQ(body.at("choices").at(0).at("text"), kScriptText);
  EXPECT_EQ(body.at("choices").at(0).at("finish_reason"), "stop");
  EXPECT_TRUE(body.at("choices").at(0).at("logprobs").is_null());

  const std::vector<int32_t> prompt = encode("Say hi", /*add_special=*/true);
  const int64_t generated = static_cast<int64_t>(encode(kScriptText).size());
  EXPECT_EQ(body.at("usage").at("prompt_tokens"), static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(body.at("usage").at("completion_tokens"), generated);
  EXPECT_EQ(body.at("usage").at("total_tokens"), static_cast<int64_t>(prompt.size()) + generated);

  std::vector<GenerationRequest> submitted = service_->submitted();
  ASSERT_EQ(submitted.size(), 1u);
  EXPECT_EQ(submitted[0].prompt_ids, prompt);
  EXPECT_EQ(submitted[0].max_tokens, 50);
  EXPECT_EQ(submitted[0].model, kModel);
  EXPECT_EQ(submitted[0].request_id, std::string(body.at("id").as_string()) + "-0");
}

TEST_F(GatewayApi, MaxTokensEndsWithLengthAndDefaultsFollowOpenAi) {
  start();
  json::value body = json_of(post("/v1/completions", R"({"prompt": "x", "max_tokens": 3})"));
  EXPECT_EQ(body.at("choices").at(0).at("finish_reason"), "length");
  const std::vector<int32_t> tokens = encode(kScriptText);
  EXPECT_EQ(body.at("choices").at(0).at("text"),
            test_tokenizer()
                .decode(std::vector<int32_t>(tokens.begin(), tokens.begin() + 3))
                .value()
                .c_str());
  EXPECT_EQ(body.at("usage").at("completion_tokens"), 3);

  // Without max_tokens: 16 for completions, the rest of the context for chat.
  ASSERT_EQ(post("/v1/completions", R"({"prompt": "x"})").status, 200);
  ASSERT_EQ(
      post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}]})").status,
      200);
  std::vector<GenerationRequest> submitted = service_->submitted();
  ASSERT_EQ(submitted.size(), 3u);
  EXPECT_EQ(submitted[1].max_tokens, 16);
  EXPECT_EQ(submitted[2].max_tokens, 4096 - static_cast<int64_t>(submitted[2].prompt_ids.size()));
}

TEST_F(GatewayApi, SamplingParametersReachTheService) {
  start();
  HttpResult result = post("/v1/completions", R"({
      "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0.25, "top_p": 0.5, "top_k": -1,
      "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.2,
      "stop_token_ids": [11, 12], "ignore_eos": true, "unknown_field": [1, 2]})");
  ASSERT_EQ(result.status, 200) << result.body;
  GenerationRequest request = service_->submitted().at(0);
  EXPECT_EQ(request.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_FLOAT_EQ(request.sampling.temperature, 0.25f);
  EXPECT_FLOAT_EQ(request.sampling.top_p, 0.5f);
  EXPECT_EQ(request.sampling.top_k, 0);
  EXPECT_EQ(request.sampling.seed, std::optional<uint64_t>(7));
  EXPECT_FLOAT_EQ(request.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(request.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(request.sampling.repetition_penalty, 1.2f);
  EXPECT_EQ(request.sampling.stop_token_ids, (std::vector<int32_t>{11, 12}));
  EXPECT_TRUE(request.sampling.ignore_eos);
  EXPECT_EQ(request.sampling.top_logprobs, -1);
}

TEST_F(GatewayApi, ChatRendersTheTemplateAndAnswersAsAssistant) {
  start();
  HttpResult result = post("/v1/chat/completions", R"({
      "model": "test-model", "max_completion_tokens": 100,
      "messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                {"type": "text", "text": "there"}]}]})");
  ASSERT_EQ(result.status, 200) << result.body;
  json::value body = json_of(result);
  EXPECT_EQ(body.at("object"), "chat.completion");
  EXPECT_EQ(std::string(body.at("id").as_string()).rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(body.at("choices").at(0).at("message").at("role"), "assistant");
  EXPECT_EQ(body.at("choices").at(0).at("message").at("content"), kScriptText);
  EXPECT_EQ(body.at("choices").at(0).at("finish_reason"), "stop");

  json::array messages = json::parse(R"([{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hi\nthere"}])")
                             .as_array();
  ChatRenderer renderer = ChatRenderer::for_tokenizer(test_tokenizer()).value();
  std::vector<int32_t> expected = renderer.render_ids(test_tokenizer(), messages).value();
  GenerationRequest request = service_->submitted().at(0);
  EXPECT_EQ(request.prompt_ids, expected);
  EXPECT_EQ(request.max_tokens, 100);
  EXPECT_EQ(body.at("usage").at("prompt_tokens"), static_cast<int64_t>(expected.size()));
}

TEST_F(GatewayApi, NChoicesAreSeparateRequestsWithDistinctSeeds) {
  start();
  HttpResult result = post("/v1/completions", R"({"prompt": "x", "n": 2, "seed": 100})");
  ASSERT_EQ(result.status, 200) << result.body;
  json::value body = json_of(result);
  ASSERT_EQ(body.at("choices").as_array().size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(body.at("choices").at(i).at("index"), i);
    EXPECT_EQ(body.at("choices").at(i).at("text"), kScriptText);
  }
  const int64_t generated = static_cast<int64_t>(encode(kScriptText).size());
  EXPECT_EQ(body.at("usage").at("completion_tokens"), 2 * generated);
  std::vector<GenerationRequest> submitted = service_->submitted();
  ASSERT_EQ(submitted.size(), 2u);
  EXPECT_NE(submitted[0].request_id, submitted[1].request_id);
  EXPECT_EQ(*submitted[0].sampling.seed, 100u);
  EXPECT_EQ(*submitted[1].sampling.seed, 101u);
  // Unseeded choices stay unseeded.
  ASSERT_EQ(post("/v1/completions", R"({"prompt": "x", "n": 3})").status, 200);
  for (size_t i = 2; i < 5; ++i) EXPECT_FALSE(service_->submitted().at(i).sampling.seed);
}

TEST_F(GatewayApi, CompletionLogprobsHaveTheOpenAiShape) {
  start();
  HttpResult result = post("/v1/completions", R"({"prompt": "x", "max_tokens": 4, "logprobs": 2})");
  json::value body = json_of(result);
  // Floats are the shortest decimal that reads back as the same float (-0.51, not
  // -0.50999999046325684).
  EXPECT_EQ(body.at("choices").at(0).at("logprobs").at("token_logprobs").at(1).as_double(), -0.51)
      << result.body;
  EXPECT_EQ(service_->submitted().at(0).sampling.top_logprobs, 2);
  const json::object& logprobs = body.at("choices").at(0).at("logprobs").as_object();
  const std::vector<int32_t> tokens = encode(kScriptText);
  ASSERT_EQ(logprobs.at("tokens").as_array().size(), 4u);
  ASSERT_EQ(logprobs.at("token_logprobs").as_array().size(), 4u);
  ASSERT_EQ(logprobs.at("top_logprobs").as_array().size(), 4u);
  ASSERT_EQ(logprobs.at("text_offset").as_array().size(), 4u);
  std::string joined;
  int64_t previous_offset = -1;
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(logprobs.at("text_offset").at(i).as_int64(), static_cast<int64_t>(joined.size()));
    EXPECT_GT(logprobs.at("text_offset").at(i).as_int64(), previous_offset);
    previous_offset = logprobs.at("text_offset").at(i).as_int64();
    joined += logprobs.at("tokens").at(i).as_string();
    EXPECT_NEAR(logprobs.at("token_logprobs").at(i).as_double(), -0.5 - 0.01 * i, 1e-5);
    const json::object& top = logprobs.at("top_logprobs").at(i).as_object();
    EXPECT_GE(top.size(), 1u);
    EXPECT_LE(top.size(), 3u);
    EXPECT_TRUE(top.contains(logprobs.at("tokens").at(i).as_string()));
  }
  EXPECT_EQ(joined, std::string(body.at("choices").at(0).at("text").as_string()));
}

TEST_F(GatewayApi, ChatLogprobsHaveTheOpenAiShape) {
  start();
  json::value body = json_of(post("/v1/chat/completions", R"({
      "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
      "logprobs": true, "top_logprobs": 2})"));
  const json::array& content = body.at("choices").at(0).at("logprobs").at("content").as_array();
  ASSERT_EQ(content.size(), 3u);
  const std::vector<int32_t> tokens = encode(kScriptText);
  for (size_t i = 0; i < 3; ++i) {
    const json::object& entry = content[i].as_object();
    EXPECT_EQ(entry.at("token"), test_tokenizer().decode(std::vector<int32_t>{tokens[i]})->c_str());
    EXPECT_TRUE(entry.at("logprob").is_double());
    const std::string bytes = *test_tokenizer().model_token_bytes(tokens[i]);
    ASSERT_EQ(entry.at("bytes").as_array().size(), bytes.size());
    for (size_t b = 0; b < bytes.size(); ++b) {
      EXPECT_EQ(entry.at("bytes").at(b).as_int64(), static_cast<unsigned char>(bytes[b]));
    }
    ASSERT_EQ(entry.at("top_logprobs").as_array().size(), 2u);
    EXPECT_TRUE(entry.at("top_logprobs").at(1).as_object().contains("bytes"));
  }
}

TEST_F(GatewayApi, StopStringEndsTheTextAndCancelsTheRequest) {
  service_->set_token_delay(std::chrono::milliseconds(2));
  start();
  // "s a t" spans the tokens of "is", " a" and " test"; neither it nor anything after is shown.
  HttpResult result = post("/v1/completions", R"({"prompt": "x", "stop": ["zzz", "s a t"]})");
  ASSERT_EQ(result.status, 200) << result.body;
  json::value body = json_of(result);
  EXPECT_EQ(body.at("choices").at(0).at("text"), "Hello world! This i");
  EXPECT_EQ(body.at("choices").at(0).at("finish_reason"), "stop");
  const std::string id = std::string(body.at("id").as_string()) + "-0";
  EXPECT_TRUE(service_->wait_for_cancel(id));
  // Tokens up to the one that completed the stop string count.
  EXPECT_LT(body.at("usage").at("completion_tokens").as_int64(),
            static_cast<int64_t>(encode(kScriptText).size()));

  // A stop string that never appears changes nothing.
  json::value other = json_of(post("/v1/completions", R"({"prompt": "x", "stop": "never"})"));
  EXPECT_EQ(other.at("choices").at(0).at("text"), kScriptText);
}

// ---- errors ----

TEST_F(GatewayApi, MalformedAndInvalidRequestsAre400) {
  config_.max_n = 4;
  start();
  expect_error(post("/v1/completions", R"({"prompt": "x",)"), 400);
  expect_error(post("/v1/completions", R"({"prompt": "x", "temperature": NaN})"), 400);
  expect_error(post("/v1/completions", ""), 400);
  expect_error(post("/v1/completions", "[1]"), 400);
  expect_error(post("/v1/completions", R"({"prompt": "x", "max_tokens": -1})"), 400, "max_tokens");
  expect_error(post("/v1/completions", R"({"prompt": "x", "max_tokens": "5"})"), 400, "max_tokens");
  expect_error(post("/v1/completions", R"({"prompt": "x", "temperature": 7})"), 400, "temperature");
  expect_error(post("/v1/completions", R"({"prompt": "x", "n": 5})"), 400, "n");
  expect_error(post("/v1/completions", R"({"prompt": "x", "echo": true})"), 400, "echo");
  expect_error(post("/v1/completions", R"({"prompt": [1, 999999]})"), 400, "prompt");
  expect_error(post("/v1/completions", R"({"prompt": "x", "stop_token_ids": [999999]})"), 400,
               "stop_token_ids");
  expect_error(post("/v1/chat/completions", R"({"messages": "hello"})"), 400, "messages");
  expect_error(post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}],
                                                "stream": 1})"),
               400, "stream");
  EXPECT_TRUE(service_->submitted().empty());
  // Each refusal counts once as a failure (invalid_request) and as an HTTP 400.
  const std::string text = gateway_->metrics().render();
  const std::string& model = config_.served_model_name;
  const double refused = http_responses(text, model, "/v1/completions", 400) +
                         http_responses(text, model, "/v1/chat/completions", 400);
  EXPECT_GE(http_responses(text, model, "/v1/completions", 400), 11);
  EXPECT_EQ(metric_value(text, "dshpc_request_failure_total{model=\"" + model +
                                   "\",reason=\"invalid_request\"}"),
            refused);
}

TEST_F(GatewayApi, PromptsLongerThanTheContextAre400) {
  ServiceStatus status = service_->status();
  status.max_context = 32;
  service_->set_status(status);
  start();
  std::string long_prompt;
  for (int i = 0; i < 60; ++i) long_prompt += "word ";
  json::object error = expect_error(
      post("/v1/completions", R"({"prompt": ")" + long_prompt + R"("})"), 400, "prompt");
  EXPECT_NE(std::string(error.at("message").as_string()).find("context"), std::string::npos);
  error = expect_error(post("/v1/completions", R"({"prompt": "hi", "max_tokens": 31})"), 400,
                       "max_tokens");
  EXPECT_NE(std::string(error.at("message").as_string()).find("32"), std::string::npos);
  // Exactly filling the context is fine.
  const int64_t prompt_tokens = static_cast<int64_t>(encode("hi", true).size());
  EXPECT_EQ(post("/v1/completions",
                 R"({"prompt": "hi", "max_tokens": )" + std::to_string(32 - prompt_tokens) + "}")
                .status,
            200);
}

TEST_F(GatewayApi, UnknownModelPathAndMethod) {
  start();
  expect_error(post("/v1/completions", R"({"model": "gpt-4o", "prompt": "x"})"), 404, "model",
               "model_not_found");
  expect_error(post("/v1/chat/completions",
                    R"({"model": "other", "messages": [{"role": "user", "content": "x"}]})"),
               404, "model", "model_not_found");
  expect_error(get("/v1/nothing"), 404, "", "not_found");
  expect_error(get("/"), 404);
  HttpResult wrong_method = get("/v1/completions");
  expect_error(wrong_method, 405, "", "method_not_allowed");
  EXPECT_EQ(wrong_method.header("allow"), "POST");
  expect_error(post("/health", "{}"), 405);
  expect_error(http_call(port(), "DELETE", "/v1/models"), 405);
}

TEST_F(GatewayApi, HeadRequestsGetAHeaderWithoutABody) {
  start();
  TestConnection client(port());
  ASSERT_TRUE(
      client.send_all(make_request("HEAD", "/health", "") + make_request("GET", "/health", "")));
  // The 405 to HEAD carries no body, so the next response parses cleanly after it.
  ASSERT_TRUE(client.read_until("\r\n\r\n"));
  ASSERT_TRUE(client.read_until("{\"status\":\"ok\"}"));
  const std::string& bytes = client.received();
  EXPECT_EQ(bytes.rfind("HTTP/1.1 405", 0), 0u) << bytes;
  const size_t second = bytes.find("HTTP/1.1 200");
  ASSERT_NE(second, std::string::npos) << bytes;
  EXPECT_EQ(bytes.substr(0, second).find("{"), std::string::npos) << bytes;
}

TEST_F(GatewayApi, SubmitErrorsMapToHttpStatuses) {
  config_.retry_after_seconds = 3;
  start();
  const std::string request = R"({"prompt": "x"})";

  service_->set_submit_error(resource_exhausted("queue is full"));
  HttpResult busy = post("/v1/completions", request);
  json::object error = expect_error(busy, 429, "", "rate_limit_exceeded");
  EXPECT_EQ(busy.header("retry-after"), "3");
  EXPECT_EQ(error.at("type"), "rate_limit_error");

  service_->set_submit_error(unavailable("draining"));
  HttpResult down = post("/v1/completions", request);
  expect_error(down, 503);
  EXPECT_EQ(down.header("retry-after"), "3");

  service_->set_submit_error(invalid_argument("prompt can never fit"));
  expect_error(post("/v1/completions", request), 400);
  service_->set_submit_error(internal_error("bug"));
  expect_error(post("/v1/completions", request), 500);

  // n = 3 and the second submit fails: the first is cancelled, the client gets the 429.
  service_->set_token_delay(std::chrono::milliseconds(50));
  service_->set_submit_error(resource_exhausted("queue is full"), 1);
  expect_error(post("/v1/completions", R"({"prompt": "x", "n": 3})"), 429);
  const std::string first = service_->submitted().back().request_id;
  EXPECT_EQ(first.substr(first.size() - 2), "-0");
  EXPECT_TRUE(service_->wait_for_cancel(first));
  EXPECT_TRUE(service_->wait_idle());

  service_->set_submit_error(std::nullopt);
  service_->set_token_delay(std::chrono::milliseconds(0));
  EXPECT_EQ(post("/v1/completions", request).status, 200);
}

TEST_F(GatewayApi, ErrorEventsDuringAGenerationAre500Or503) {
  start();
  FakeScript script;
  script.tokens = encode(kScriptText);
  script.error = internal_error("worker 3 died");
  script.error_after = 2;
  service_->set_script([script](const GenerationRequest&) { return script; });
  json::object error = expect_error(post("/v1/completions", R"({"prompt": "x"})"), 500);
  EXPECT_NE(std::string(error.at("message").as_string()).find("worker 3 died"), std::string::npos);

  script.error = unavailable("shutting down");
  service_->set_script([script](const GenerationRequest&) { return script; });
  HttpResult down =
      post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "n": 2})");
  expect_error(down, 503);
  EXPECT_FALSE(down.header("retry-after").empty());
}

TEST_F(GatewayApi, LoadingServiceGives503AndHealthShowsProgress) {
  ServiceStatus status;
  status.state = ServiceState::kLoading;
  status.load_progress = 0.25;
  status.load_bytes_done = 1 << 20;
  status.load_bytes_total = 4 << 20;
  service_->set_status(status);
  start();
  HttpResult health = get("/health");
  EXPECT_EQ(health.status, 503);
  EXPECT_EQ(health.header("content-type"), "application/json");
  json::value body = json_of(health);
  EXPECT_EQ(body.at("status"), "loading");
  EXPECT_DOUBLE_EQ(body.at("progress").as_double(), 0.25);
  EXPECT_DOUBLE_EQ(body.at("percent").to_number<double>(), 25.0);
  EXPECT_EQ(body.at("loaded_bytes"), 1 << 20);
  EXPECT_EQ(body.at("total_bytes"), 4 << 20);
  HttpResult completion = post("/v1/completions", R"({"prompt": "x"})");
  json::object error = expect_error(completion, 503, "", "service_unavailable");
  EXPECT_NE(std::string(error.at("message").as_string()).find("loading"), std::string::npos);
  EXPECT_FALSE(completion.header("retry-after").empty());
  EXPECT_TRUE(service_->submitted().empty());
  // Non-generation routes work while loading.
  EXPECT_EQ(get("/v1/models").status, 200);
  EXPECT_EQ(get("/metrics").status, 200);

  status.state = ServiceState::kReady;
  service_->set_status(status);
  health = get("/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(json_of(health).at("status"), "ok");
  EXPECT_EQ(post("/v1/completions", R"({"prompt": "x"})").status, 200);
}

TEST_F(GatewayApi, DrainingRefusesNewWork) {
  start();
  gateway_->begin_drain();
  HttpResult health = get("/health");
  EXPECT_EQ(health.status, 503);
  EXPECT_EQ(json_of(health).at("status"), "draining");
  HttpResult refused = post("/v1/completions", R"({"prompt": "x"})");
  expect_error(refused, 503);
  EXPECT_FALSE(refused.header("retry-after").empty());
}

// ---- other routes ----

TEST_F(GatewayApi, ModelsListsTheServedModel) {
  start();
  json::value body = json_of(get("/v1/models"));
  EXPECT_EQ(body.at("object"), "list");
  ASSERT_EQ(body.at("data").as_array().size(), 1u);
  EXPECT_EQ(body.at("data").at(0).at("id"), kModel);
  EXPECT_EQ(body.at("data").at(0).at("object"), "model");
  EXPECT_EQ(body.at("data").at(0).at("max_model_len"), 4096);
  EXPECT_EQ(json_of(get("/v1/models/test-model")).at("id"), kModel);
  expect_error(get("/v1/models/other"), 404, "model", "model_not_found");
}

TEST_F(GatewayApi, TokenizeAndDetokenizeRoundTrip) {
  start();
  const std::string text = "Hello, wörld! 你好 🌍";
  HttpResult tokenized = post("/tokenize", json::serialize(json::object{{"prompt", text}}));
  ASSERT_EQ(tokenized.status, 200) << tokenized.body;
  json::value body = json_of(tokenized);
  const std::vector<int32_t> expected = encode(text, /*add_special=*/true);
  ASSERT_EQ(body.at("count"), static_cast<int64_t>(expected.size()));
  json::array tokens = body.at("tokens").as_array();
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(tokens[i], expected[i]);

  json::value plain = json_of(post(
      "/tokenize", json::serialize(json::object{{"prompt", text}, {"add_special_tokens", false}})));
  json::value back =
      json_of(post("/detokenize", json::serialize(json::object{{"tokens", plain.at("tokens")}})));
  EXPECT_EQ(back.at("prompt"), text.c_str());

  json::value chat =
      json_of(post("/tokenize", R"({"messages": [{"role": "user", "content": "hi"}]})"));
  EXPECT_GT(chat.at("count").as_int64(), 2);

  expect_error(post("/detokenize", R"({"tokens": [1, 99999999]})"), 400, "tokens");
  expect_error(post("/detokenize", R"({"tokens": "abc"})"), 400, "tokens");
  expect_error(post("/detokenize", R"({})"), 400, "tokens");
  expect_error(post("/tokenize", R"({"prompt": 5})"), 400, "prompt");
  expect_error(post("/tokenize", R"({})"), 400);
  expect_error(post("/tokenize", R"({"prompt": "x", "model": "nope"})"), 404, "model");
}

TEST_F(GatewayApi, MetricsTextParsesAndCountsRequests) {
  start();
  ASSERT_EQ(post("/v1/completions", R"({"prompt": "x"})").status, 200);
  ASSERT_EQ(post("/v1/completions", R"({"prompt": "x", "n": 2})").status, 200);
  ASSERT_EQ(post("/v1/completions", R"({"prompt": 1})").status, 400);
  ASSERT_EQ(get("/nope").status, 404);
  HttpResult metrics = get("/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_EQ(metrics.header("content-type").rfind("text/plain; version=0.0.4", 0), 0u);

  const std::regex sample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? (-?[0-9.eE+-]+|\+Inf|NaN)$)");
  std::istringstream lines(metrics.body);
  std::string line;
  std::map<std::string, double> values;  // "name{labels}" → value
  while (std::getline(lines, line)) {
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) continue;
    std::smatch match;
    ASSERT_TRUE(std::regex_match(line, match, sample)) << "bad line: " << line;
    EXPECT_EQ(match[1].str().rfind("dshpc_", 0), 0u) << line;
    values[line.substr(0, line.rfind(' '))] = std::stod(line.substr(line.rfind(' ') + 1));
  }
  // prometheus-cpp writes the family's constant label (model) first, then the others sorted.
  const std::string model = "model=\"test-model\"";
  EXPECT_EQ(
      values["dshpc_http_requests_total{" + model + ",code=\"200\",endpoint=\"/v1/completions\"}"],
      2);
  EXPECT_EQ(
      values["dshpc_http_requests_total{" + model + ",code=\"400\",endpoint=\"/v1/completions\"}"],
      1);
  EXPECT_EQ(values["dshpc_http_requests_total{" + model + ",code=\"404\",endpoint=\"other\"}"], 1);
  const double generated = static_cast<double>(encode(kScriptText).size());
  EXPECT_EQ(values["dshpc_generation_tokens_total{" + model + "}"], 3 * generated);
  EXPECT_EQ(values["dshpc_prompt_tokens_total{" + model + "}"],
            2.0 * static_cast<double>(encode("x", true).size()));
  EXPECT_EQ(values["dshpc_e2e_request_latency_seconds_count{" + model + "}"], 2);
  EXPECT_EQ(values["dshpc_time_to_first_token_seconds_count{" + model + "}"], 2);
  // One per HTTP request (the n = 2 request counts once), and the 400 as a failure.
  EXPECT_EQ(values["dshpc_request_success_total{" + model + ",finished_reason=\"stop\"}"], 2);
  EXPECT_EQ(values["dshpc_request_failure_total{" + model + ",reason=\"invalid_request\"}"], 1);
  EXPECT_TRUE(values.count("dshpc_num_requests_running{" + model + "}"));
  EXPECT_TRUE(values.count("dshpc_num_requests_waiting{" + model + "}"));
  EXPECT_EQ(values["dshpc_model_ready{" + model + "}"], 1);
  EXPECT_GE(values["dshpc_http_connections_accepted_total{" + model + "}"], 5);
}

}  // namespace
}  // namespace dshpc::gateway_test
