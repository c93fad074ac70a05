// The gateway's SSE streams over real sockets: chunk shapes, [DONE], include_usage, stop strings
// that must not leak, characters split across tokens, errors mid-stream, disconnects that
// cancel, and many concurrent streams.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <thread>

#include "gateway_test_fixture.h"

namespace dshpc::gateway_test {
namespace {

namespace json = boost::json;

struct Stream {
  HttpResult http;
  std::vector<json::value> chunks;  // every data: payload before [DONE], parsed
  bool done = false;                // the last payload was [DONE]
  bool well_formed = true;          // every payload before [DONE] was JSON

  // The text of choice `index`: chat deltas' content or completion chunks' text.
  std::string text(int index = 0) const {
    std::string out;
    for (const json::value& chunk : chunks) {
      if (!chunk.as_object().contains("choices")) continue;
      for (const json::value& choice : chunk.at("choices").as_array()) {
        if (choice.at("index") != index) continue;
        if (const json::value* delta = choice.as_object().if_contains("delta")) {
          if (const json::value* content = delta->as_object().if_contains("content")) {
            out += content->as_string();
          }
        } else {
          out += choice.at("text").as_string();
        }
      }
    }
    return out;
  }
  std::vector<std::string> finish_reasons(int index = 0) const {
    std::vector<std::string> reasons;
    for (const json::value& chunk : chunks) {
      if (!chunk.as_object().contains("choices")) continue;
      for (const json::value& choice : chunk.at("choices").as_array()) {
        if (choice.at("index") == index && !choice.at("finish_reason").is_null()) {
          reasons.emplace_back(choice.at("finish_reason").as_string());
        }
      }
    }
    return reasons;
  }
};

Stream parse_stream(HttpResult http) {
  Stream stream;
  std::vector<std::string> payloads = sse_payloads(http.body);
  for (size_t i = 0; i < payloads.size(); ++i) {
    if (payloads[i] == "[DONE]") {
      stream.done = i + 1 == payloads.size();
      continue;
    }
    boost::system::error_code ec;
    json::value value = json::parse(payloads[i], ec);
    if (ec || !value.is_object()) {
      stream.well_formed = false;
      continue;
    }
    stream.chunks.push_back(std::move(value));
  }
  stream.http = std::move(http);
  return stream;
}

class GatewayStreaming : public GatewayFixture {
 protected:
  Stream stream(const std::string& target, const std::string& body) const {
    return parse_stream(post(target, body));
  }
  // The gateway unregisters a request just after it cancels it in the service.
  bool wait_no_requests_in_flight() const {
    for (int i = 0; i < 1000 && gateway_->in_flight() != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return gateway_->in_flight() == 0;
  }
};

TEST_F(GatewayStreaming, CompletionStreamsChunksThenDone) {
  start();
  Stream s = stream("/v1/completions", R"({"prompt": "x", "stream": true})");
  ASSERT_EQ(s.http.status, 200) << s.http.body;
  EXPECT_EQ(s.http.header("content-type"), "text/event-stream");
  EXPECT_EQ(s.http.header("transfer-encoding"), "chunked");
  EXPECT_TRUE(s.done);
  EXPECT_TRUE(s.well_formed);
  EXPECT_EQ(s.text(), kScriptText);
  EXPECT_EQ(s.finish_reasons(), std::vector<std::string>{"stop"});
  ASSERT_GE(s.chunks.size(), encode(kScriptText).size());  // one chunk per token, at least
  const json::value id = s.chunks[0].at("id");
  for (const json::value& chunk : s.chunks) {
    EXPECT_EQ(chunk.at("object"), "text_completion");
    EXPECT_EQ(chunk.at("id"), id);
    EXPECT_EQ(chunk.at("model"), kModel);
    EXPECT_FALSE(chunk.as_object().contains("usage"));  // only with include_usage
  }
  EXPECT_EQ(http_responses(gateway_->metrics().render(), config_.served_model_name,
                           "/v1/completions", 200),
            1);
}

// The request's "timeout" (or the server's default) becomes its deadline; a request the service
// ends with kTimeout is a 200 with the text so far and finish_reason "timeout" (streaming: the
// final chunk carries it, then [DONE]), counted as failure{reason="timeout"}.
TEST_F(GatewayStreaming, TimeoutSetsTheDeadlineAndEndsWithFinishReasonTimeout) {
  config_.request_timeout_s = 30;
  config_.max_request_timeout_s = 60;
  script_text(kScriptText, FinishReason::kTimeout);
  start();
  HttpResult whole = post("/v1/completions", R"({"prompt": "x", "timeout": 2.5})");
  ASSERT_EQ(whole.status, 200) << whole.body;
  json::value body = json::parse(whole.body);
  EXPECT_EQ(body.at("choices").at(0).at("finish_reason"), "timeout");
  EXPECT_EQ(body.at("choices").at(0).at("text"), kScriptText);  // the partial text is kept

  Stream streamed = stream("/v1/chat/completions", R"({
      "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 100})");
  ASSERT_EQ(streamed.http.status, 200) << streamed.http.body;
  EXPECT_TRUE(streamed.done);
  EXPECT_TRUE(streamed.well_formed);
  EXPECT_EQ(streamed.text(), kScriptText);
  EXPECT_EQ(streamed.finish_reasons(), std::vector<std::string>{"timeout"});

  HttpResult too_long = post("/v1/completions", R"({"prompt": "x", "timeout": 61})");
  EXPECT_EQ(too_long.status, 400) << too_long.body;
  EXPECT_EQ(json::parse(too_long.body).at("error").at("param"), "timeout");

  const std::vector<GenerationRequest> submitted = service_->submitted();
  ASSERT_EQ(submitted.size(), 2u);
  ASSERT_TRUE(submitted[0].deadline.has_value());
  EXPECT_EQ(*submitted[0].deadline - submitted[0].arrival, std::chrono::milliseconds(2500));
  ASSERT_TRUE(submitted[1].deadline.has_value());
  EXPECT_EQ(*submitted[1].deadline - submitted[1].arrival, std::chrono::seconds(30));

  const std::string metrics = gateway_->metrics().render();
  EXPECT_EQ(
      metric_value(metrics, "dshpc_request_failure_total{model=\"test-model\",reason=\"timeout\"}"),
      2);
  EXPECT_EQ(
      metric_value(metrics,
                   "dshpc_request_failure_total{model=\"test-model\",reason=\"invalid_request\"}"),
      1);
}

TEST_F(GatewayStreaming, ChatStreamsRoleFirstAndUsageLast) {
  start();
  Stream s = stream("/v1/chat/completions", R"({
      "messages": [{"role": "user", "content": "hi"}], "stream": true,
      "stream_options": {"include_usage": true}, "max_tokens": 100})");
  ASSERT_EQ(s.http.status, 200) << s.http.body;
  ASSERT_TRUE(s.done);
  ASSERT_GE(s.chunks.size(), 3u);
  const json::object& first = s.chunks.front().as_object();
  EXPECT_EQ(first.at("object"), "chat.completion.chunk");
  EXPECT_EQ(first.at("choices").at(0).at("delta").at("role"), "assistant");
  EXPECT_TRUE(first.at("usage").is_null());
  EXPECT_EQ(s.text(), kScriptText);
  EXPECT_EQ(s.finish_reasons(), std::vector<std::string>{"stop"});

  // The last chunk: no choices, the usage; every other chunk has "usage": null.
  const json::object& last = s.chunks.back().as_object();
  EXPECT_TRUE(last.at("choices").as_array().empty());
  const int64_t prompt = static_cast<int64_t>(service_->submitted().at(0).prompt_ids.size());
  const int64_t generated = static_cast<int64_t>(encode(kScriptText).size());
  EXPECT_EQ(last.at("usage").at("prompt_tokens"), prompt);
  EXPECT_EQ(last.at("usage").at("completion_tokens"), generated);
  EXPECT_EQ(last.at("usage").at("total_tokens"), prompt + generated);
  for (size_t i = 0; i + 1 < s.chunks.size(); ++i) {
    EXPECT_TRUE(s.chunks[i].at("usage").is_null());
    EXPECT_EQ(s.chunks[i].at("choices").as_array().size(), 1u);
  }
  // The finish chunk has an empty delta.
  const json::value& finish = s.chunks[s.chunks.size() - 2];
  EXPECT_EQ(finish.at("choices").at(0).at("finish_reason"), "stop");
  EXPECT_TRUE(finish.at("choices").at(0).at("delta").as_object().empty());
}

TEST_F(GatewayStreaming, LengthFinishAndSeveralTokensPerEvent) {
  script_text(kScriptText, FinishReason::kStop, /*tokens_per_event=*/3);
  start();
  Stream s = stream("/v1/completions", R"({"prompt": "x", "stream": true, "max_tokens": 5})");
  ASSERT_TRUE(s.done);
  const std::vector<int32_t> tokens = encode(kScriptText);
  EXPECT_EQ(
      s.text(),
      test_tokenizer().decode(std::vector<int32_t>(tokens.begin(), tokens.begin() + 5)).value());
  EXPECT_EQ(s.finish_reasons(), std::vector<std::string>{"length"});
}

TEST_F(GatewayStreaming, StopStringSplitAcrossTokensDoesNotLeak) {
  service_->set_token_delay(std::chrono::milliseconds(1));
  start();
  for (const char* target : {"/v1/completions", "/v1/chat/completions"}) {
    const std::string body =
        std::string(target) == "/v1/completions"
            ? R"({"prompt": "x", "stream": true, "stop": "s a t"})"
            : R"({"messages": [{"role": "user", "content": "x"}], "stream": true, "stop": ["s a t"]})";
    Stream s = stream(target, body);
    ASSERT_TRUE(s.done) << target;
    // Not even a prefix of the stop string was sent: the text is exactly what precedes it.
    EXPECT_EQ(s.text(), "Hello world! This i") << target;
    EXPECT_EQ(s.finish_reasons(), std::vector<std::string>{"stop"}) << target;
    for (const json::value& chunk : s.chunks) {
      EXPECT_EQ(json::serialize(chunk).find(" a"), std::string::npos) << json::serialize(chunk);
    }
    const std::string id = std::string(s.chunks.at(0).at("id").as_string()) + "-0";
    EXPECT_TRUE(service_->wait_for_cancel(id)) << target;
  }
}

TEST_F(GatewayStreaming, CharactersSplitAcrossTokensArriveWhole) {
  // Byte-level tokens of rare characters: some tokens hold only part of a character.
  const std::string text = "Grüße aus Köln 🌍🎉 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ done";
  std::vector<int32_t> tokens = encode(text);
  bool partial = false;
  for (int32_t id : tokens) {
    if (!valid_utf8(*test_tokenizer().model_token_bytes(id))) partial = true;
  }
  ASSERT_TRUE(partial) << "the text should contain a token that is part of a character";
  script_text(text);
  start();
  Stream s = stream("/v1/completions", R"({"prompt": "x", "stream": true, "max_tokens": 200})");
  ASSERT_TRUE(s.done);
  EXPECT_EQ(s.text(), text);
  for (const json::value& chunk : s.chunks) {
    const std::string piece(chunk.at("choices").at(0).at("text").as_string());
    EXPECT_TRUE(valid_utf8(piece));
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos);  // no U+FFFD
  }
}

TEST_F(GatewayStreaming, SeveralChoicesInterleaveByIndex) {
  start();
  Stream s = stream("/v1/chat/completions", R"({
      "messages": [{"role": "user", "content": "x"}], "stream": true, "n": 2, "seed": 5,
      "stream_options": {"include_usage": true}})");
  ASSERT_TRUE(s.done);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(s.text(i), kScriptText) << i;
    EXPECT_EQ(s.finish_reasons(i), std::vector<std::string>{"stop"}) << i;
  }
  const int64_t generated = static_cast<int64_t>(encode(kScriptText).size());
  EXPECT_EQ(s.chunks.back().at("usage").at("completion_tokens"), 2 * generated);
  std::vector<GenerationRequest> submitted = service_->submitted();
  ASSERT_EQ(submitted.size(), 2u);
  EXPECT_EQ(*submitted[1].sampling.seed, 6u);
}

TEST_F(GatewayStreaming, LogprobsTravelWithTheirChunks) {
  start();
  Stream s = stream("/v1/chat/completions", R"({
      "messages": [{"role": "user", "content": "x"}], "stream": true, "max_tokens": 4,
      "logprobs": true, "top_logprobs": 1})");
  ASSERT_TRUE(s.done);
  size_t entries = 0;
  for (const json::value& chunk : s.chunks) {
    const json::value& logprobs = chunk.at("choices").at(0).at("logprobs");
    if (logprobs.is_null()) continue;
    for (const json::value& entry : logprobs.at("content").as_array()) {
      EXPECT_EQ(entry.at("top_logprobs").as_array().size(), 1u);
      ++entries;
    }
  }
  EXPECT_EQ(entries, 4u);

  Stream completion = stream("/v1/completions",
                             R"({"prompt": "x", "stream": true, "max_tokens": 3, "logprobs": 0})");
  size_t tokens = 0;
  for (const json::value& chunk : completion.chunks) {
    const json::value& logprobs = chunk.at("choices").at(0).at("logprobs");
    if (!logprobs.is_null()) tokens += logprobs.at("tokens").as_array().size();
  }
  EXPECT_EQ(tokens, 3u);
}

TEST_F(GatewayStreaming, ErrorMidStreamIsAnSseErrorThenDone) {
  FakeScript script;
  script.tokens = encode(kScriptText);
  script.error = internal_error("rank 2 stopped responding");
  script.error_after = 3;
  service_->set_script([script](const GenerationRequest&) { return script; });
  start();
  HttpResult http = post("/v1/completions", R"({"prompt": "x", "stream": true})");
  EXPECT_EQ(http.status, 200);  // the status line went out with the first chunk
  std::vector<std::string> payloads = sse_payloads(http.body);
  ASSERT_GE(payloads.size(), 2u);
  EXPECT_EQ(payloads.back(), "[DONE]");
  json::value error = json::parse(payloads[payloads.size() - 2]);
  EXPECT_NE(std::string(error.at("error").at("message").as_string()).find("rank 2"),
            std::string::npos);
  EXPECT_EQ(error.at("error").at("type"), "server_error");
}

TEST_F(GatewayStreaming, DisconnectMidStreamCancelsTheRequest) {
  service_->set_token_delay(std::chrono::milliseconds(20));
  FakeScript script;
  for (int i = 0; i < 500; ++i) script.tokens.push_back(1000 + i);
  service_->set_script([script](const GenerationRequest&) { return script; });
  start();
  {
    TestConnection client(port());
    ASSERT_TRUE(client.send_all(make_request(
        "POST", "/v1/completions", R"({"prompt": "x", "stream": true, "max_tokens": 500})")));
    ASSERT_TRUE(client.read_until("\"text\""));
  }  // closed mid-stream
  ASSERT_EQ(service_->submitted().size(), 1u);
  EXPECT_TRUE(service_->wait_for_cancel(service_->submitted()[0].request_id));
  EXPECT_TRUE(service_->wait_idle());
  EXPECT_TRUE(wait_no_requests_in_flight());

  // The same for a client that leaves while waiting for a non-streamed answer.
  {
    TestConnection client(port());
    ASSERT_TRUE(client.send_all(
        make_request("POST", "/v1/completions", R"({"prompt": "x", "max_tokens": 500})")));
    for (int i = 0; i < 200 && service_->submitted().size() < 2; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  ASSERT_EQ(service_->submitted().size(), 2u);
  EXPECT_TRUE(service_->wait_for_cancel(service_->submitted()[1].request_id));
  EXPECT_TRUE(service_->wait_idle());
  EXPECT_TRUE(wait_no_requests_in_flight());
  EXPECT_GE(gateway_->http_stats().clients_gone_total, 2);
}

TEST_F(GatewayStreaming, ThirtyTwoConcurrentStreamsAllComplete) {
  service_->set_token_delay(std::chrono::milliseconds(1));
  config_.io_threads = 4;
  start();
  constexpr int kClients = 32;
  std::atomic<int> complete{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      const std::string body =
          c % 2 == 0 ? R"({"prompt": "x", "stream": true})"
                     : R"({"messages": [{"role": "user", "content": "x"}], "stream": true,
               "stream_options": {"include_usage": true}})";
      Stream s = stream(c % 2 == 0 ? "/v1/completions" : "/v1/chat/completions", body);
      if (s.http.status == 200 && s.done && s.well_formed && s.text() == kScriptText) ++complete;
    });
  }
  for (std::thread& client : clients) client.join();
  EXPECT_EQ(complete.load(), kClients);
  EXPECT_EQ(service_->submitted().size(), static_cast<size_t>(kClients));
  EXPECT_TRUE(service_->cancelled().empty());
  EXPECT_TRUE(wait_no_requests_in_flight());
}

}  // namespace
}  // namespace dshpc::gateway_test
