// The service's Prometheus metrics (issue 7): ONE prometheus-cpp core Registry on rank 0, fed by
// the gateway (request lifecycle, HTTP), the EngineService's loop (scheduler figures, rank 0's
// step phases) and the other ranks' reports (RankFigures, worker/rank_figures.h), and rendered as
// exposition text for GET /metrics by our own Beast server (no civetweb exposer).
// docs/metrics.md lists every series with its labels and the PromQL for QPS, p99 latency and
// success rate; configs/prometheus/alerts.yml and configs/grafana/ use exactly these names.
//
// Every series carries the label model="<served model name>"; per-rank series also carry
// rank="<MPI world rank>". Methods are named for the events that move the figures; all are
// thread-safe (gateway I/O threads and the scheduler thread call them concurrently).
//
// Counting rules, so that the figures add up. The unit is one HTTP generation request (a request
// with n choices counts once; its finished_reason is its first choice's):
//  - Every generation request the gateway receives ends in exactly one of
//      dshpc_request_success_total{finished_reason}: on_request_finished() with stop, length or
//        cancelled (the client went away);
//      dshpc_request_failure_total{reason}: on_request_failed() (refused with 400/429/503, or
//        accepted and then ended by an error), and on_request_finished() with timeout
//        (reason="timeout") or error (reason="internal").
//  - Latency histograms are observed for accepted requests only; refused ones have no latency.
//  - Queue time is observed by the scheduler's loop when a request first runs.
//  - Gauges (running, waiting, KV cache, loading) are set from the service's own counts just
//    before each render (set_service_state), never moved by events, so they cannot drift.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "coordinator/engine_service.h"
#include "coordinator/http_server.h"
#include "coordinator/inference_service.h"
#include "worker/rank_figures.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace dshpc {

struct MetricsConfig {
  std::string model;         // the `model` label on every series (the served model's name)
  int world_size = 1;        // per-rank GPU gauges exist, at zero, for ranks 0..world_size-1
  int coordinator_rank = 0;  // the rank label of the phases passed to on_step()
};

// Why a request did not succeed: the `reason` label of dshpc_request_failure_total.
enum class FailureReason {
  kInvalidRequest,  // 400: the request can never run (bad JSON, prompt too long, …)
  kOverloaded,      // 429: the queue is full
  kUnavailable,     // 503: loading or draining
  kTimeout,         // the request's deadline passed
  kRankFailure,     // the job is going down (a rank died or hung); issue 9
  kInternal,        // 500: a bug or an unexpected error on our side
};
inline constexpr int kNumFailureReasons = 6;
const char* failure_reason_name(FailureReason reason);  // "invalid_request", "overloaded", …
// The failure reason for a Status that InferenceService::submit or an error event returned.
FailureReason failure_reason_for(const Status& status);
// The failure reason for an HTTP error status the gateway answers with.
FailureReason failure_reason_for_http(int http_status);

// Per-request timestamps, kept by the caller beside the request (the gateway's call object) and
// passed to the events. Plain data; no allocation.
struct RequestTiming {
  using TimePoint = std::chrono::steady_clock::time_point;
  TimePoint arrival{};
  std::optional<TimePoint> first_token;
  TimePoint last_token{};
  int64_t prompt_tokens = 0;
  int64_t generation_tokens = 0;
};

class Metrics {
 public:
  using Clock = std::chrono::steady_clock;
  using TimePoint = Clock::time_point;
  // The Content-Type of render()'s output (Prometheus text format 0.0.4).
  static constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

  explicit Metrics(MetricsConfig config);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  const MetricsConfig& config() const { return config_; }

  // --- Request lifecycle (pass the same RequestTiming to every call for one request) ---------
  // The request arrived at `arrival` and was queued (InferenceService::submit succeeded).
  void on_request_accepted(RequestTiming& timing, int64_t prompt_tokens, TimePoint arrival);
  // Observes time to first token and counts the prompt's tokens and the first generated token.
  void on_first_token(RequestTiming& timing, TimePoint now = Clock::now());
  // `count` more tokens (an event may carry several): counts them and observes the inter-token
  // latency, the gap since the previous token spread evenly over them. Before the first token it
  // first records on_first_token.
  void on_token(RequestTiming& timing, TimePoint now = Clock::now(), int64_t count = 1);
  // An accepted request ended: observes the end-to-end latency; stop/length/cancelled count as
  // success, timeout and error as failure (reasons "timeout", "internal").
  void on_request_finished(RequestTiming& timing, FinishReason reason,
                           TimePoint now = Clock::now());
  // A request refused before it was accepted (no latency observed) …
  void on_request_failed(FailureReason reason);
  // … or an accepted request ended by an error (observes the end-to-end latency).
  void on_request_failed(RequestTiming& timing, FailureReason reason, TimePoint now = Clock::now());

  // --- Scheduler loop -----------------------------------------------------------------------
  // A request ran for the first time, `seconds` after it arrived (a preempted request's later
  // runs are not queue time).
  void observe_queue_time(double seconds);
  // One scheduler step: the number of sequences in it and rank 0's phases (building the plan,
  // running it on the cluster), recorded under rank = config().coordinator_rank.
  void on_step(int64_t batch_size, double schedule_seconds, double step_seconds);
  void on_preemption(int64_t count = 1);

  // --- Service state, set before each render --------------------------------------------------
  // Running/waiting requests, KV cache usage and fragmentation, and loading progress.
  void set_service_state(const ServiceStatus& status);
  void set_queue(int64_t running, int64_t waiting);
  // usage: used / total KV blocks; fragmentation: share of the token slots in used blocks that
  // hold no token (the unfilled tail of each sequence's last block). Both 0..1.
  void set_kv_cache(double usage_ratio, double fragmentation_ratio);

  // --- Per rank -----------------------------------------------------------------------------
  // A rank's cumulative report: the increase since its previous report is added to the
  // histograms (a smaller total than before means the rank restarted: counted from zero).
  void set_rank_figures(const RankFigures& figures);
  // The latest memory figures of each rank that sent some, by rank, with when they arrived
  // (GET /debug/memory).
  struct RankMemory {
    int rank = 0;
    MemoryFigures memory;
    TimePoint received{};
  };
  std::vector<RankMemory> rank_memory() const;

  // --- HTTP ---------------------------------------------------------------------------------
  // dshpc_http_requests_total{endpoint, code}. Endpoints outside the API's list count as
  // "other" so that a scanner cannot create unbounded series.
  void on_http_response(std::string_view endpoint, int status_code);
  // The HTTP server's own counters (connections, protocol errors), cumulative.
  void set_http_server(const HttpServerStats& stats);

  // The exposition text of every series.
  std::string render() const;

  // Bucket bounds (seconds, or sequences for the batch size), exposed for tests and docs. Step
  // phases and collectives use kDurationBucketBounds (common/duration_histogram.h).
  static const std::vector<double>& time_to_first_token_buckets();
  static const std::vector<double>& inter_token_latency_buckets();
  static const std::vector<double>& e2e_latency_buckets();
  static const std::vector<double>& queue_time_buckets();
  static const std::vector<double>& batch_size_buckets();
  static const std::vector<double>& duration_buckets();

 private:
  using CounterFamily = prometheus::Family<prometheus::Counter>;
  using GaugeFamily = prometheus::Family<prometheus::Gauge>;
  using HistogramFamily = prometheus::Family<prometheus::Histogram>;

  void count_success(FinishReason reason);
  void count_failure(FailureReason reason);
  void observe_e2e(const RequestTiming& timing, TimePoint now);
  prometheus::Histogram& step_histogram(int rank, StepPhase phase);
  prometheus::Histogram& collective_histogram(int rank, CollectiveOp op);

  const MetricsConfig config_;
  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Gauge* running_ = nullptr;
  prometheus::Gauge* waiting_ = nullptr;
  std::array<prometheus::Counter*, 4> success_{};  // stop, length, cancelled (index by reason)
  std::array<prometheus::Counter*, kNumFailureReasons> failure_{};
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* itl_ = nullptr;
  prometheus::Histogram* e2e_ = nullptr;
  prometheus::Histogram* queue_time_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generation_tokens_ = nullptr;
  prometheus::Counter* preemptions_ = nullptr;
  prometheus::Gauge* kv_usage_ = nullptr;
  prometheus::Gauge* kv_fragmentation_ = nullptr;
  prometheus::Gauge* model_ready_ = nullptr;
  prometheus::Gauge* load_progress_ = nullptr;
  prometheus::Gauge* batch_token_cap_ = nullptr;
  prometheus::Counter* memory_failures_ = nullptr;

  GaugeFamily* gpu_memory_used_ = nullptr;
  GaugeFamily* gpu_memory_total_ = nullptr;
  GaugeFamily* gpu_utilization_ = nullptr;
  HistogramFamily* collective_seconds_ = nullptr;
  HistogramFamily* step_seconds_ = nullptr;
  CounterFamily* http_requests_ = nullptr;

  prometheus::Gauge* http_connections_open_ = nullptr;
  prometheus::Counter* http_connections_accepted_ = nullptr;
  prometheus::Counter* http_connections_rejected_ = nullptr;
  std::array<prometheus::Counter*, 4> http_protocol_errors_{};
  prometheus::Counter* http_clients_gone_ = nullptr;

  // The last cumulative report per rank, to turn reports into increments; the HTTP server's
  // counters likewise.
  mutable std::mutex rank_mutex_;
  std::map<int, RankFigures> last_figures_;
  std::map<int, RankMemory> rank_memory_;
  std::mutex service_mutex_;  // set_service_state's counter
  std::mutex http_mutex_;
};

// Feeds the EngineService loop's per-step figures (batch size, rank 0's phases, queue times,
// preemptions) to `metrics`.
class MetricsStepObserver final : public StepObserver {
 public:
  explicit MetricsStepObserver(Metrics& metrics) : metrics_(metrics) {}
  void on_step(const StepReport& report) override;

 private:
  Metrics& metrics_;
};

}  // namespace dshpc
