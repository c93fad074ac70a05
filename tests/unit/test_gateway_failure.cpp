// Gateway::fail_all, the gateway's part of a job going down (a rank died or hung): every open
// request ends with an error the client can see — an SSE error event then [DONE] for a stream, a
// 503 in the OpenAI shape otherwise — and the service, whose thread may be the failed one, is
// left alone.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <thread>

#include "gateway_test_fixture.h"

namespace dshpc::gateway_test {
namespace {

namespace json = boost::json;

class GatewayFailure : public GatewayFixture {
 protected:
  void SetUp() override {
    GatewayFixture::SetUp();
    service_->set_token_delay(std::chrono::milliseconds(20));
    FakeScript script;
    for (int i = 0; i < 1000; ++i) script.tokens.push_back(1000 + i);
    service_->set_script([script](const GenerationRequest&) { return script; });
  }
};

TEST_F(GatewayFailure, EveryOpenRequestEndsWithAnError) {
  start();
  TestConnection completion_stream(port());
  TestConnection chat_stream(port());
  TestConnection whole(port());
  ASSERT_TRUE(completion_stream.send_all(make_request(
      "POST", "/v1/completions", R"({"prompt": "x", "stream": true, "max_tokens": 900})")));
  ASSERT_TRUE(chat_stream.send_all(make_request(
      "POST", "/v1/chat/completions",
      R"({"messages": [{"role": "user", "content": "x"}], "stream": true, "max_tokens": 900})")));
  ASSERT_TRUE(whole.send_all(
      make_request("POST", "/v1/completions", R"({"prompt": "x", "max_tokens": 900})")));
  ASSERT_TRUE(completion_stream.read_until("\"text\""));
  ASSERT_TRUE(chat_stream.read_until("\"content\""));
  for (int i = 0; i < 500 && service_->submitted().size() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_EQ(service_->submitted().size(), 3u);
  ASSERT_EQ(gateway_->in_flight(), 3);

  const auto started = std::chrono::steady_clock::now();
  gateway_->fail_all("rank 1 is gone", std::chrono::milliseconds(2000));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));

  for (TestConnection* stream : {&completion_stream, &chat_stream}) {
    std::optional<HttpResult> http = stream->read_response();
    ASSERT_TRUE(http.has_value());
    EXPECT_EQ(http->status, 200);  // the status line went out with the first chunk
    std::vector<std::string> payloads = sse_payloads(http->body);
    ASSERT_GE(payloads.size(), 3u);
    EXPECT_EQ(payloads.back(), "[DONE]");
    json::value error = json::parse(payloads[payloads.size() - 2]);
    EXPECT_EQ(error.at("error").at("message"), "rank 1 is gone");
    EXPECT_EQ(error.at("error").at("type"), "server_error");
    EXPECT_EQ(error.at("error").at("code"), "service_unavailable");
    EXPECT_TRUE(stream->wait_closed());
  }
  std::optional<HttpResult> http = whole.read_response();
  ASSERT_TRUE(http.has_value());
  json::object error = expect_error(*http, 503, "", "service_unavailable");
  EXPECT_EQ(error.at("message"), "rank 1 is gone");
  EXPECT_FALSE(http->header("retry-after").empty());
  EXPECT_TRUE(whole.wait_closed());

  EXPECT_TRUE(service_->cancelled().empty());  // the service was not called
  EXPECT_EQ(gateway_->in_flight(), 0);
  EXPECT_EQ(gateway_->port(), 0);  // stopped
  gateway_->stop();                // and a later stop() is harmless
}

TEST_F(GatewayFailure, IdleGatewayStopsAtOnce) {
  start();
  TestConnection idle(port());
  ASSERT_TRUE(idle.connected());
  const auto started = std::chrono::steady_clock::now();
  gateway_->fail_all("gone");
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(900));
  EXPECT_TRUE(idle.wait_closed());
}

}  // namespace
}  // namespace dshpc::gateway_test
