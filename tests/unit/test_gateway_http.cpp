// The HTTP layer under the gateway: keep-alive and pipelining, body/header limits, malformed
// requests, slow clients, the connection limit, HTTP/1.0, 100-continue and graceful stop.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <thread>

#include "gateway_test_fixture.h"

namespace dshpc::gateway_test {
namespace {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;

using GatewayHttp = GatewayFixture;

TEST_F(GatewayHttp, KeepAliveServesSeveralRequestsOnOneConnection) {
  start();
  TestConnection client(port());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client.send_all(make_request("GET", "/health", "")));
    std::optional<HttpResult> health = client.read_response();
    ASSERT_TRUE(health) << i;
    EXPECT_EQ(health->status, 200);
    EXPECT_TRUE(health->keep_alive);
    ASSERT_TRUE(client.send_all(make_request("POST", "/v1/completions", R"({"prompt": "x"})")));
    std::optional<HttpResult> completion = client.read_response();
    ASSERT_TRUE(completion) << i;
    EXPECT_EQ(completion->status, 200);
    ASSERT_TRUE(client.send_all(
        make_request("POST", "/v1/completions", R"({"prompt": "x", "stream": true})")));
    std::optional<HttpResult> stream = client.read_response();
    ASSERT_TRUE(stream) << i;
    EXPECT_EQ(sse_payloads(stream->body).back(), "[DONE]");
  }
  // A client error does not end the connection either.
  ASSERT_TRUE(client.send_all(make_request("POST", "/v1/completions", "{bad json")));
  EXPECT_EQ(client.read_response()->status, 400);
  ASSERT_TRUE(client.send_all(make_request("GET", "/v1/models", "")));
  EXPECT_EQ(client.read_response()->status, 200);
  EXPECT_EQ(gateway_->http_stats().connections_accepted_total, 1);
}

TEST_F(GatewayHttp, PipelinedRequestsAreAnsweredInOrder) {
  service_->set_token_delay(std::chrono::milliseconds(1));
  start();
  TestConnection client(port());
  ASSERT_TRUE(client.send_all(make_request("POST", "/v1/completions", R"({"prompt": "x"})") +
                              make_request("GET", "/v1/models", "") +
                              make_request("GET", "/nope", "")));
  std::optional<HttpResult> first = client.read_response();
  std::optional<HttpResult> second = client.read_response();
  std::optional<HttpResult> third = client.read_response();
  ASSERT_TRUE(first && second && third);
  EXPECT_EQ(first->status, 200);
  EXPECT_EQ(json::parse(first->body).at("object"), "text_completion");
  EXPECT_EQ(second->status, 200);
  EXPECT_EQ(json::parse(second->body).at("object"), "list");
  EXPECT_EQ(third->status, 404);
}

TEST_F(GatewayHttp, BodyOverTheLimitIs413) {
  config_.max_body_bytes = 4096;
  start();
  // Declared up front: answered from the headers, before any body byte is read.
  TestConnection declared(port());
  ASSERT_TRUE(declared.send_all(
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"));
  std::optional<HttpResult> answer = declared.read_response();
  ASSERT_TRUE(answer);
  expect_error(*answer, 413, "", "request_too_large");
  EXPECT_FALSE(answer->keep_alive);
  EXPECT_TRUE(declared.wait_closed());

  // Sent in full.
  std::string big = R"({"prompt": ")" + std::string(20000, 'a') + R"("})";
  expect_error(post("/v1/completions", big), 413);

  // Chunked, so the size is only known while reading.
  TestConnection chunked(port());
  std::string request =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 10; ++i) request += "400\r\n" + std::string(1024, 'b') + "\r\n";
  request += "0\r\n\r\n";
  ASSERT_TRUE(chunked.send_all(request));
  std::optional<HttpResult> chunked_answer = chunked.read_response();
  ASSERT_TRUE(chunked_answer);
  EXPECT_EQ(chunked_answer->status, 413);
  EXPECT_GE(gateway_->http_stats().body_too_large_total, 3);
  // The server is fine afterwards.
  EXPECT_EQ(get("/health").status, 200);
}

TEST_F(GatewayHttp, OversizedHeadersAre431AndGarbageIs400) {
  config_.max_header_bytes = 4096;
  start();
  HttpResult big =
      http_call(port(), "GET", "/health", "", {"X-Padding: " + std::string(8000, 'p')});
  expect_error(big, 431, "", "headers_too_large");

  TestConnection garbage(port());
  ASSERT_TRUE(garbage.send_all("THIS IS NOT HTTP\r\n\r\n"));
  std::optional<HttpResult> answer = garbage.read_response();
  ASSERT_TRUE(answer);
  expect_error(*answer, 400);
  EXPECT_TRUE(garbage.wait_closed());

  TestConnection bad_length(port());
  ASSERT_TRUE(bad_length.send_all("POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n"));
  ASSERT_TRUE(bad_length.read_response());

  TestConnection binary(port());
  ASSERT_TRUE(binary.send_all(std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) +
                              "\r\n\r\n"));
  std::optional<HttpResult> tls = binary.read_response();
  ASSERT_TRUE(tls);
  EXPECT_EQ(tls->status, 400);
  EXPECT_EQ(get("/health").status, 200);
}

TEST_F(GatewayHttp, SlowAndIdleClientsTimeOut) {
  config_.read_timeout = std::chrono::milliseconds(200);
  start();
  // Half a request, then nothing: 408 and closed.
  TestConnection slow(port());
  ASSERT_TRUE(slow.send_all("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le"));
  const Clock::time_point start_time = Clock::now();
  std::optional<HttpResult> answer = slow.read_response(std::chrono::milliseconds(2000));
  ASSERT_TRUE(answer);
  expect_error(*answer, 408, "", "request_timeout");
  EXPECT_LT(Clock::now() - start_time, std::chrono::milliseconds(1500));
  EXPECT_TRUE(slow.wait_closed());

  // A body that stops halfway.
  TestConnection stalled(port());
  ASSERT_TRUE(stalled.send_all(
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\""));
  std::optional<HttpResult> stalled_answer = stalled.read_response(std::chrono::milliseconds(2000));
  ASSERT_TRUE(stalled_answer);
  EXPECT_EQ(stalled_answer->status, 408);

  // An idle keep-alive connection is closed without an answer.
  TestConnection idle(port());
  ASSERT_TRUE(idle.send_all(make_request("GET", "/health", "")));
  ASSERT_TRUE(idle.read_response());
  EXPECT_TRUE(idle.wait_closed(std::chrono::milliseconds(2000)));
  EXPECT_GE(gateway_->http_stats().read_timeouts_total, 3);
}

TEST_F(GatewayHttp, ConnectionsOverTheLimitGet503) {
  config_.max_connections = 2;
  start();
  TestConnection first(port());
  TestConnection second(port());
  ASSERT_TRUE(first.send_all(make_request("GET", "/health", "")));
  ASSERT_TRUE(first.read_response());
  ASSERT_TRUE(second.send_all(make_request("GET", "/health", "")));
  ASSERT_TRUE(second.read_response());

  TestConnection third(port());
  std::optional<HttpResult> refused = third.read_response();
  ASSERT_TRUE(refused);
  expect_error(*refused, 503, "", "service_unavailable");
  EXPECT_FALSE(refused->header("retry-after").empty());
  EXPECT_TRUE(third.wait_closed());
  EXPECT_EQ(gateway_->http_stats().connections_rejected_total, 1);

  // The existing connections still work; closing one makes room.
  ASSERT_TRUE(first.send_all(make_request("GET", "/v1/models", "")));
  EXPECT_EQ(first.read_response()->status, 200);
  second.close();
  for (int i = 0; i < 500 && gateway_->http_stats().connections_open > 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(get("/health").status, 200);
}

TEST_F(GatewayHttp, Http10StreamEndsByClosing) {
  start();
  TestConnection client(port());
  ASSERT_TRUE(client.send_all(make_request("POST", "/v1/completions",
                                           R"({"prompt": "x", "stream": true})", {}, "HTTP/1.0")));
  std::optional<HttpResult> answer = client.read_response();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 200);
  EXPECT_TRUE(answer->header("transfer-encoding").empty());
  EXPECT_EQ(sse_payloads(answer->body).back(), "[DONE]");

  TestConnection plain(port());
  ASSERT_TRUE(plain.send_all(make_request("GET", "/health", "", {}, "HTTP/1.0")));
  std::optional<HttpResult> health = plain.read_response();
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_TRUE(plain.wait_closed());
}

TEST_F(GatewayHttp, ExpectContinueIsHonoured) {
  start();
  TestConnection client(port());
  const std::string body = R"({"prompt": "x"})";
  ASSERT_TRUE(
      client.send_all("POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                      "Content-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n"));
  std::optional<HttpResult> go_on = client.read_response();
  ASSERT_TRUE(go_on);
  EXPECT_EQ(go_on->status, 100);
  ASSERT_TRUE(client.send_all(body));
  std::optional<HttpResult> answer = client.read_response();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 200);
}

TEST_F(GatewayHttp, StopWithGraceLetsStreamsFinish) {
  service_->set_token_delay(std::chrono::milliseconds(5));
  start();
  const uint16_t bound = port();
  TestConnection client(bound);
  ASSERT_TRUE(client.send_all(
      make_request("POST", "/v1/completions", R"({"prompt": "x", "stream": true})")));
  ASSERT_TRUE(client.read_until("\"text\""));
  TestConnection idle(bound);  // an idle keep-alive connection is closed at once
  std::thread stopper([this] { gateway_->stop(std::chrono::milliseconds(3000)); });
  std::optional<HttpResult> answer = client.read_response();
  ASSERT_TRUE(answer);
  EXPECT_EQ(sse_payloads(answer->body).back(), "[DONE]");
  EXPECT_EQ(json::parse(sse_payloads(answer->body).at(0)).at("object"), "text_completion");
  EXPECT_TRUE(idle.wait_closed());
  stopper.join();
  EXPECT_TRUE(service_->cancelled().empty());
  // Nobody listens any more.
  TestConnection after(bound);
  EXPECT_TRUE(!after.connected() || after.wait_closed());
}

TEST_F(GatewayHttp, StopWithoutGraceCancelsWhatIsRunning) {
  service_->set_token_delay(std::chrono::milliseconds(20));
  FakeScript script;
  for (int i = 0; i < 500; ++i) script.tokens.push_back(1000 + i);
  service_->set_script([script](const GenerationRequest&) { return script; });
  start();
  TestConnection client(port());
  ASSERT_TRUE(client.send_all(make_request("POST", "/v1/chat/completions",
                                           R"({"messages": [{"role": "user", "content": "x"}],
                                               "stream": true, "n": 2})")));
  ASSERT_TRUE(client.read_until("\"content\""));
  gateway_->stop();
  EXPECT_TRUE(client.wait_closed());
  ASSERT_EQ(service_->submitted().size(), 2u);
  EXPECT_TRUE(service_->wait_for_cancel(service_->submitted()[0].request_id));
  EXPECT_TRUE(service_->wait_for_cancel(service_->submitted()[1].request_id));
  EXPECT_TRUE(service_->wait_idle());
}

TEST_F(GatewayHttp, ConfigIsValidatedAndPortsInUseAreReported) {
  config_.max_n = 0;
  Gateway invalid(config_, *service_, test_tokenizer());
  Status status = invalid.start();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("gateway.max_n"), std::string::npos);

  config_.max_n = 8;
  start();
  config_.port = port();
  Gateway second(config_, *service_, test_tokenizer());
  Status taken = second.start();
  EXPECT_EQ(taken.code(), StatusCode::kUnavailable);
  EXPECT_NE(taken.message().find(std::to_string(port())), std::string::npos);
}

}  // namespace
}  // namespace dshpc::gateway_test
