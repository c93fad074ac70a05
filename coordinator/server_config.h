// GatewayConfig: the HTTP gateway's listener, limits and API bounds, validated once.
//
// STYLE.md asks for three configuration structs; the serving one (ServingConfig: batching, KV,
// limits) is meant to hold a GatewayConfig as its `gateway` member next to the scheduler's
// fields, so that the deployment YAML and the command line set both through one struct.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace dshpc {

struct GatewayConfig {
  // Listener. port 0 binds an ephemeral port (HttpServer::port() tells which).
  std::string host = "0.0.0.0";  // an IPv4/IPv6 literal or "localhost"
  uint16_t port = 8000;
  int io_threads = 2;  // threads running the Asio io_context; connections are strands on them

  // Per-connection limits.
  size_t max_header_bytes = 16 * 1024;      // request line + headers; over it: 431
  size_t max_body_bytes = 8 * 1024 * 1024;  // over it (Content-Length or actual): 413
  // A request (headers and body) must arrive within read_timeout of the moment the connection
  // starts waiting for it; this also bounds how long an idle keep-alive connection stays open.
  // Guards against slow clients (slowloris): a partial request gets 408, an idle one is closed.
  std::chrono::milliseconds read_timeout{30'000};
  // One write to a client that does not read; when it passes the client counts as gone (its
  // requests are cancelled).
  std::chrono::milliseconds write_timeout{30'000};
  // Streamed bytes queued for one slow client before it counts as gone.
  size_t max_stream_buffer_bytes = 4 * 1024 * 1024;
  // Open connections; one more is answered 503 and closed.
  int max_connections = 1024;

  // API.
  std::string served_model_name = "deepseek";  // the only value "model" may take
  int max_n = 8;                               // upper bound of the "n" parameter
  int max_stop_strings = 4;                    // entries of "stop"
  int retry_after_seconds = 1;                 // Retry-After on 429 and 503
  // Deadlines of generation requests, in seconds after arrival (0: none); a request past its
  // deadline ends with finish_reason "timeout" and the text made so far. request_timeout_s applies
  // to requests without a "timeout" field (--request-timeout); max_request_timeout_s, when set,
  // refuses a larger "timeout" with a 400 and bounds requests that name none
  // (--max-request-timeout). See ApiLimits.
  double request_timeout_s = 0.0;
  double max_request_timeout_s = 0.0;

  // Every problem, each message naming the field ("gateway.max_body_bytes: must be ...").
  Status validate() const;
};

}  // namespace dshpc
