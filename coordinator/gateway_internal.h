// Internals of the gateway shared by gateway.cpp (routes) and gateway_generation.cpp
// (generation requests). Not part of the gateway's interface.
#pragma once

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/chat_template.h"
#include "coordinator/gateway.h"
#include "coordinator/metrics.h"
#include "coordinator/openai_api.h"
#include "coordinator/stop_strings.h"
#include "coordinator/tokenizer.h"

namespace dshpc {

class GenerationCall;

// Lets sinks (scheduler thread) reach calls only while the gateway's I/O is alive: stop() closes
// it after the I/O threads are joined and before the io_context goes away.
struct SinkGate {
  std::mutex mutex;
  bool open = true;
};

struct Gateway::Context {
  Context(GatewayConfig config, InferenceService& service, const Tokenizer& tokenizer,
          std::shared_ptr<Metrics> metrics);

  GatewayConfig config;
  ApiLimits limits;
  InferenceService& service;
  const Tokenizer& tokenizer;
  std::optional<ChatRenderer> renderer;
  std::shared_ptr<Metrics> metrics;
  std::shared_ptr<SinkGate> gate = std::make_shared<SinkGate>();
  std::atomic<bool> draining{false};
  HttpServer* server = nullptr;

  // "cmpl-…" / "chatcmpl-…": a random per-process part and a counter.
  std::string new_response_id(std::string_view prefix);

  // Generation requests in flight, for drain, stop and in_flight().
  uint64_t register_call(std::shared_ptr<GenerationCall> call);
  void unregister_call(uint64_t key);
  std::vector<std::shared_ptr<GenerationCall>> take_calls();
  std::vector<std::shared_ptr<GenerationCall>> calls() const;
  int64_t calls_in_flight() const;

  HttpResponse json_response(beast_http::status status, const boost::json::value& body) const;
  // The OpenAI error body; Retry-After on 429 and 503.
  HttpResponse error_response(const ApiError& error) const;
  // Counts the request under `endpoint` and answers.
  void reply(HttpExchange& exchange, std::string_view endpoint, HttpResponse response);
  void reply_error(HttpExchange& exchange, std::string_view endpoint, const ApiError& error);

 private:
  std::string id_prefix_;
  std::atomic<uint64_t> next_id_{0};
  mutable std::mutex calls_mutex_;
  std::map<uint64_t, std::shared_ptr<GenerationCall>> calls_;
  uint64_t next_call_key_ = 0;
};

// The request body as a JSON object (parse_request_body). The Content-Type is not enforced —
// curl -d sends application/x-www-form-urlencoded, and a JSON body under another label is still
// JSON — but when a body does not parse and its label says it is not JSON, the error says so.
ApiResult<boost::json::object> parse_json_body(const HttpRequest& request);

// POST /v1/completions and /v1/chat/completions (gateway_generation.cpp).
void handle_generation(Gateway::Context& context, ApiKind kind, std::string_view endpoint,
                       const std::shared_ptr<HttpExchange>& exchange,
                       std::chrono::steady_clock::time_point arrival);

// Logs a request the gateway refused or failed (request.error) and counts it as a failure.
void record_request_error(Gateway::Context& context, std::string_view request_id,
                          std::string_view endpoint, const ApiError& error);

// One HTTP generation request: n service requests, their text assembly and the response.
// Lives in the context's registry until answered; everything but post_event() and
// cancel_for_shutdown() runs on the connection's strand.
class GenerationCall : public std::enable_shared_from_this<GenerationCall> {
 public:
  GenerationCall(Gateway::Context& context, std::shared_ptr<HttpExchange> exchange, std::string id,
                 std::string endpoint, GenerationParams params, std::vector<int32_t> prompt_ids,
                 int64_t max_tokens, std::chrono::steady_clock::time_point arrival);

  void start();
  // From the sink (scheduler thread): posts the event to the strand.
  void post_event(int choice, GenerationEvent event);
  // After the I/O threads are joined: cancels the service requests still running.
  void cancel_for_shutdown();
  // From any thread: posts to the strand an end with `error` that leaves the service alone
  // (Gateway::fail_all).
  void post_failure(ApiError error);

 private:
  struct Choice {
    Choice(const Tokenizer& tokenizer, std::vector<std::string> stop)
        : decoder(tokenizer, /*skip_special_tokens=*/true), stop_filter(std::move(stop)) {}
    std::string request_id;
    StreamDecoder decoder;
    StopStringFilter stop_filter;
    std::string text;  // shown text: all of it, or (streaming) what the next chunk carries
    std::vector<GeneratedToken> tokens;  // for logprobs: all, or (streaming) since last chunk
    std::vector<int64_t> text_offsets;   // where each of `tokens` starts in the choice's text
    int64_t decoded_bytes = 0;
    int64_t completion_tokens = 0;
    bool submitted = false;
    bool finished = false;
    bool finish_sent = false;  // streaming: the chunk with finish_reason is out
    std::string finish_reason;
  };

  void on_event(int index, GenerationEvent event);
  void on_client_gone();
  void show(Choice& choice, std::string_view text);
  void finish_choice(Choice& choice, std::string reason);
  void stream_choice(int index);
  void stream_write(const boost::json::value& chunk);
  std::optional<boost::json::object> logprobs_json(const Choice& choice) const;
  void cancel_unfinished();
  // Ends the request with `error`; with cancel_service false the service is not told (it is
  // going away).
  void fail(const ApiError& error, bool cancel_service = true);
  void complete();
  void release();
  bool wants_logprobs() const { return params_.logprobs_count >= 0; }
  int64_t completion_tokens() const;

  Gateway::Context& context_;
  std::shared_ptr<HttpExchange> exchange_;
  const std::string endpoint_;
  const GenerationParams params_;
  const std::vector<int32_t> prompt_ids_;
  const int64_t max_tokens_;
  const std::chrono::steady_clock::time_point arrival_;
  ResponseMeta meta_;
  std::vector<Choice> choices_;
  uint64_t registry_key_ = 0;
  bool streaming_ = false;  // the SSE header is out
  bool accepted_ = false;   // every choice was submitted: latency is observed from here on
  RequestTiming timing_;
  bool done_ = false;  // answered, failed or abandoned: later events are ignored
};

}  // namespace dshpc
