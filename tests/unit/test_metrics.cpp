#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/gpu_monitor.h"
#include "coordinator/metrics.h"

namespace dshpc {
namespace {

using std::chrono::milliseconds;

// The exposition text as {sample line without value → value}, e.g.
// "dshpc_request_success_total{finished_reason=\"stop\",model=\"m\"}" → 2.
std::map<std::string, double> samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    out[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return out;
}

// The value of the one sample whose name is `name` and whose labels include every `labels`
// entry (written as `key="value"`); fails when there is not exactly one.
double value_of(const std::string& text, const std::string& name,
                const std::vector<std::string>& labels = {}) {
  double value = 0.0;
  int matches = 0;
  for (const auto& [series, v] : samples(text)) {
    if (series.compare(0, name.size(), name) != 0) continue;
    if (series.size() > name.size() && series[name.size()] != '{') continue;
    bool all = true;
    for (const std::string& label : labels) {
      if (series.find(label) == std::string::npos) all = false;
    }
    if (!all) continue;
    value = v;
    ++matches;
  }
  EXPECT_EQ(matches, 1) << name << " with the given labels in\n" << text;
  return value;
}

// Every series of issue 7.
const char* const kSeries[] = {
    "dshpc_num_requests_running",
    "dshpc_num_requests_waiting",
    "dshpc_request_success_total",
    "dshpc_request_failure_total",
    "dshpc_time_to_first_token_seconds",
    "dshpc_inter_token_latency_seconds",
    "dshpc_e2e_request_latency_seconds",
    "dshpc_request_queue_time_seconds",
    "dshpc_batch_size",
    "dshpc_prompt_tokens_total",
    "dshpc_generation_tokens_total",
    "dshpc_preemptions_total",
    "dshpc_kv_cache_usage_ratio",
    "dshpc_kv_cache_fragmentation_ratio",
    "dshpc_gpu_memory_used_bytes",
    "dshpc_gpu_memory_total_bytes",
    "dshpc_gpu_utilization_ratio",
    "dshpc_collective_seconds",
    "dshpc_step_seconds",
    "dshpc_http_requests_total",
    "dshpc_model_ready",
    "dshpc_model_load_progress_ratio",
};

const std::map<std::string, std::string> kTypes = {
    {"dshpc_num_requests_running", "gauge"},
    {"dshpc_request_success_total", "counter"},
    {"dshpc_time_to_first_token_seconds", "histogram"},
    {"dshpc_batch_size", "histogram"},
    {"dshpc_collective_seconds", "histogram"},
    {"dshpc_step_seconds", "histogram"},
    {"dshpc_gpu_utilization_ratio", "gauge"},
};

// One request through its whole life, at fixed times: arrival t0, queued for 100 ms (observed by
// the scheduler's loop), first token +300 ms, two more tokens at +500 ms, finished +600 ms.
void record_one_request(Metrics& metrics, FinishReason reason) {
  const auto t0 = Metrics::Clock::time_point(std::chrono::hours(1));
  RequestTiming timing;
  metrics.on_request_accepted(timing, 12, t0);
  metrics.observe_queue_time(0.1);
  metrics.on_first_token(timing, t0 + milliseconds(300));
  metrics.on_token(timing, t0 + milliseconds(500), 2);
  metrics.on_request_finished(timing, reason, t0 + milliseconds(600));
  EXPECT_EQ(timing.generation_tokens, 3);
}

TEST(Metrics, EverySeriesIsRenderedAfterEvents) {
  Metrics metrics({.model = "demo", .world_size = 2});
  record_one_request(metrics, FinishReason::kStop);
  metrics.on_request_failed(FailureReason::kOverloaded);
  metrics.set_queue(3, 5);
  metrics.set_kv_cache(0.5, 0.1);
  metrics.on_step(4, 0.001, 0.02);
  metrics.on_preemption();
  RankFigures figures;
  figures.rank = 1;
  figures.collectives[CollectiveOp::kAllReduce].durations.observe(0.25);
  figures.phase(StepPhase::kForward).observe(0.015);
  figures.gpu = {.present = true,
                 .memory_used_bytes = 10,
                 .memory_total_bytes = 100,
                 .utilization_ratio = 0.5};
  metrics.set_rank_figures(figures);
  metrics.on_http_response("/v1/completions", 200);

  const std::string text = metrics.render();
  for (const char* name : kSeries) {
    EXPECT_NE(text.find(std::string("\n") + name), std::string::npos) << name << " in\n" << text;
    EXPECT_NE(text.find(std::string("# HELP ") + name + " "), std::string::npos) << name;
  }
  for (const auto& [name, type] : kTypes) {
    EXPECT_NE(text.find("# TYPE " + name + " " + type + "\n"), std::string::npos) << name;
  }
  // Every sample carries the model label.
  for (const auto& [series, value] : samples(text)) {
    EXPECT_NE(series.find("model=\"demo\""), std::string::npos) << series;
  }
}

TEST(Metrics, RequestLifecycleFigures) {
  Metrics metrics({.model = "m"});
  record_one_request(metrics, FinishReason::kStop);
  record_one_request(metrics, FinishReason::kLength);
  const std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_request_success_total", {"finished_reason=\"stop\""}), 1);
  EXPECT_EQ(value_of(text, "dshpc_request_success_total", {"finished_reason=\"length\""}), 1);
  EXPECT_EQ(value_of(text, "dshpc_request_success_total", {"finished_reason=\"cancelled\""}), 0);
  EXPECT_EQ(value_of(text, "dshpc_prompt_tokens_total"), 24);
  EXPECT_EQ(value_of(text, "dshpc_generation_tokens_total"), 6);
  EXPECT_EQ(value_of(text, "dshpc_request_queue_time_seconds_count"), 2);
  EXPECT_NEAR(value_of(text, "dshpc_request_queue_time_seconds_sum"), 0.2, 1e-9);
  EXPECT_NEAR(value_of(text, "dshpc_time_to_first_token_seconds_sum"), 0.6, 1e-9);
  // TTFT of 300 ms falls in the 0.3 bucket; the 0.25 bucket holds nothing.
  EXPECT_EQ(value_of(text, "dshpc_time_to_first_token_seconds_bucket", {"le=\"0.3\""}), 2);
  EXPECT_EQ(value_of(text, "dshpc_time_to_first_token_seconds_bucket", {"le=\"0.25\""}), 0);
  // Two tokens 200 ms after the first: two gaps of 100 ms each, per request.
  EXPECT_EQ(value_of(text, "dshpc_inter_token_latency_seconds_count"), 4);
  EXPECT_NEAR(value_of(text, "dshpc_inter_token_latency_seconds_sum"), 0.4, 1e-9);
  EXPECT_EQ(value_of(text, "dshpc_e2e_request_latency_seconds_count"), 2);
  EXPECT_NEAR(value_of(text, "dshpc_e2e_request_latency_seconds_sum"), 1.2, 1e-9);
}

TEST(Metrics, FailuresByReason) {
  Metrics metrics({.model = "m"});
  metrics.on_request_failed(failure_reason_for(resource_exhausted("queue full")));
  metrics.on_request_failed(failure_reason_for(unavailable("draining")));
  metrics.on_request_failed(failure_reason_for(invalid_argument("prompt too long")));
  record_one_request(metrics, FinishReason::kTimeout);
  record_one_request(metrics, FinishReason::kError);
  const auto t0 = Metrics::Clock::now();
  RequestTiming timing;
  metrics.on_request_accepted(timing, 4, t0);
  metrics.on_request_failed(timing, FailureReason::kRankFailure, t0 + milliseconds(50));

  const std::string text = metrics.render();
  const auto failures = [&](const char* reason) {
    return value_of(text, "dshpc_request_failure_total",
                    {std::string("reason=\"") + reason + "\""});
  };
  EXPECT_EQ(failures("overloaded"), 1);
  EXPECT_EQ(failures("unavailable"), 1);
  EXPECT_EQ(failures("invalid_request"), 1);
  EXPECT_EQ(failures("timeout"), 1);
  EXPECT_EQ(failures("internal"), 1);
  EXPECT_EQ(failures("rank_failure"), 1);
  // Refused requests have no latency; the three accepted ones do.
  EXPECT_EQ(value_of(text, "dshpc_e2e_request_latency_seconds_count"), 3);
  EXPECT_EQ(failure_reason_for(deadline_exceeded("late")), FailureReason::kTimeout);
  EXPECT_EQ(failure_reason_for(internal_error("bug")), FailureReason::kInternal);
}

TEST(Metrics, TokensBeforeFirstToken) {
  Metrics metrics({.model = "m"});
  const auto t0 = Metrics::Clock::time_point(std::chrono::hours(2));
  RequestTiming timing;
  metrics.on_request_accepted(timing, 5, t0);
  metrics.on_preemption();
  metrics.on_token(timing, t0 + milliseconds(500), 3);  // the first event carries three tokens
  const std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_time_to_first_token_seconds_count"), 1);
  EXPECT_NEAR(value_of(text, "dshpc_time_to_first_token_seconds_sum"), 0.5, 1e-9);
  // The two tokens after the first arrived with it: two gaps of zero.
  EXPECT_EQ(value_of(text, "dshpc_inter_token_latency_seconds_count"), 2);
  EXPECT_EQ(value_of(text, "dshpc_inter_token_latency_seconds_sum"), 0);
  EXPECT_EQ(value_of(text, "dshpc_generation_tokens_total"), 3);
  EXPECT_EQ(value_of(text, "dshpc_prompt_tokens_total"), 5);
  EXPECT_EQ(value_of(text, "dshpc_preemptions_total"), 1);
}

TEST(Metrics, QueueKvAndBatchFigures) {
  Metrics metrics({.model = "m"});
  metrics.set_queue(7, 2);
  metrics.set_kv_cache(1.5, -0.1);  // clamped to 0..1
  metrics.on_step(32, 0, 0);
  metrics.on_step(1, 0, 0);
  const std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_num_requests_running"), 7);
  EXPECT_EQ(value_of(text, "dshpc_num_requests_waiting"), 2);
  EXPECT_EQ(value_of(text, "dshpc_kv_cache_usage_ratio"), 1.0);
  EXPECT_EQ(value_of(text, "dshpc_kv_cache_fragmentation_ratio"), 0.0);
  EXPECT_EQ(value_of(text, "dshpc_batch_size_count"), 2);
  EXPECT_EQ(value_of(text, "dshpc_batch_size_sum"), 33);
  EXPECT_EQ(value_of(text, "dshpc_batch_size_bucket", {"le=\"32\""}), 2);
  EXPECT_EQ(value_of(text, "dshpc_batch_size_bucket", {"le=\"24\""}), 1);
}

TEST(Metrics, RankFiguresTurnCumulativeTotalsIntoIncrements) {
  Metrics metrics({.model = "m", .world_size = 4});
  // Every rank's GPU gauges exist before any report; histograms come with a rank's first report.
  std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_gpu_memory_total_bytes", {"rank=\"3\""}), 0);
  EXPECT_EQ(text.find("dshpc_collective_seconds_count{"), std::string::npos);

  RankFigures figures;  // cumulative, as Cluster::local_figures() reports them
  figures.rank = 2;
  figures.collectives[CollectiveOp::kAllReduce].durations.observe(0.001);
  figures.collectives[CollectiveOp::kAllReduce].durations.observe(0.002);
  figures.collectives[CollectiveOp::kSend].durations.observe(0.5);
  figures.phase(StepPhase::kForward).observe(0.010);
  figures.phase(StepPhase::kForward).observe(0.020);
  figures.gpu = {.present = true,
                 .memory_used_bytes = 80ull << 30,
                 .memory_total_bytes = 141ull << 30,
                 .utilization_ratio = 0.97};
  metrics.set_rank_figures(figures);
  figures.collectives[CollectiveOp::kAllReduce].durations.observe(0.004);  // +1 call
  figures.phase(StepPhase::kForward).observe(0.030);
  metrics.set_rank_figures(figures);
  metrics.set_rank_figures(figures);  // a repeated report adds nothing
  text = metrics.render();
  const auto all_reduce = std::vector<std::string>{"rank=\"2\"", "op=\"all_reduce_sum\""};
  EXPECT_EQ(value_of(text, "dshpc_collective_seconds_count", all_reduce), 3);
  EXPECT_NEAR(value_of(text, "dshpc_collective_seconds_sum", all_reduce), 0.007, 1e-12);
  // 1 ms lands in le="0.001", 2 ms in le="0.0025", 4 ms in le="0.005".
  auto bucket = [&](const std::vector<std::string>& labels, const char* le) {
    std::vector<std::string> all = labels;
    all.push_back(std::string("le=\"") + le + "\"");
    return value_of(text, "dshpc_collective_seconds_bucket", all);
  };
  EXPECT_EQ(bucket(all_reduce, "0.001"), 1);
  EXPECT_EQ(bucket(all_reduce, "0.0025"), 2);
  EXPECT_EQ(bucket(all_reduce, "0.005"), 3);
  EXPECT_EQ(value_of(text, "dshpc_collective_seconds_count", {"rank=\"2\"", "op=\"send\""}), 1);
  // Operations the rank never called are there, at zero.
  EXPECT_EQ(value_of(text, "dshpc_collective_seconds_count", {"rank=\"2\"", "op=\"broadcast\""}),
            0);
  EXPECT_EQ(value_of(text, "dshpc_step_seconds_count", {"rank=\"2\"", "phase=\"forward\""}), 3);
  EXPECT_NEAR(value_of(text, "dshpc_step_seconds_sum", {"rank=\"2\"", "phase=\"forward\""}), 0.06,
              1e-12);
  // A worker's phases it never runs do not appear.
  EXPECT_EQ(text.find("rank=\"2\",phase=\"schedule\""), std::string::npos);
  const std::vector<std::string> rank2 = {"rank=\"2\""};
  EXPECT_EQ(value_of(text, "dshpc_gpu_memory_used_bytes", rank2), static_cast<double>(80ull << 30));
  EXPECT_EQ(value_of(text, "dshpc_gpu_memory_total_bytes", rank2),
            static_cast<double>(141ull << 30));
  EXPECT_NEAR(value_of(text, "dshpc_gpu_utilization_ratio", rank2), 0.97, 1e-12);

  // The rank restarted: its counts went down, so the new report counts from zero.
  RankFigures restarted;
  restarted.rank = 2;
  restarted.collectives[CollectiveOp::kAllReduce].durations.observe(0.001);
  metrics.set_rank_figures(restarted);
  text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_collective_seconds_count", all_reduce), 4);
  EXPECT_EQ(value_of(text, "dshpc_step_seconds_count", {"rank=\"2\"", "phase=\"forward\""}), 3);
}

TEST(Metrics, CoordinatorStepPhasesCarryItsRank) {
  Metrics metrics({.model = "m", .world_size = 2, .coordinator_rank = 0});
  // Rank 0's own phases exist at zero before the first step.
  EXPECT_EQ(
      value_of(metrics.render(), "dshpc_step_seconds_count", {"rank=\"0\"", "phase=\"schedule\""}),
      0);
  metrics.on_step(2, 0.002, 0.05);
  const std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_step_seconds_count", {"rank=\"0\"", "phase=\"schedule\""}), 1);
  EXPECT_EQ(
      value_of(text, "dshpc_step_seconds_bucket", {"rank=\"0\"", "phase=\"step\"", "le=\"0.05\""}),
      1);
  EXPECT_EQ(
      value_of(text, "dshpc_step_seconds_bucket", {"rank=\"0\"", "phase=\"step\"", "le=\"0.025\""}),
      0);
}

TEST(Metrics, StepObserverFeedsBatchQueueAndPreemptions) {
  Metrics metrics({.model = "m"});
  MetricsStepObserver observer(metrics);
  StepReport report;
  report.sequences = 6;
  report.schedule_seconds = 0.0002;
  report.step_seconds = 0.03;
  report.queue_seconds = {0.004, 0.2};
  report.preemptions = 2;
  observer.on_step(report);
  report.queue_seconds.clear();
  report.preemptions = 0;
  observer.on_step(report);
  const std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_batch_size_count"), 2);
  EXPECT_EQ(value_of(text, "dshpc_batch_size_sum"), 12);
  EXPECT_EQ(value_of(text, "dshpc_request_queue_time_seconds_count"), 2);
  EXPECT_NEAR(value_of(text, "dshpc_request_queue_time_seconds_sum"), 0.204, 1e-12);
  EXPECT_EQ(value_of(text, "dshpc_request_queue_time_seconds_bucket", {"le=\"0.005\""}), 1);
  EXPECT_EQ(value_of(text, "dshpc_preemptions_total"), 2);
  EXPECT_EQ(value_of(text, "dshpc_step_seconds_count", {"phase=\"step\""}), 2);
}

TEST(Metrics, ServiceStateSetsTheGauges) {
  Metrics metrics({.model = "m"});
  ServiceStatus status;
  status.state = ServiceState::kLoading;
  status.load_progress = 0.25;
  metrics.set_service_state(status);
  std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_model_ready"), 0);
  EXPECT_EQ(value_of(text, "dshpc_model_load_progress_ratio"), 0.25);
  status.state = ServiceState::kReady;
  status.running = 3;
  status.waiting = 4;
  status.kv_blocks_total = 200;
  status.kv_blocks_used = 50;
  status.kv_fragmentation = 0.125;
  metrics.set_service_state(status);
  text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_model_ready"), 1);
  EXPECT_EQ(value_of(text, "dshpc_model_load_progress_ratio"), 1);
  EXPECT_EQ(value_of(text, "dshpc_num_requests_running"), 3);
  EXPECT_EQ(value_of(text, "dshpc_num_requests_waiting"), 4);
  EXPECT_EQ(value_of(text, "dshpc_kv_cache_usage_ratio"), 0.25);
  EXPECT_EQ(value_of(text, "dshpc_kv_cache_fragmentation_ratio"), 0.125);
}

TEST(Metrics, HttpServerCountersFollowTheServersTotals) {
  Metrics metrics({.model = "m"});
  HttpServerStats stats;
  stats.connections_open = 3;
  stats.connections_accepted_total = 10;
  stats.body_too_large_total = 2;
  metrics.set_http_server(stats);
  stats.connections_open = 1;
  stats.connections_accepted_total = 12;
  metrics.set_http_server(stats);
  metrics.set_http_server(stats);  // the same totals again: no change
  const std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_http_connections_open"), 1);
  EXPECT_EQ(value_of(text, "dshpc_http_connections_accepted_total"), 12);
  EXPECT_EQ(value_of(text, "dshpc_http_protocol_errors_total", {"reason=\"body_too_large\""}), 2);
  EXPECT_EQ(value_of(text, "dshpc_http_protocol_errors_total", {"reason=\"malformed\""}), 0);
}

TEST(Metrics, TextFormatEscapesLabelValues) {
  Metrics metrics({.model = "model \"x\"\n"});
  metrics.on_http_response("/v1/completions", 400);
  const std::string text = metrics.render();
  const std::regex sample_line(
      R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? -?([0-9.eE+-]+|\+Inf|NaN)$)");
  std::istringstream lines(text);
  std::string line;
  int checked = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample_line)) << line;
    ++checked;
  }
  EXPECT_GT(checked, 50);
  EXPECT_NE(text.find("model=\"model \\\"x\\\"\\n\""), std::string::npos) << text;
}

TEST(Metrics, HttpEndpointsAreBounded) {
  Metrics metrics({.model = "m"});
  metrics.on_http_response("/v1/chat/completions", 200);
  metrics.on_http_response("/v1/chat/completions", 200);
  metrics.on_http_response("/v1/chat/completions", 429);
  metrics.on_http_response("/../../etc/passwd", 404);
  metrics.on_http_response("/wp-admin", 404);
  const std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_http_requests_total",
                     {"endpoint=\"/v1/chat/completions\"", "code=\"200\""}),
            2);
  EXPECT_EQ(value_of(text, "dshpc_http_requests_total",
                     {"endpoint=\"/v1/chat/completions\"", "code=\"429\""}),
            1);
  EXPECT_EQ(value_of(text, "dshpc_http_requests_total", {"endpoint=\"other\"", "code=\"404\""}), 2);
  EXPECT_EQ(text.find("passwd"), std::string::npos);
}

TEST(Metrics, ConcurrentEventsAddUp) {
  Metrics metrics({.model = "m", .world_size = 2});
  constexpr int kThreads = 8, kRequests = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kRequests; ++i) {
        RequestTiming timing;
        metrics.on_request_accepted(timing, 2, Metrics::Clock::now());
        metrics.on_first_token(timing);
        metrics.on_token(timing);
        metrics.on_request_finished(timing, FinishReason::kStop);
        metrics.on_step(1, 0.0001, 0.001);
        metrics.on_http_response("/v1/completions", 200);
      }
    });
  }
  for (int i = 0; i < 100; ++i) (void)metrics.render();  // scrapes while events arrive
  for (auto& thread : threads) thread.join();
  const std::string text = metrics.render();
  const double total = kThreads * kRequests;
  EXPECT_EQ(value_of(text, "dshpc_request_success_total", {"finished_reason=\"stop\""}), total);
  EXPECT_EQ(value_of(text, "dshpc_generation_tokens_total"), 2 * total);
  EXPECT_EQ(value_of(text, "dshpc_step_seconds_count", {"phase=\"schedule\""}), total);
  EXPECT_EQ(value_of(text, "dshpc_batch_size_count"), total);
  EXPECT_EQ(value_of(text, "dshpc_http_requests_total", {"code=\"200\""}), total);
}

TEST(Metrics, BucketsIncreaseAndHoldTheAlertThresholds) {
  for (const auto* buckets :
       {&Metrics::time_to_first_token_buckets(), &Metrics::inter_token_latency_buckets(),
        &Metrics::e2e_latency_buckets(), &Metrics::queue_time_buckets(),
        &Metrics::batch_size_buckets(), &Metrics::duration_buckets()}) {
    ASSERT_FALSE(buckets->empty());
    for (size_t i = 1; i < buckets->size(); ++i) EXPECT_LT((*buckets)[i - 1], (*buckets)[i]);
  }
  // configs/prometheus/alerts.yml compares TTFT p99 with 0.5 s: make it a bucket bound.
  const auto& ttft = Metrics::time_to_first_token_buckets();
  EXPECT_NE(std::find(ttft.begin(), ttft.end(), 0.5), ttft.end());
}

// --- Rank figures: histograms and their wire form ---------------------------------------------

TEST(DurationHistogram, BucketsFollowPrometheusLe) {
  EXPECT_EQ(duration_bucket(0.0), 0u);
  EXPECT_EQ(duration_bucket(1e-5), 0u);  // equal to a bound: that bucket (le)
  EXPECT_EQ(duration_bucket(1.1e-5), 1u);
  EXPECT_EQ(duration_bucket(10.0), kDurationBucketBounds.size() - 1);
  EXPECT_EQ(duration_bucket(11.0), kDurationBucketBounds.size());  // +Inf
  DurationHistogram h;
  h.observe(0.003);
  h.observe(-1.0);  // a clock step: counted as 0
  h.observe(20.0);
  EXPECT_EQ(h.count(), 3u);
  EXPECT_NEAR(h.sum, 20.003, 1e-12);
  EXPECT_EQ(h.counts[0], 1u);
  EXPECT_EQ(h.counts[kDurationBuckets - 1], 1u);
  DurationHistogram twice = h;
  twice += h;
  EXPECT_EQ(twice.count(), 6u);
}

TEST(RankFigures, RoundTripAndMalformedMessages) {
  RankFigures figures;
  figures.rank = 5;
  figures.collectives[CollectiveOp::kRecv].calls = 7;
  figures.collectives[CollectiveOp::kRecv].bytes = 4096;
  figures.collectives[CollectiveOp::kRecv].durations.observe(0.25);
  figures.phase(StepPhase::kSample).observe(0.0005);
  figures.gpu = {.present = true,
                 .memory_used_bytes = 1234,
                 .memory_total_bytes = 5678,
                 .utilization_ratio = 0.5};
  const std::vector<uint8_t> bytes = encode_rank_figures(figures);
  StatusOr<RankFigures> back = decode_rank_figures(bytes.data(), bytes.size());
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->rank, 5);
  EXPECT_EQ(back->collectives[CollectiveOp::kRecv].calls, 7u);
  EXPECT_EQ(back->collectives[CollectiveOp::kRecv].bytes, 4096u);
  EXPECT_EQ(back->collectives[CollectiveOp::kRecv].durations,
            figures.collectives[CollectiveOp::kRecv].durations);
  EXPECT_EQ(back->collectives.seconds(CollectiveOp::kRecv), 0.25);
  EXPECT_EQ(back->phase(StepPhase::kSample), figures.phase(StepPhase::kSample));
  EXPECT_TRUE(back->gpu.present);
  EXPECT_EQ(back->gpu.memory_total_bytes, 5678u);

  for (size_t cut : {size_t{0}, size_t{3}, size_t{12}, bytes.size() - 1}) {
    StatusOr<RankFigures> truncated = decode_rank_figures(bytes.data(), cut);
    EXPECT_FALSE(truncated.ok()) << cut;
  }
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  EXPECT_NE(decode_rank_figures(longer.data(), longer.size()).status().message().find("trailing"),
            std::string::npos);
  std::vector<uint8_t> bad_magic = bytes;
  bad_magic[0] ^= 0xFF;
  EXPECT_NE(
      decode_rank_figures(bad_magic.data(), bad_magic.size()).status().message().find("magic"),
      std::string::npos);
  EXPECT_STREQ(step_phase_name(StepPhase::kForward), "forward");
}

TEST(CollectiveCounters, SnapshotCountsCallsBytesAndDurations) {
  CollectiveCounters counters;
  counters.record_seconds(CollectiveOp::kAllReduce, 100, 0.002);
  counters.record_seconds(CollectiveOp::kAllReduce, 100, 0.004);
  counters.record(CollectiveOp::kSend, 8, CollectiveCounters::Clock::now());
  CollectiveStats stats = counters.snapshot();
  EXPECT_EQ(stats[CollectiveOp::kAllReduce].calls, 2u);
  EXPECT_EQ(stats[CollectiveOp::kAllReduce].bytes, 200u);
  EXPECT_NEAR(stats.seconds(CollectiveOp::kAllReduce), 0.006, 1e-12);
  EXPECT_EQ(stats[CollectiveOp::kAllReduce].durations.count(), 2u);
  EXPECT_EQ(stats[CollectiveOp::kSend].calls, 1u);
  CollectiveStats sum = stats;
  sum += stats;
  EXPECT_EQ(sum[CollectiveOp::kAllReduce].calls, 4u);
  EXPECT_EQ(sum[CollectiveOp::kAllReduce].durations.count(), 4u);
}

// --- GPU monitor --------------------------------------------------------------------------

TEST(GpuMonitor, MissingLibraryIsNotAnError) {
  GpuMonitor monitor("libnvidia-ml-does-not-exist.so.1");
  EXPECT_FALSE(monitor.available());
  EXPECT_NE(monitor.unavailable_reason().find("libnvidia-ml-does-not-exist.so.1"),
            std::string::npos);
  EXPECT_EQ(monitor.device_count(), 0u);
  EXPECT_TRUE(monitor.sample_visible().empty());
  EXPECT_FALSE(monitor.sample_nvml_index(0).has_value());
  EXPECT_FALSE(monitor.sample_pci_bus_id("0000:3b:00.0").has_value());
}

TEST(GpuMonitor, LibraryWithoutNvmlSymbols) {
  GpuMonitor monitor("libc.so.6");  // loads, but is not NVML
  EXPECT_FALSE(monitor.available());
  EXPECT_NE(monitor.unavailable_reason().find("nvml"), std::string::npos)
      << monitor.unavailable_reason();
}

TEST(GpuMonitor, ParsesCudaVisibleDevicesLikeCuda) {
  EXPECT_FALSE(parse_cuda_visible_devices(nullptr).has_value());
  EXPECT_TRUE(parse_cuda_visible_devices("")->empty());
  const auto list = *parse_cuda_visible_devices("2, 0,GPU-8f2e,-1,3");
  ASSERT_EQ(list.size(), 3u);  // stops at "-1", as CUDA does
  EXPECT_EQ(std::get<unsigned>(list[0]), 2u);
  EXPECT_EQ(std::get<unsigned>(list[1]), 0u);
  EXPECT_EQ(std::get<std::string>(list[2]), "GPU-8f2e");
  EXPECT_TRUE(parse_cuda_visible_devices("NoDevFiles")->empty());
  EXPECT_TRUE(parse_cuda_visible_devices("MIG-1234")->empty());
}

// On a machine with an NVIDIA driver the monitor must work; elsewhere it must report why not.
TEST(GpuMonitor, SamplesTheNodesGpusWhenADriverIsPresent) {
  GpuMonitor monitor;
  if (!std::filesystem::exists("/dev/nvidiactl")) {
    EXPECT_FALSE(monitor.unavailable_reason().empty() && !monitor.available());
    GTEST_SKIP() << "no NVIDIA driver on this machine: " << monitor.unavailable_reason();
  }
  ASSERT_TRUE(monitor.available()) << monitor.unavailable_reason();
  ASSERT_GT(monitor.device_count(), 0u);
  const auto first = monitor.sample_nvml_index(0);
  ASSERT_TRUE(first.has_value());
  EXPECT_GT(first->memory_total_bytes, 0u);
  EXPECT_LE(first->memory_used_bytes, first->memory_total_bytes);
  EXPECT_GE(first->utilization_ratio, 0.0);
  EXPECT_LE(first->utilization_ratio, 1.0);
  EXPECT_EQ(first->uuid.rfind("GPU-", 0), 0u) << first->uuid;
  const auto visible = monitor.sample_visible();
  EXPECT_FALSE(visible.empty());
}

}  // namespace
}  // namespace dshpc
