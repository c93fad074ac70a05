// The HTTP side of dshpc bench serve: an asynchronous Boost.Beast client on one io_context
// (one thread; C++20 coroutines), one HTTP/1.1 connection per request in flight. Each request is
// a streamed OpenAI completion or chat completion whose SSE chunks are timed as they arrive.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "app/bench_serve.h"
#include "common/status.h"

namespace dshpc::bench_serve {

// http://HOST:PORT[/PREFIX]; the API paths (/v1/…) are appended to PREFIX.
struct ServerUrl {
  std::string host;
  std::string port;
  std::string prefix;  // "" or "/…" without a trailing '/'
  std::string text() const { return "http://" + host + ":" + port + prefix; }
};
// INVALID_ARGUMENT naming --url for anything but http://HOST:PORT[/PREFIX].
StatusOr<ServerUrl> parse_server_url(const std::string& url);

struct HttpReply {
  int status = 0;
  std::string body;
};
// One plain request (GET when `body` is empty, else a JSON POST) for set-up calls such as
// /v1/models and /tokenize. UNAVAILABLE when the server cannot be reached or does not answer
// within `timeout`.
StatusOr<HttpReply> http_call(const ServerUrl& url, const std::string& path,
                              const std::string& body, std::chrono::milliseconds timeout);

// One request of the load: the API path, its JSON body (with "stream": true) and what it asks
// for, for the counts when the server reports no usage.
struct PlannedRequest {
  std::string path;  // "/v1/completions" or "/v1/chat/completions"
  std::string body;
  bool chat = false;
  int64_t prompt_tokens = 0;  // token ids sent, or the planned length of a text prompt
};

struct LoadOptions {
  std::vector<double> send_at_s;         // per request, seconds from the start (poisson_arrivals)
  int64_t max_concurrency = 0;           // 0: no limit; else a request due waits for a free slot
  std::chrono::milliseconds timeout{0};  // per connect, write and read: silence this long fails
};

// Sends every request at its time and waits for all of them; results are in the order of
// `requests`. `*duration_s` is the time from the start to the last response's end.
std::vector<RequestResult> run_load(const ServerUrl& url,
                                    const std::vector<PlannedRequest>& requests,
                                    const LoadOptions& options, double* duration_s);

}  // namespace dshpc::bench_serve
