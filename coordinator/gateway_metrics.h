// The gateway's first Prometheus series (issue 7 moves them to prometheus-cpp and adds the
// engine's). Text exposition format 0.0.4; names prefixed dshpc_, base units, _total on counters.
//
//   dshpc_http_requests_total{endpoint,code}          counter, every routed request by status code
//   dshpc_request_success_total{model,finished_reason} counter, per choice that ended normally
//   dshpc_request_failure_total{model,reason}          counter (error, client_disconnected, …)
//   dshpc_prompt_tokens_total{model}                   counter, once per request
//   dshpc_generation_tokens_total{model}               counter, every choice's tokens
//   dshpc_num_requests_running{model}                  gauge, from InferenceService::status()
//   dshpc_num_requests_waiting{model}                  gauge, from status()
//   dshpc_kv_cache_usage_ratio{model}                  gauge, from status()
//   dshpc_time_to_first_token_seconds{model}           histogram, HTTP arrival → first token
//   dshpc_e2e_request_latency_seconds{model}           histogram, HTTP arrival → last token
//   dshpc_http_connections_open, dshpc_http_connections_rejected_total, … from HttpServerStats
//
// Thread-safe: one mutex; updates are a few additions.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "coordinator/http_server.h"
#include "coordinator/inference_service.h"

namespace dshpc {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // Appends the _bucket, _sum and _count lines of `name` with `labels` ("a=\"b\"" or empty).
  void render(const std::string& name, const std::string& labels, std::string* out) const;
  uint64_t count() const { return count_; }

 private:
  std::vector<double> upper_bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

// A label value escaped for the text format (backslash, double quote, newline).
std::string prometheus_escape(std::string_view value);

class GatewayMetrics {
 public:
  explicit GatewayMetrics(std::string model);

  void count_request(std::string_view endpoint, int http_status);
  void count_success(std::string_view finish_reason);
  void count_failure(std::string_view reason);
  void add_prompt_tokens(int64_t tokens);
  void add_generation_tokens(int64_t tokens);
  void observe_time_to_first_token(double seconds);
  void observe_e2e_latency(double seconds);

  std::string render(const ServiceStatus& status, const HttpServerStats& http) const;

  // For tests and logs.
  int64_t requests(std::string_view endpoint, int http_status) const;
  int64_t generation_tokens() const;

 private:
  const std::string model_;
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
  std::map<std::string, int64_t> successes_;
  std::map<std::string, int64_t> failures_;
  int64_t prompt_tokens_ = 0;
  int64_t generation_tokens_ = 0;
  Histogram time_to_first_token_;
  Histogram e2e_latency_;
};

}  // namespace dshpc
