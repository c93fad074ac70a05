#include "coordinator/gateway_metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace dshpc {

namespace {

std::string number(double value) {
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (std::isnan(value)) return "NaN";
  // The shortest form that reads back as the same double (0.1, not 0.10000000000000001).
  char text[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(text, sizeof(text), "%.*g", precision, value);
    if (std::strtod(text, nullptr) == value) break;
  }
  return text;
}

void header(std::string* out, const char* name, const char* type, const char* help) {
  *out += "# HELP ";
  *out += name;
  *out += ' ';
  *out += help;
  *out += "\n# TYPE ";
  *out += name;
  *out += ' ';
  *out += type;
  *out += '\n';
}

void sample(std::string* out, const std::string& name, const std::string& labels, double value) {
  *out += name;
  if (!labels.empty()) *out += "{" + labels + "}";
  *out += ' ';
  *out += number(value);
  *out += '\n';
}

}  // namespace

std::string prometheus_escape(std::string_view value) {
  std::string escaped;
  escaped.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      escaped += "\\\\";
    } else if (c == '"') {
      escaped += "\\\"";
    } else if (c == '\n') {
      escaped += "\\n";
    } else {
      escaped += c;
    }
  }
  return escaped;
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)), counts_(upper_bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t bucket = 0;
  while (bucket < upper_bounds_.size() && value > upper_bounds_[bucket]) ++bucket;
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

void Histogram::render(const std::string& name, const std::string& labels, std::string* out) const {
  const std::string prefix = labels.empty() ? "" : labels + ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < upper_bounds_.size(); ++i) {
    cumulative += counts_[i];
    sample(out, name + "_bucket", prefix + "le=\"" + number(upper_bounds_[i]) + "\"",
           static_cast<double>(cumulative));
  }
  sample(out, name + "_bucket", prefix + "le=\"+Inf\"", static_cast<double>(count_));
  sample(out, name + "_sum", labels, sum_);
  sample(out, name + "_count", labels, static_cast<double>(count_));
}

GatewayMetrics::GatewayMetrics(std::string model)
    : model_(std::move(model)),
      time_to_first_token_({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                            2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}),
      e2e_latency_({0.01, 0.025, 0.05, 0.1,  0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,
                    5.0,  10.0,  15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0}) {}

void GatewayMetrics::count_request(std::string_view endpoint, int http_status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{std::string(endpoint), http_status}];
}

void GatewayMetrics::count_success(std::string_view finish_reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++successes_[std::string(finish_reason)];
}

void GatewayMetrics::count_failure(std::string_view reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++failures_[std::string(reason)];
}

void GatewayMetrics::add_prompt_tokens(int64_t tokens) {
  std::lock_guard<std::mutex> lock(mutex_);
  prompt_tokens_ += tokens;
}

void GatewayMetrics::add_generation_tokens(int64_t tokens) {
  std::lock_guard<std::mutex> lock(mutex_);
  generation_tokens_ += tokens;
}

void GatewayMetrics::observe_time_to_first_token(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  time_to_first_token_.observe(seconds);
}

void GatewayMetrics::observe_e2e_latency(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  e2e_latency_.observe(seconds);
}

int64_t GatewayMetrics::requests(std::string_view endpoint, int http_status) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = requests_.find({std::string(endpoint), http_status});
  return it == requests_.end() ? 0 : it->second;
}

int64_t GatewayMetrics::generation_tokens() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return generation_tokens_;
}

std::string GatewayMetrics::render(const ServiceStatus& status, const HttpServerStats& http) const {
  const std::string model = "model=\"" + prometheus_escape(model_) + "\"";
  std::string out;
  std::lock_guard<std::mutex> lock(mutex_);

  header(&out, "dshpc_http_requests_total", "counter",
         "HTTP requests by endpoint and status code.");
  for (const auto& [key, count] : requests_) {
    sample(&out, "dshpc_http_requests_total",
           "endpoint=\"" + prometheus_escape(key.first) + "\",code=\"" +
               std::to_string(key.second) + "\"",
           static_cast<double>(count));
  }
  header(&out, "dshpc_request_success_total", "counter",
         "Generations (choices) that ended normally, by finish reason.");
  for (const auto& [reason, count] : successes_) {
    sample(&out, "dshpc_request_success_total",
           model + ",finished_reason=\"" + prometheus_escape(reason) + "\"",
           static_cast<double>(count));
  }
  header(&out, "dshpc_request_failure_total", "counter",
         "Generation requests that failed or were abandoned, by reason.");
  for (const auto& [reason, count] : failures_) {
    sample(&out, "dshpc_request_failure_total",
           model + ",reason=\"" + prometheus_escape(reason) + "\"", static_cast<double>(count));
  }
  header(&out, "dshpc_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.");
  sample(&out, "dshpc_prompt_tokens_total", model, static_cast<double>(prompt_tokens_));
  header(&out, "dshpc_generation_tokens_total", "counter", "Generated tokens delivered.");
  sample(&out, "dshpc_generation_tokens_total", model, static_cast<double>(generation_tokens_));

  header(&out, "dshpc_num_requests_running", "gauge", "Requests the engine is running.");
  sample(&out, "dshpc_num_requests_running", model, static_cast<double>(status.running));
  header(&out, "dshpc_num_requests_waiting", "gauge", "Requests waiting in the engine's queue.");
  sample(&out, "dshpc_num_requests_waiting", model, static_cast<double>(status.waiting));
  header(&out, "dshpc_kv_cache_usage_ratio", "gauge", "Fraction of KV cache blocks in use.");
  sample(&out, "dshpc_kv_cache_usage_ratio", model,
         status.kv_blocks_total > 0 ? static_cast<double>(status.kv_blocks_used) /
                                          static_cast<double>(status.kv_blocks_total)
                                    : 0.0);
  header(&out, "dshpc_model_ready", "gauge", "1 when the model is loaded and serving.");
  sample(&out, "dshpc_model_ready", model, status.state == ServiceState::kReady ? 1.0 : 0.0);
  header(&out, "dshpc_model_load_progress_ratio", "gauge", "Weight loading progress, 0..1.");
  sample(&out, "dshpc_model_load_progress_ratio", model,
         status.state == ServiceState::kLoading ? status.load_progress : 1.0);

  header(&out, "dshpc_time_to_first_token_seconds", "histogram",
         "Time from the HTTP request's arrival to its first generated token.");
  time_to_first_token_.render("dshpc_time_to_first_token_seconds", model, &out);
  header(&out, "dshpc_e2e_request_latency_seconds", "histogram",
         "Time from the HTTP request's arrival to its last generated token.");
  e2e_latency_.render("dshpc_e2e_request_latency_seconds", model, &out);

  header(&out, "dshpc_http_connections_open", "gauge", "Open HTTP connections.");
  sample(&out, "dshpc_http_connections_open", "", static_cast<double>(http.connections_open));
  header(&out, "dshpc_http_connections_accepted_total", "counter", "Accepted TCP connections.");
  sample(&out, "dshpc_http_connections_accepted_total", "",
         static_cast<double>(http.connections_accepted_total));
  header(&out, "dshpc_http_connections_rejected_total", "counter",
         "Connections answered 503 because of the connection limit.");
  sample(&out, "dshpc_http_connections_rejected_total", "",
         static_cast<double>(http.connections_rejected_total));
  header(&out, "dshpc_http_protocol_errors_total", "counter",
         "Requests the HTTP layer refused before routing, by reason.");
  sample(&out, "dshpc_http_protocol_errors_total", "reason=\"malformed\"",
         static_cast<double>(http.malformed_requests_total));
  sample(&out, "dshpc_http_protocol_errors_total", "reason=\"header_too_large\"",
         static_cast<double>(http.header_too_large_total));
  sample(&out, "dshpc_http_protocol_errors_total", "reason=\"body_too_large\"",
         static_cast<double>(http.body_too_large_total));
  sample(&out, "dshpc_http_protocol_errors_total", "reason=\"read_timeout\"",
         static_cast<double>(http.read_timeouts_total));
  header(&out, "dshpc_http_clients_gone_total", "counter",
         "Clients that disconnected before their response ended.");
  sample(&out, "dshpc_http_clients_gone_total", "", static_cast<double>(http.clients_gone_total));
  return out;
}

}  // namespace dshpc
