// libFuzzer target: raw bytes sent to the real HTTP gateway (Beast server, router, OpenAI
// handlers) listening on 127.0.0.1, in front of a scripted InferenceService. Each input is one
// connection: the bytes are sent, the sending side is closed, and everything the server answers
// is read until it closes the connection.
//
// Oracles beyond "no crash, no sanitizer report":
//   - the server closes the connection once the client has (no hang: 10 s at most);
//   - what it sends is a sequence of well-formed HTTP responses (possibly cut short, since a
//     client that leaves cancels its request);
//   - no response is a 500 (the scripted service never fails that way), and every JSON error
//     has the OpenAI shape {"error": {"message", "type", ...}}.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "coordinator/gateway.h"
#include "coordinator/tokenizer.h"
#include "fuzz_check.h"

namespace {

using namespace dshpc;
namespace http = boost::beast::http;
namespace json = boost::json;

// Answers every request at once, from submit(): a few tokens, then a finish reason. A request
// with max_tokens 3 is refused as if the queue were full (429); max_tokens 5 fails mid-way with
// UNAVAILABLE (the path a dying rank takes); max_tokens 7 ends with kTimeout.
class ScriptedService : public InferenceService {
 public:
  explicit ScriptedService(int64_t vocab) : vocab_(vocab) {}

  Status submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) override {
    if (request.max_tokens == 3) return resource_exhausted("the queue is full");
    GenerationEvent event;
    event.prompt_tokens = static_cast<int64_t>(request.prompt_ids.size());
    const int64_t count = std::min<int64_t>(request.max_tokens, 4);
    for (int64_t i = 0; i < count; ++i) {
      GeneratedToken token;
      token.token = static_cast<int32_t>((request.prompt_ids.front() + 17 * i) % 1000 + 100);
      token.logprob = -0.5f;
      for (int k = 0; k < std::max(0, request.sampling.top_logprobs); ++k) {
        token.top_logprobs.push_back({static_cast<int32_t>(k + 10), -1.0f - k});
      }
      event.tokens.push_back(std::move(token));
    }
    event.completion_tokens = count;
    event.first_token = count > 0;
    if (request.max_tokens == 5) {
      event.finish = FinishReason::kError;
      event.error = unavailable("a rank of the job failed");
    } else if (request.max_tokens == 7) {
      event.finish = FinishReason::kTimeout;
    } else {
      event.finish = count == request.max_tokens ? FinishReason::kLength : FinishReason::kStop;
    }
    sink->on_event(std::move(event));
    return ok_status();
  }
  void cancel(const std::string&) override {}
  ServiceStatus status() const override {
    ServiceStatus s;
    s.state = ServiceState::kReady;
    s.load_progress = 1.0;
    s.max_context = 256;
    s.vocab_size = vocab_;
    return s;
  }

 private:
  int64_t vocab_;
};

struct Server {
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<ScriptedService> service;
  std::unique_ptr<Gateway> gateway;
  uint16_t port = 0;
};

Server& server() {
  static Server* s = [] {
    auto* created = new Server;
    StatusOr<std::unique_ptr<Tokenizer>> t =
        Tokenizer::load(DSHPC_SOURCE_DIR "/configs/tokenizers/deepseek-v3");
    if (!t.ok()) {
      std::fprintf(stderr, "fuzz_http: %s\n", t.status().to_string().c_str());
      std::abort();
    }
    created->tokenizer = std::move(t).value();
    created->service = std::make_unique<ScriptedService>(created->tokenizer->id_limit());
    GatewayConfig config;
    config.host = "127.0.0.1";
    config.port = 0;
    config.io_threads = 2;
    config.served_model_name = "demo";
    config.max_header_bytes = 1024;  // small limits, so that inputs reach them
    config.max_body_bytes = 2048;
    config.read_timeout = std::chrono::milliseconds(2000);
    config.write_timeout = std::chrono::milliseconds(2000);
    created->gateway = std::make_unique<Gateway>(config, *created->service, *created->tokenizer);
    Status started = created->gateway->start();
    if (!started.ok()) {
      std::fprintf(stderr, "fuzz_http: %s\n", started.to_string().c_str());
      std::abort();
    }
    created->port = created->gateway->port();
    return created;
  }();
  return *s;
}

// A connected socket to the server. libFuzzer's once-a-second SIGALRM (its -timeout watchdog)
// can interrupt connect (EINTR), and a busy machine can run short of local ports for a moment
// (EADDRNOTAVAIL, EAGAIN): those are retried on a new socket. Anything else, or 100 failures in
// a row, fails the run with the reason (a refused connection means the server stopped listening).
int connect_to(uint16_t port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int error = 0;
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    FUZZ_CHECK(fd >= 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) return fd;
    error = errno;
    close(fd);
    if (error != EINTR && error != EAGAIN && error != EADDRNOTAVAIL) break;
    if (error != EINTR) usleep(10000);
  }
  std::fprintf(stderr, "fuzz_http: connect to 127.0.0.1:%u failed: %s\n",
               static_cast<unsigned>(port), std::strerror(error));
  std::abort();
}

// Sends `bytes`, half-closes, and returns everything received until the server closes.
std::string exchange(uint16_t port, std::string_view bytes) {
  const int fd = connect_to(port);
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the server may close early (431, 413, 400) and reset the rest
    sent += static_cast<size_t>(n);
  }
  shutdown(fd, SHUT_WR);
  std::string received;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      std::fprintf(stderr,
                   "fuzz_http: the server kept the connection open for 10 s after the "
                   "client closed its side\n");
      std::abort();
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buffer[8192];
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF or reset
    received.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return received;
}

bool parses_as_json(const std::string& body) {
  json::error_code ec;
  json::parse(body, ec);
  return !ec;
}

void check_error_body(const std::string& body) {
  json::error_code ec;
  json::value parsed = json::parse(body, ec);
  FUZZ_CHECK(!ec);
  FUZZ_CHECK(parsed.is_object());
  const json::value* error = parsed.as_object().if_contains("error");
  FUZZ_CHECK(error != nullptr && error->is_object());
  FUZZ_CHECK(error->as_object().contains("message") && error->at("message").is_string());
  FUZZ_CHECK(error->as_object().contains("type") && error->at("type").is_string());
}

// Every complete response in `received` is well-formed. A HEAD request's response announces a
// Content-Length but has no body, which a response parser cannot know: it takes the bytes of the
// next response as that body, so once an input holds a HEAD request, the framing of what follows
// is unknown and checking stops at the first response that does not parse as one would expect.
void check_responses(std::string_view input, const std::string& received) {
  if (received.empty()) return;
  const bool has_head = input.find("HEAD") != std::string_view::npos;
  boost::beast::flat_buffer buffer;
  auto storage = buffer.prepare(received.size());
  std::memcpy(storage.data(), received.data(), received.size());
  buffer.commit(received.size());
  while (buffer.size() > 0) {
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    parser.eager(true);
    boost::system::error_code ec;
    while (!parser.is_done() && buffer.size() > 0) {
      const size_t used = parser.put(buffer.data(), ec);
      buffer.consume(used);
      if (ec == http::error::need_more) {
        if (used == 0) return;  // cut short: the connection ended mid-response
        ec = {};
        continue;
      }
      if (ec) break;
    }
    if (ec) {
      if (has_head) return;
      std::fprintf(stderr, "fuzz_http: malformed response (%s) in:\n%s\n", ec.message().c_str(),
                   received.c_str());
      std::abort();
    }
    if (!parser.is_done()) return;
    const auto& response = parser.get();
    const unsigned status = response.result_int();
    if (status == 500) {
      std::fprintf(stderr, "fuzz_http: 500 response:\n%s\n", received.c_str());
      std::abort();
    }
    FUZZ_CHECK(status >= 100 && status < 600);
    const bool is_json = response[http::field::content_type].starts_with("application/json");
    if (has_head && (response.body().empty() || !is_json || !parses_as_json(response.body()))) {
      return;  // possibly a HEAD response framed with the next response's bytes
    }
    if (status >= 400) {
      FUZZ_CHECK(is_json);
      check_error_body(response.body());
    } else if (is_json && !response.body().empty()) {
      json::error_code json_ec;
      json::parse(response.body(), json_ec);
      FUZZ_CHECK(!json_ec);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  server();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::string received = exchange(server().port, input);
  check_responses(input, received);
  return 0;
}
