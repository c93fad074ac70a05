#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
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

// Every series of issue 7 (collective seconds carry _total as a counter; see metrics.h).
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
    "dshpc_collective_seconds_total",
    "dshpc_step_seconds",
    "dshpc_http_requests_total",
};

const std::map<std::string, std::string> kTypes = {
    {"dshpc_num_requests_running", "gauge"},
    {"dshpc_request_success_total", "counter"},
    {"dshpc_time_to_first_token_seconds", "histogram"},
    {"dshpc_batch_size", "histogram"},
    {"dshpc_collective_seconds_total", "counter"},
    {"dshpc_step_seconds", "histogram"},
    {"dshpc_gpu_utilization_ratio", "gauge"},
};

// One request through its whole life, at fixed times: arrival t0, scheduled +100 ms, first
// token +300 ms, two more tokens at +500 ms, finished +600 ms.
void record_one_request(Metrics& metrics, FinishReason reason) {
  const auto t0 = Metrics::Clock::time_point(std::chrono::hours(1));
  RequestTiming timing;
  metrics.on_request_accepted(timing, 12, t0);
  metrics.on_request_scheduled(timing, t0 + milliseconds(100));
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
  metrics.on_step(4, {{std::string(step_phase::kSchedule), 0.001}, {"step", 0.02}});
  metrics.on_preemption();
  RankFigures figures;
  figures.rank = 1;
  figures.collectives[CollectiveOp::kAllReduce].seconds = 0.25;
  figures.step_phase_seconds = {{"forward", 0.015}};
  figures.gpu_memory_used_bytes = 10;
  figures.gpu_memory_total_bytes = 100;
  figures.gpu_utilization_ratio = 0.5;
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

TEST(Metrics, TokensBeforeFirstTokenAndPreemptedRequests) {
  Metrics metrics({.model = "m"});
  const auto t0 = Metrics::Clock::time_point(std::chrono::hours(2));
  RequestTiming timing;
  metrics.on_request_accepted(timing, 5, t0);
  metrics.on_request_scheduled(timing, t0 + milliseconds(10));
  metrics.on_preemption();
  metrics.on_request_scheduled(timing, t0 + milliseconds(400));  // a second run: not queue time
  metrics.on_token(timing, t0 + milliseconds(500), 3);           // first event carries three tokens
  const std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_request_queue_time_seconds_count"), 1);
  EXPECT_NEAR(value_of(text, "dshpc_request_queue_time_seconds_sum"), 0.01, 1e-9);
  EXPECT_EQ(value_of(text, "dshpc_time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(value_of(text, "dshpc_generation_tokens_total"), 3);
  EXPECT_EQ(value_of(text, "dshpc_prompt_tokens_total"), 5);
  EXPECT_EQ(value_of(text, "dshpc_preemptions_total"), 1);
}

TEST(Metrics, QueueKvAndBatchFigures) {
  Metrics metrics({.model = "m"});
  metrics.set_queue(7, 2);
  metrics.set_kv_cache(1.5, -0.1);  // clamped to 0..1
  metrics.on_step(32);
  metrics.on_step(1);
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
  // Every rank's gauges and counters exist before any report.
  std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_gpu_memory_total_bytes", {"rank=\"3\""}), 0);
  EXPECT_EQ(value_of(text, "dshpc_collective_seconds_total", {"rank=\"3\"", "op=\"send\""}), 0);

  RankFigures figures;
  figures.rank = 2;
  figures.collectives[CollectiveOp::kAllReduce].seconds = 1.0;
  figures.collectives[CollectiveOp::kSend].seconds = 0.5;
  figures.step_phase_seconds = {{"forward", 0.010}, {"forward", 0.020}};
  figures.gpu_memory_used_bytes = 80ull << 30;
  figures.gpu_memory_total_bytes = 141ull << 30;
  figures.gpu_utilization_ratio = 0.97;
  metrics.set_rank_figures(figures);
  figures.collectives[CollectiveOp::kAllReduce].seconds = 1.5;  // +0.5
  figures.step_phase_seconds = {{"forward", 0.030}};
  metrics.set_rank_figures(figures);
  figures.step_phase_seconds.clear();  // step phases are per report, collectives cumulative:
  metrics.set_rank_figures(figures);   // a repeated report adds nothing
  figures.collectives[CollectiveOp::kAllReduce].seconds = 0.25;  // the rank restarted
  metrics.set_rank_figures(figures);

  text = metrics.render();
  const std::vector<std::string> rank2 = {"rank=\"2\""};
  EXPECT_NEAR(
      value_of(text, "dshpc_collective_seconds_total", {"rank=\"2\"", "op=\"all_reduce_sum\""}),
      1.75, 1e-9);
  EXPECT_NEAR(value_of(text, "dshpc_collective_seconds_total", {"rank=\"2\"", "op=\"send\""}), 0.5,
              1e-9);
  EXPECT_EQ(value_of(text, "dshpc_step_seconds_count", {"rank=\"2\"", "phase=\"forward\""}), 3);
  EXPECT_NEAR(value_of(text, "dshpc_step_seconds_sum", {"rank=\"2\"", "phase=\"forward\""}), 0.06,
              1e-9);
  EXPECT_EQ(value_of(text, "dshpc_gpu_memory_used_bytes", rank2), static_cast<double>(80ull << 30));
  EXPECT_EQ(value_of(text, "dshpc_gpu_memory_total_bytes", rank2),
            static_cast<double>(141ull << 30));
  EXPECT_NEAR(value_of(text, "dshpc_gpu_utilization_ratio", rank2), 0.97, 1e-12);
}

TEST(Metrics, CoordinatorStepPhasesCarryItsRank) {
  Metrics metrics({.model = "m", .world_size = 2, .coordinator_rank = 0});
  metrics.on_step(2, {{"schedule", 0.002}, {"step", 0.05}});
  const std::string text = metrics.render();
  EXPECT_EQ(value_of(text, "dshpc_step_seconds_count", {"rank=\"0\"", "phase=\"schedule\""}), 1);
  EXPECT_EQ(
      value_of(text, "dshpc_step_seconds_bucket", {"rank=\"0\"", "phase=\"step\"", "le=\"0.05\""}),
      1);
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
        metrics.on_request_accepted(timing, 2);
        metrics.on_first_token(timing);
        metrics.on_token(timing);
        metrics.on_request_finished(timing, FinishReason::kStop);
        metrics.on_step(1, {{"schedule", 0.0001}});
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
  EXPECT_EQ(value_of(text, "dshpc_http_requests_total", {"code=\"200\""}), total);
}

TEST(Metrics, BucketsIncreaseAndHoldTheAlertThresholds) {
  for (const auto* buckets :
       {&Metrics::time_to_first_token_buckets(), &Metrics::inter_token_latency_buckets(),
        &Metrics::e2e_latency_buckets(), &Metrics::queue_time_buckets(),
        &Metrics::batch_size_buckets(), &Metrics::step_buckets()}) {
    ASSERT_FALSE(buckets->empty());
    for (size_t i = 1; i < buckets->size(); ++i) EXPECT_LT((*buckets)[i - 1], (*buckets)[i]);
  }
  // configs/prometheus/alerts.yml compares TTFT p99 with 0.5 s: make it a bucket bound.
  const auto& ttft = Metrics::time_to_first_token_buckets();
  EXPECT_NE(std::find(ttft.begin(), ttft.end(), 0.5), ttft.end());
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
