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

FailureReason failure_reason_for_http(int http_status) {
  switch (http_status) {
    case 429:
      return FailureReason::kOverloaded;
    case 503:
      return FailureReason::kUnavailable;
    case 504:
      return FailureReason::kTimeout;
    default:
      return http_status >= 400 && http_status < 500 ? FailureReason::kInvalidRequest
                                                     : FailureReason::kInternal;
  }
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
const std::vector<double>& Metrics::duration_buckets() {
  static const std::vector<double> b(kDurationBucketBounds.begin(), kDurationBucketBounds.end());
  return b;
}

namespace {

constexpr std::string_view kHttpEndpoints[] = {
    "/v1/completions", "/v1/chat/completions", "/v1/models",   "/health", "/metrics",
    "/tokenize",       "/detokenize",          "/debug/memory"};

double seconds_between(RequestTiming::TimePoint from, RequestTiming::TimePoint to) {
  return std::max(0.0, std::chrono::duration<double>(to - from).count());
}

// Moves a counter up to a cumulative total kept elsewhere.
void advance_to(prometheus::Counter& counter, int64_t total) {
  const double delta = static_cast<double>(total) - counter.Value();
  if (delta > 0) counter.Increment(delta);
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

  const auto gauge = [&](const char* name, const char* help) {
    return &BuildGauge().Name(name).Help(help).Labels(model).Register(r).Add({});
  };
  const auto counter = [&](const char* name, const char* help) {
    return &BuildCounter().Name(name).Help(help).Labels(model).Register(r).Add({});
  };
  const auto histogram = [&](const char* name, const char* help,
                             const std::vector<double>& buckets) {
    return &BuildHistogram().Name(name).Help(help).Labels(model).Register(r).Add({}, buckets);
  };

  running_ =
      gauge("dshpc_num_requests_running", "Requests in the running batch (prefill or decode).");
  waiting_ = gauge("dshpc_num_requests_waiting",
                   "Requests accepted and queued, not yet running (preempted ones included).");

  auto& success = BuildCounter()
                      .Name("dshpc_request_success_total")
                      .Help(
                          "Generation requests that ended normally, by finish reason (stop, "
                          "length, cancelled).")
                      .Labels(model)
                      .Register(r);
  for (FinishReason reason :
       {FinishReason::kStop, FinishReason::kLength, FinishReason::kCancelled}) {
    success_[static_cast<size_t>(reason)] =
        &success.Add({{"finished_reason", finish_reason_name(reason)}});
  }
  auto& failure = BuildCounter()
                      .Name("dshpc_request_failure_total")
                      .Help("Generation requests refused or ended by an error, by reason.")
                      .Labels(model)
                      .Register(r);
  for (int i = 0; i < kNumFailureReasons; ++i) {
    failure_[i] = &failure.Add({{"reason", failure_reason_name(static_cast<FailureReason>(i))}});
  }

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

  prompt_tokens_ = counter("dshpc_prompt_tokens_total", "Prompt tokens processed (prefilled).");
  generation_tokens_ = counter("dshpc_generation_tokens_total", "Tokens generated.");
  preemptions_ = counter("dshpc_preemptions_total",
                         "Running requests sent back to the queue to free KV cache blocks.");

  kv_usage_ = gauge("dshpc_kv_cache_usage_ratio", "Share of the KV cache blocks in use (0..1).");
  kv_fragmentation_ =
      gauge("dshpc_kv_cache_fragmentation_ratio",
            "Share of the token slots in used KV blocks that hold no token (0..1).");
  model_ready_ = gauge("dshpc_model_ready", "1 when the model is loaded and serving, else 0.");
  load_progress_ = gauge("dshpc_model_load_progress_ratio",
                         "Share of rank 0's weight bytes loaded (1 once loaded).");
  batch_token_cap_ =
      gauge("dshpc_batch_token_cap",
            "Tokens one replica's step may hold now: max_num_batched_tokens, or less while "
            "device memory is short (lowered when a step's workspace did not fit).");
  memory_failures_ = counter("dshpc_step_memory_failures_total",
                             "Steps whose device workspace could not be reserved on some rank "
                             "(retried with a smaller batch).");

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
  collective_seconds_ = &BuildHistogram()
                             .Name("dshpc_collective_seconds")
                             .Help(
                                 "Duration of one collective or point-to-point call on a rank, "
                                 "waiting for peers included, by operation.")
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

  http_connections_open_ = gauge("dshpc_http_connections_open", "Open HTTP connections.");
  http_connections_accepted_ =
      counter("dshpc_http_connections_accepted_total", "Accepted TCP connections.");
  http_connections_rejected_ = counter("dshpc_http_connections_rejected_total",
                                       "Connections answered 503 because of the connection limit.");
  auto& protocol = BuildCounter()
                       .Name("dshpc_http_protocol_errors_total")
                       .Help("Requests the HTTP layer refused before routing, by reason.")
                       .Labels(model)
                       .Register(r);
  const char* protocol_reasons[] = {"malformed", "header_too_large", "body_too_large",
                                    "read_timeout"};
  for (size_t i = 0; i < http_protocol_errors_.size(); ++i) {
    http_protocol_errors_[i] = &protocol.Add({{"reason", protocol_reasons[i]}});
  }
  http_clients_gone_ = counter("dshpc_http_clients_gone_total",
                               "Clients that disconnected before their response ended.");

  // Per-rank GPU gauges exist from the start, so that dashboards see every rank before its first
  // report; the per-rank histograms appear with each rank's first report (within a keepalive
  // interval of start-up), which keeps /metrics small when nothing ran.
  for (int rank = 0; rank < std::max(1, config_.world_size); ++rank) {
    const prometheus::Labels labels = {{"rank", std::to_string(rank)}};
    gpu_memory_used_->Add(labels);
    gpu_memory_total_->Add(labels);
    gpu_utilization_->Add(labels);
  }
  // Rank 0's own phases exist from the start (at zero), for the same reason.
  step_histogram(config_.coordinator_rank, StepPhase::kSchedule);
  step_histogram(config_.coordinator_rank, StepPhase::kStep);
}

Metrics::~Metrics() = default;

void Metrics::on_request_accepted(RequestTiming& timing, int64_t prompt_tokens, TimePoint arrival) {
  timing.arrival = arrival;
  timing.last_token = arrival;
  timing.prompt_tokens = prompt_tokens;
}

void Metrics::on_first_token(RequestTiming& timing, TimePoint now) {
  if (timing.first_token) {
    on_token(timing, now, 1);
    return;
  }
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

void Metrics::observe_queue_time(double seconds) {
  queue_time_->Observe(std::max(0.0, seconds));
}

void Metrics::on_step(int64_t batch_size, double schedule_seconds, double step_seconds) {
  batch_size_->Observe(static_cast<double>(batch_size));
  step_histogram(config_.coordinator_rank, StepPhase::kSchedule)
      .Observe(std::max(0.0, schedule_seconds));
  step_histogram(config_.coordinator_rank, StepPhase::kStep).Observe(std::max(0.0, step_seconds));
}

void Metrics::on_preemption(int64_t count) {
  if (count > 0) preemptions_->Increment(static_cast<double>(count));
}

void Metrics::set_queue(int64_t running, int64_t waiting) {
  running_->Set(static_cast<double>(running));
  waiting_->Set(static_cast<double>(waiting));
}

void Metrics::set_kv_cache(double usage_ratio, double fragmentation_ratio) {
  kv_usage_->Set(std::clamp(usage_ratio, 0.0, 1.0));
  kv_fragmentation_->Set(std::clamp(fragmentation_ratio, 0.0, 1.0));
}

void Metrics::set_service_state(const ServiceStatus& status) {
  set_queue(status.running, status.waiting);
  const double usage = status.kv_blocks_total > 0 ? static_cast<double>(status.kv_blocks_used) /
                                                        static_cast<double>(status.kv_blocks_total)
                                                  : 0.0;
  set_kv_cache(usage, status.kv_fragmentation);
  model_ready_->Set(status.state == ServiceState::kReady ? 1.0 : 0.0);
  load_progress_->Set(
      status.state == ServiceState::kLoading ? std::clamp(status.load_progress, 0.0, 1.0) : 1.0);
  batch_token_cap_->Set(static_cast<double>(status.step_token_cap));
  std::lock_guard<std::mutex> lock(service_mutex_);
  advance_to(*memory_failures_, status.memory_failures);
}

prometheus::Histogram& Metrics::step_histogram(int rank, StepPhase phase) {
  // Family::Add returns the existing child for known labels (it locks and hashes; a step is
  // milliseconds, so this is noise).
  return step_seconds_->Add({{"rank", std::to_string(rank)}, {"phase", step_phase_name(phase)}},
                            duration_buckets());
}

prometheus::Histogram& Metrics::collective_histogram(int rank, CollectiveOp op) {
  return collective_seconds_->Add({{"rank", std::to_string(rank)}, {"op", collective_op_name(op)}},
                                  duration_buckets());
}

namespace {

// The increase from `last` to `now` of a cumulative histogram; `now` itself when any figure went
// down (the rank's counters restarted).
DurationHistogram increase(const DurationHistogram& now, const DurationHistogram* last) {
  if (last == nullptr) return now;
  DurationHistogram delta;
  for (size_t i = 0; i < kDurationBuckets; ++i) {
    if (now.counts[i] < last->counts[i]) return now;
    delta.counts[i] = now.counts[i] - last->counts[i];
  }
  delta.sum = std::max(0.0, now.sum - last->sum);
  return delta;
}

void add_to(prometheus::Histogram& histogram, const DurationHistogram& delta) {
  if (delta.count() == 0) return;
  std::vector<double> increments(delta.counts.begin(), delta.counts.end());
  histogram.ObserveMultiple(increments, delta.sum);
}

}  // namespace

void Metrics::set_rank_figures(const RankFigures& figures) {
  const prometheus::Labels rank = {{"rank", std::to_string(figures.rank)}};
  gpu_memory_used_->Add(rank).Set(static_cast<double>(figures.gpu.memory_used_bytes));
  gpu_memory_total_->Add(rank).Set(static_cast<double>(figures.gpu.memory_total_bytes));
  gpu_utilization_->Add(rank).Set(std::clamp(figures.gpu.utilization_ratio, 0.0, 1.0));

  std::array<DurationHistogram, kNumCollectiveOps> collectives;
  std::array<DurationHistogram, kNumStepPhases> phases;
  {
    std::lock_guard<std::mutex> lock(rank_mutex_);
    auto it = last_figures_.find(figures.rank);
    const RankFigures* last = it == last_figures_.end() ? nullptr : &it->second;
    for (int op = 0; op < kNumCollectiveOps; ++op) {
      collectives[op] = increase(figures.collectives.ops[op].durations,
                                 last ? &last->collectives.ops[op].durations : nullptr);
    }
    for (int p = 0; p < kNumStepPhases; ++p) {
      phases[p] = increase(figures.phases[p], last ? &last->phases[p] : nullptr);
    }
    last_figures_[figures.rank] = figures;
    if (figures.memory.present) {
      rank_memory_[figures.rank] = {figures.rank, figures.memory, Clock::now()};
    }
  }
  // Every op's series exists once a rank has reported, at zero if it never made that call.
  for (int op = 0; op < kNumCollectiveOps; ++op) {
    add_to(collective_histogram(figures.rank, static_cast<CollectiveOp>(op)), collectives[op]);
  }
  for (int p = 0; p < kNumStepPhases; ++p) {
    const auto phase = static_cast<StepPhase>(p);
    // Phases a rank never runs (schedule on a worker) stay absent rather than at zero.
    if (phases[p].count() == 0 && !step_seconds_->Has({{"rank", std::to_string(figures.rank)},
                                                       {"phase", step_phase_name(phase)}})) {
      continue;
    }
    add_to(step_histogram(figures.rank, phase), phases[p]);
  }
}

std::vector<Metrics::RankMemory> Metrics::rank_memory() const {
  std::lock_guard<std::mutex> lock(rank_mutex_);
  std::vector<RankMemory> out;
  for (const auto& [rank, memory] : rank_memory_) out.push_back(memory);
  return out;
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

void Metrics::set_http_server(const HttpServerStats& stats) {
  std::lock_guard<std::mutex> lock(http_mutex_);
  http_connections_open_->Set(static_cast<double>(stats.connections_open));
  advance_to(*http_connections_accepted_, stats.connections_accepted_total);
  advance_to(*http_connections_rejected_, stats.connections_rejected_total);
  advance_to(*http_protocol_errors_[0], stats.malformed_requests_total);
  advance_to(*http_protocol_errors_[1], stats.header_too_large_total);
  advance_to(*http_protocol_errors_[2], stats.body_too_large_total);
  advance_to(*http_protocol_errors_[3], stats.read_timeouts_total);
  advance_to(*http_clients_gone_, stats.clients_gone_total);
}

void MetricsStepObserver::on_step(const StepReport& report) {
  metrics_.on_step(report.sequences, report.schedule_seconds, report.step_seconds);
  for (double seconds : report.queue_seconds) metrics_.observe_queue_time(seconds);
  metrics_.on_preemption(report.preemptions);
}

std::string Metrics::render() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace dshpc
