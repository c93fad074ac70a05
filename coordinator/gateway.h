// The OpenAI-compatible HTTP gateway on rank 0: routes, validation, and the glue between HTTP
// connections and the InferenceService (see inference_service.h for the boundary).
//
// Routes (the DESIGN.md contract):
//   POST /v1/completions, POST /v1/chat/completions   JSON, or SSE with "stream": true
//   GET  /v1/models, GET /v1/models/{id}
//   GET  /health     200 {"status":"ok"}; 503 while the model loads, with rank 0's loading
//                    progress: {"status":"loading","progress":0..1,"percent":0..100,
//                    "loaded_bytes":n,"total_bytes":n}; 503 {"status":"draining"} while
//                    draining, {"status":"stopped"}
//   GET  /metrics    Prometheus text from the Metrics registry (metrics.h)
//   GET  /debug/memory  per rank: weights, KV cache, step workspace, device (memory_report.h)
//   POST /tokenize   {"prompt": "..."} or {"messages": [...]} → {"tokens", "count",
//   "max_model_len"} POST /detokenize {"tokens": [...]} → {"prompt": "..."}
// An unknown path is 404, a known path with the wrong method 405 (with Allow).
//
// Threading: handlers run on the connection's strand (an I/O thread) and never block; the
// service's sinks run on the scheduler thread and only post to that strand. A generation request
// with n choices is n service requests ("<id>-0" … "<id>-{n-1}", seeds seed+i), merged into
// choices[i]. Stop strings are matched here, on the decoded text: when one matches, the choice
// ends with "stop" and its service request is cancelled. A client that disconnects cancels every
// service request of its HTTP request.
//
// Logs (common/log.h, the process logger): one line per request event with request.id (the
// response id the client sees): request.accepted, request.first_token, request.finished (with
// the finish reason), request.error (refused or failed, with the HTTP status).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"
#include "coordinator/http_server.h"
#include "coordinator/inference_service.h"
#include "coordinator/metrics.h"
#include "coordinator/server_config.h"

namespace dshpc {

class Tokenizer;

class Gateway {
 public:
  // `service` and `tokenizer` must outlive the gateway. Request and HTTP figures go to `metrics`
  // (shared with the engine's loop, which feeds the scheduler's and the ranks' figures); without
  // one the gateway keeps its own, labelled with the served model's name.
  Gateway(GatewayConfig config, InferenceService& service, const Tokenizer& tokenizer,
          std::shared_ptr<Metrics> metrics = nullptr);
  ~Gateway();  // stop()
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Validates the config, prepares the chat renderer, binds the port and starts serving. The
  // service may still be loading: requests then get 503 and /health reports progress.
  Status start();
  uint16_t port() const;

  // From now on generation requests get 503 with Retry-After and /health says "draining";
  // requests in flight continue (issue 9's SIGTERM drain builds on this and in_flight()).
  void begin_drain();
  bool draining() const;
  // HTTP generation requests not yet answered in full.
  int64_t in_flight() const;

  // Drains, lets responses in progress finish for up to `grace`, then closes every connection
  // and cancels in the service whatever is left. Not from an I/O thread.
  void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(0));

  // The job is going down (a rank died or hung, the launcher is stopping it): every open
  // generation request ends now with a 503 carrying `message` — for a stream an SSE error
  // event and "data: [DONE]" — written out within `grace`, then every connection is closed as
  // stop() does. The service is not called (its thread may be the one that failed). Meant for
  // the fatal-error hook (common/check.h); not from an I/O thread. A later stop() does nothing.
  void fail_all(const std::string& message,
                std::chrono::milliseconds grace = std::chrono::milliseconds(1000));

  Metrics& metrics() const;
  HttpServerStats http_stats() const;

  struct Context;  // shared with the request handlers (gateway_internal.h)

 private:
  std::unique_ptr<Context> context_;
  std::mutex lifecycle_mutex_;  // start / stop / fail_all, which may come from different threads
  std::unique_ptr<HttpServer> server_;
};

}  // namespace dshpc
