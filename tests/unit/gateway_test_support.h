// Test support for the gateway: a scripted InferenceService that answers from its own thread,
// and a raw-socket HTTP client with timeouts (Beast's parser reads the responses).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "coordinator/inference_service.h"

namespace dshpc::gateway_test {

using namespace std::chrono_literals;

// What the fake generates for one request.
struct FakeScript {
  std::vector<int32_t> tokens;  // then `finish`, unless max_tokens ends it first
  FinishReason finish = FinishReason::kStop;
  size_t tokens_per_event = 1;
  std::optional<Status> error;  // when set: an error event after `error_after` tokens
  size_t error_after = 0;
};

// Emits each running request's tokens from a worker thread, `token_delay` apart; records what
// was submitted and cancelled. cancel() takes effect on the worker thread, which then sends the
// final kCancelled event, as the real scheduler does.
class FakeInferenceService : public InferenceService {
 public:
  FakeInferenceService();
  ~FakeInferenceService() override;

  void set_status(const ServiceStatus& status);
  void set_script(std::function<FakeScript(const GenerationRequest&)> script);
  void set_token_delay(std::chrono::milliseconds delay);
  // submit() returns `error` once `successes_first` more submits have succeeded.
  void set_submit_error(std::optional<Status> error, size_t successes_first = 0);

  Status submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) override;
  void cancel(const std::string& request_id) override;
  ServiceStatus status() const override;

  std::vector<GenerationRequest> submitted() const;
  std::vector<std::string> cancelled() const;
  // Waits until cancel() was called for `request_id` (or any id starting with it).
  bool wait_for_cancel(const std::string& request_id_prefix,
                       std::chrono::milliseconds timeout = 3000ms) const;
  // Waits until no request is running.
  bool wait_idle(std::chrono::milliseconds timeout = 3000ms) const;
  size_t running() const;

 private:
  struct Running {
    GenerationRequest request;
    std::shared_ptr<GenerationSink> sink;
    FakeScript script;
    size_t emitted = 0;
    bool cancel_requested = false;
    std::chrono::steady_clock::time_point due;
  };
  void run();

  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  ServiceStatus status_;
  std::function<FakeScript(const GenerationRequest&)> script_;
  std::chrono::milliseconds token_delay_{0};
  std::optional<Status> submit_error_;
  size_t submit_error_after_ = 0;
  std::vector<GenerationRequest> submitted_;
  std::vector<std::string> cancelled_;
  std::vector<Running> running_;
  bool stopping_ = false;
  std::thread worker_;
};

struct HttpResult {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // de-chunked
  bool keep_alive = false;
  std::string header(const std::string& name) const;
};

// One client connection to 127.0.0.1:port over a plain socket; every wait has a timeout.
class TestConnection {
 public:
  explicit TestConnection(uint16_t port);
  ~TestConnection();
  TestConnection(const TestConnection&) = delete;
  TestConnection& operator=(const TestConnection&) = delete;

  bool connected() const { return fd_ >= 0; }
  bool send_all(std::string_view bytes);
  // One response; nullopt on timeout or when the connection ends first.
  std::optional<HttpResult> read_response(std::chrono::milliseconds timeout = 5000ms);
  // Raw bytes until `needle` has arrived (true) or the timeout / EOF (false).
  bool read_until(std::string_view needle, std::chrono::milliseconds timeout = 5000ms);
  // True when the server closes the connection (EOF or reset) within the timeout.
  bool wait_closed(std::chrono::milliseconds timeout = 3000ms);
  const std::string& received() const { return received_; }
  void close();

 private:
  // Reads what is available within the timeout into pending_; false on EOF/error/timeout.
  bool fill(std::chrono::steady_clock::time_point deadline);

  int fd_ = -1;
  std::string pending_;   // read, not yet parsed
  std::string received_;  // everything read (for read_until)
};

std::string make_request(std::string_view method, std::string_view target, std::string_view body,
                         const std::vector<std::string>& extra_headers = {},
                         std::string_view version = "HTTP/1.1");
// One request on a fresh connection.
HttpResult http_call(uint16_t port, std::string_view method, std::string_view target,
                     std::string_view body = {},
                     const std::vector<std::string>& extra_headers = {});

// The payloads of an SSE body's "data: " lines, in order ("[DONE]" included).
std::vector<std::string> sse_payloads(const std::string& body);
bool valid_utf8(std::string_view text);
// The value of the sample `series` ("name{labels}" as rendered by prometheus-cpp: the family's
// constant label model first, then the others sorted by name) in a Prometheus text, or -1 when
// it is absent.
double metric_value(const std::string& text, const std::string& series);
// The HTTP responses counted for `endpoint` and `code` in a gateway's /metrics text.
double http_responses(const std::string& text, const std::string& model, std::string_view endpoint,
                      int code);

}  // namespace dshpc::gateway_test
