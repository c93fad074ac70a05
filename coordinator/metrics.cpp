#include "coordinator/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>

namespace dshpc {

const char* failure_reason_name(FailureReason reason) {
  switch (reason) {
    case FailureReason::kInvalidRequest:
      return "invalid_request";
    case FailureReason::kOverloaded:
      return "overloaded";
    case FailureReason::kUnavailable:
      return "unavailable";
    case FailureReason::kTimeout:
      return "timeout";
    case FailureReason::kRankFailure:
      return "rank_failure";
    case FailureReason::kInternal:
      return "internal";
  }
  return "internal";
}

FailureReason failure_reason_for(const Status& status) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kNotFound:
    case StatusCode::kOutOfRange:
    case StatusCode::kUnimplemented:
      return FailureReason::kInvalidRequest;
    case StatusCode::kResourceExhausted:
      return FailureReason::kOverloaded;
    case StatusCode::kUnavailable:
      return FailureReason::kUnavailable;
    case StatusCode::kDeadlineExceeded:
      return FailureReason::kTimeout;
    default:
      return FailureReason::kInternal;
  }
}

// Buckets. Latency SLO thresholds (500 ms for TTFT p99 in configs/prometheus/alerts.yml) are bucket
// bounds, so that histogram_quantile is exact where the alerts compare.
const std::vector<double>& Metrics::time_to_first_token_buckets() {
  static const std::vector<double> b = {0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.15,
                                        0.2,   0.25, 0.3,  0.4,  0.5,  0.75, 1.0,  1.5,
                                        2.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
  return b;
}
const std::vector<double>& Metrics::inter_token_latency_buckets() {
  static const std::vector<double> b = {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025,
                                        0.03,  0.04,   0.05,  0.075,  0.1,  0.15,  0.2,  0.3,
                                        0.4,   0.5,    0.75,  1.0,    2.5,  5.0};
  return b;
}
const std::vector<double>& Metrics::e2e_latency_buckets() {
  static const std::vector<double> b = {0.1,  0.25,  0.5,   1.0,   1.5,  2.0,  2.5,
                                        5.0,  10.0,  15.0,  20.0,  30.0, 40.0, 50.0,
                                        60.0, 120.0, 240.0, 480.0, 960.0};
  return b;
}
const std::vector<double>& Metrics::queue_time_buckets() {
  static const std::vector<double> b = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,  0.25, 0.5,
                                        1.0,   2.5,   5.0,  10.0,  20.0, 40.0, 80.0, 160.0};
  return b;
}
const std::vector<double>& Metrics::batch_size_buckets() {
  static const std::vector<double> b = {1,  2,  4,   8,   16,  24,  32, 48,
                                        64, 96, 128, 192, 256, 384, 512};
  return b;
}
const std::vector<double>& Metrics::step_buckets() {
  static const std::vector<double> b = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
  return b;
}

namespace {

constexpr std::string_view kHttpEndpoints[] = {
    "/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
    "/tokenize",       "/detokenize"};

double seconds_between(RequestTiming::TimePoint from, RequestTiming::TimePoint to) {
  return std::max(0.0, std::chrono::duration<double>(to - from).count());
}

}  // namespace

// success_ is indexed by FinishReason; the successful reasons must fit.
static_assert(static_cast<size_t>(FinishReason::kStop) < 4 &&
              static_cast<size_t>(FinishReason::kLength) < 4 &&
              static_cast<size_t>(FinishReason::kCancelled) < 4);
static_assert(static_cast<int>(FailureReason::kInternal) == kNumFailureReasons - 1);

Metrics::Metrics(MetricsConfig config)
    : config_(std::move(config)), registry_(std::make_shared<prometheus::Registry>()) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  const prometheus::Labels model = {{"model", config_.model}};
  prometheus::Registry& r = *registry_;

  auto& running = BuildGauge()
                      .Name("dshpc_num_requests_running")
                      .Help("Requests in the running batch (prefill or decode).")
                      .Labels(model)
                      .Register(r);
  running_ = &running.Add({});
  auto& waiting =
      BuildGauge()
          .Name("dshpc_num_requests_waiting")
          .Help("Requests accepted and queued, not yet running (preempted ones included).")
          .Labels(model)
          .Register(r);
  waiting_ = &waiting.Add({});

  auto& success = BuildCounter()
                      .Name("dshpc_request_success_total")
                      .Help(
                          "Requests that ended normally, by finish reason (stop, length, "
                          "cancelled).")
                      .Labels(model)
                      .Register(r);
  for (FinishReason reason :
       {FinishReason::kStop, FinishReason::kLength, FinishReason::kCancelled}) {
    success_[static_cast<size_t>(reason)] =
        &success.Add({{"finished_reason", finish_reason_name(reason)}});
  }
  auto& failure = BuildCounter()
                      .Name("dshpc_request_failure_total")
                      .Help("Requests refused or ended by an error, by reason.")
                      .Labels(model)
                      .Register(r);
  for (int i = 0; i < kNumFailureReasons; ++i) {
    const auto reason = static_cast<FailureReason>(i);
    failure_[i] = &failure.Add({{"reason", failure_reason_name(reason)}});
  }

  const auto histogram = [&](const char* name, const char* help,
                             const std::vector<double>& buckets) {
    return &BuildHistogram().Name(name).Help(help).Labels(model).Register(r).Add({}, buckets);
  };
  ttft_ =
      histogram("dshpc_time_to_first_token_seconds",
                "Time from arrival to the first generated token.", time_to_first_token_buckets());
  itl_ = histogram("dshpc_inter_token_latency_seconds",
                   "Time between consecutive generated tokens of a request.",
                   inter_token_latency_buckets());
  e2e_ = histogram("dshpc_e2e_request_latency_seconds",
                   "Time from arrival to the end of an accepted request.", e2e_latency_buckets());
  queue_time_ = histogram("dshpc_request_queue_time_seconds",
                          "Time from arrival until the request first ran.", queue_time_buckets());
  batch_size_ =
      histogram("dshpc_batch_size", "Sequences in one scheduler step.", batch_size_buckets());

  const auto counter = [&](const char* name, const char* help) {
    return &BuildCounter().Name(name).Help(help).Labels(model).Register(r).Add({});
  };
  prompt_tokens_ = counter("dshpc_prompt_tokens_total", "Prompt tokens processed (prefilled).");
  generation_tokens_ = counter("dshpc_generation_tokens_total", "Tokens generated.");
  preemptions_ = counter("dshpc_preemptions_total",
                         "Running requests sent back to the queue to free KV cache blocks.");

  const auto gauge = [&](const char* name, const char* help) {
    return &BuildGauge().Name(name).Help(help).Labels(model).Register(r).Add({});
  };
  kv_usage_ = gauge("dshpc_kv_cache_usage_ratio", "Share of the KV cache blocks in use (0..1).");
  kv_fragmentation_ =
      gauge("dshpc_kv_cache_fragmentation_ratio",
            "Share of the token slots in used KV blocks that hold no token (0..1).");

  gpu_memory_used_ = &BuildGauge()
                          .Name("dshpc_gpu_memory_used_bytes")
                          .Help("GPU memory in use on the rank's device (NVML; 0 without a GPU).")
                          .Labels(model)
                          .Register(r);
  gpu_memory_total_ = &BuildGauge()
                           .Name("dshpc_gpu_memory_total_bytes")
                           .Help("GPU memory of the rank's device (NVML; 0 without a GPU).")
                           .Labels(model)
                           .Register(r);
  gpu_utilization_ = &BuildGauge()
                          .Name("dshpc_gpu_utilization_ratio")
                          .Help("Share of time a kernel ran on the rank's device (NVML, 0..1).")
                          .Labels(model)
                          .Register(r);
  // A counter of seconds: Prometheus naming puts _total on counters, so the issue's
  // dshpc_collective_seconds{op} is exposed as dshpc_collective_seconds_total{op}.
  collective_seconds_ = &BuildCounter()
                             .Name("dshpc_collective_seconds_total")
                             .Help(
                                 "Seconds the rank spent in collectives and point-to-point "
                                 "transfers, waiting included, by operation.")
                             .Labels(model)
                             .Register(r);
  step_seconds_ = &BuildHistogram()
                       .Name("dshpc_step_seconds")
                       .Help("Duration of one step's phase on a rank.")
                       .Labels(model)
                       .Register(r);
  http_requests_ = &BuildCounter()
                        .Name("dshpc_http_requests_total")
                        .Help("HTTP responses by endpoint and status code.")
                        .Labels(model)
                        .Register(r);

  // Per-rank gauges and counters exist from the start, so that dashboards and alerts see every
  // rank before its first report (histograms appear with a rank's first step).
  for (int rank = 0; rank < std::max(1, config_.world_size); ++rank) {
    const prometheus::Labels labels = {{"rank", std::to_string(rank)}};
    gpu_memory_used_->Add(labels);
    gpu_memory_total_->Add(labels);
    gpu_utilization_->Add(labels);
    for (int op = 0; op < kNumCollectiveOps; ++op) {
      collective_seconds_->Add({{"rank", std::to_string(rank)},
                                {"op", collective_op_name(static_cast<CollectiveOp>(op))}});
    }
  }
}

Metrics::~Metrics() = default;

void Metrics::on_request_accepted(RequestTiming& timing, int64_t prompt_tokens, TimePoint now) {
  timing.arrival = now;
  timing.last_token = now;
  timing.prompt_tokens = prompt_tokens;
}

void Metrics::on_request_scheduled(RequestTiming& timing, TimePoint now) {
  if (timing.scheduled) return;  // a preempted request's second run is not queue time
  timing.scheduled = now;
  queue_time_->Observe(seconds_between(timing.arrival, now));
}

void Metrics::on_first_token(RequestTiming& timing, TimePoint now) {
  if (timing.first_token) {
    on_token(timing, now, 1);
    return;
  }
  if (!timing.scheduled) on_request_scheduled(timing, now);
  timing.first_token = now;
  timing.last_token = now;
  timing.generation_tokens += 1;
  ttft_->Observe(seconds_between(timing.arrival, now));
  prompt_tokens_->Increment(static_cast<double>(std::max<int64_t>(0, timing.prompt_tokens)));
  generation_tokens_->Increment();
}

void Metrics::on_token(RequestTiming& timing, TimePoint now, int64_t count) {
  if (count <= 0) return;
  if (!timing.first_token) {
    on_first_token(timing, now);
    if (--count == 0) return;
  }
  const double gap = seconds_between(timing.last_token, now) / static_cast<double>(count);
  for (int64_t i = 0; i < count; ++i) itl_->Observe(gap);
  timing.last_token = now;
  timing.generation_tokens += count;
  generation_tokens_->Increment(static_cast<double>(count));
}

void Metrics::observe_e2e(const RequestTiming& timing, TimePoint now) {
  e2e_->Observe(seconds_between(timing.arrival, now));
}

void Metrics::count_success(FinishReason reason) {
  success_[static_cast<size_t>(reason)]->Increment();
}

void Metrics::count_failure(FailureReason reason) {
  failure_[static_cast<size_t>(reason)]->Increment();
}

void Metrics::on_request_finished(RequestTiming& timing, FinishReason reason, TimePoint now) {
  observe_e2e(timing, now);
  switch (reason) {
    case FinishReason::kStop:
    case FinishReason::kLength:
    case FinishReason::kCancelled:
      count_success(reason);
      break;
    case FinishReason::kTimeout:
      count_failure(FailureReason::kTimeout);
      break;
    case FinishReason::kNone:
    case FinishReason::kError:
      count_failure(FailureReason::kInternal);
      break;
  }
}

void Metrics::on_request_failed(FailureReason reason) {
  count_failure(reason);
}

void Metrics::on_request_failed(RequestTiming& timing, FailureReason reason, TimePoint now) {
  observe_e2e(timing, now);
  count_failure(reason);
}

void Metrics::set_queue(int64_t running, int64_t waiting) {
  running_->Set(static_cast<double>(running));
  waiting_->Set(static_cast<double>(waiting));
}

void Metrics::set_kv_cache(double usage_ratio, double fragmentation_ratio) {
  kv_usage_->Set(std::clamp(usage_ratio, 0.0, 1.0));
  kv_fragmentation_->Set(std::clamp(fragmentation_ratio, 0.0, 1.0));
}

prometheus::Histogram& Metrics::step_histogram(int rank, std::string_view phase) {
  // Family::Add returns the existing child for known labels (it locks and hashes; a step is
  // milliseconds, so this is noise).
  return step_seconds_->Add({{"rank", std::to_string(rank)}, {"phase", std::string(phase)}},
                            step_buckets());
}

void Metrics::on_step(int64_t batch_size, const std::vector<PhaseSeconds>& phases) {
  batch_size_->Observe(static_cast<double>(batch_size));
  for (const PhaseSeconds& p : phases) {
    step_histogram(config_.coordinator_rank, p.phase).Observe(std::max(0.0, p.seconds));
  }
}

void Metrics::on_preemption(int64_t count) {
  if (count > 0) preemptions_->Increment(static_cast<double>(count));
}

void Metrics::set_rank_figures(const RankFigures& figures) {
  const std::string rank = std::to_string(figures.rank);
  gpu_memory_used_->Add({{"rank", rank}}).Set(static_cast<double>(figures.gpu_memory_used_bytes));
  gpu_memory_total_->Add({{"rank", rank}}).Set(static_cast<double>(figures.gpu_memory_total_bytes));
  gpu_utilization_->Add({{"rank", rank}}).Set(std::clamp(figures.gpu_utilization_ratio, 0.0, 1.0));

  std::array<double, kNumCollectiveOps> increments{};
  {
    std::lock_guard<std::mutex> lock(rank_mutex_);
    auto [it, inserted] = last_collective_seconds_.try_emplace(figures.rank);
    std::array<double, kNumCollectiveOps>& last = it->second;
    for (int op = 0; op < kNumCollectiveOps; ++op) {
      const double now = figures.collectives.ops[op].seconds;
      // A smaller total than before means the rank's counters restarted: count from zero.
      increments[op] = now >= last[op] ? now - last[op] : now;
      last[op] = now;
    }
  }
  for (int op = 0; op < kNumCollectiveOps; ++op) {
    auto& counter = collective_seconds_->Add(
        {{"rank", rank}, {"op", collective_op_name(static_cast<CollectiveOp>(op))}});
    if (increments[op] > 0) counter.Increment(increments[op]);
  }
  for (const PhaseSeconds& p : figures.step_phase_seconds) {
    step_histogram(figures.rank, p.phase).Observe(std::max(0.0, p.seconds));
  }
}

void Metrics::on_http_response(std::string_view endpoint, int status_code) {
  std::string_view known = "other";
  for (std::string_view e : kHttpEndpoints) {
    if (endpoint == e) known = e;
  }
  if (status_code < 100 || status_code > 599) status_code = 0;
  http_requests_->Add({{"endpoint", std::string(known)}, {"code", std::to_string(status_code)}})
      .Increment();
}

std::string Metrics::render() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace dshpc
