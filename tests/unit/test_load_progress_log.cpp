// Rank 0's weight-load log (worker/load_progress_log.h): start, throttled progress with
// throughput and time left, done — on a fake clock, as JSON lines.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "parallel/collectives.h"
#include "worker/load_progress_log.h"
#include "worker/model_runtime.h"

namespace dshpc {
namespace {

using Clock = LoadProgressLog::Clock;

std::vector<boost::json::object> json_lines(FILE* file) {
  std::fflush(file);
  std::rewind(file);
  std::vector<boost::json::object> lines;
  char buffer[4096];
  while (std::fgets(buffer, sizeof(buffer), file) != nullptr) {
    lines.push_back(boost::json::parse(buffer).as_object());
  }
  return lines;
}

TEST(LoadProgressLog, StartThrottledProgressAndDone) {
  FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  LoggerConfig config = LoggerConfig::from_environment(0, LogFormat::kJson, LogLevel::kInfo);
  config.out = file;
  Logger logger(config);
  Clock::time_point now(std::chrono::hours(1));
  std::vector<std::pair<int64_t, int64_t>> forwarded;
  LoadProgressLog log(
      logger, [&](int64_t done, int64_t total) { forwarded.emplace_back(done, total); },
      std::chrono::seconds(5), [&] { return now; });

  const int64_t total = 1000 << 20;
  log(0, total);  // start
  now += std::chrono::seconds(2);
  log(200 << 20, total);  // within the interval: no line
  now += std::chrono::seconds(4);
  log(300 << 20, total);  // 6 s in: 50 MiB/s, 700 MiB left → 14 s
  now += std::chrono::seconds(1);
  log(350 << 20, total);  // throttled again
  now += std::chrono::seconds(3);
  log(total, total);  // done after 10 s
  log(total, total);  // a second "done" logs nothing

  EXPECT_EQ(forwarded.size(), 6u);
  EXPECT_EQ(forwarded[2], std::make_pair(int64_t{300} << 20, total));
  const std::vector<boost::json::object> lines = json_lines(file);
  std::fclose(file);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].at("event.action"), "weights.load_start");
  EXPECT_EQ(lines[0].at("dshpc.load.bytes_total"), total);
  const boost::json::object& progress = lines[1];
  EXPECT_EQ(progress.at("event.action"), "weights.load_progress");
  EXPECT_EQ(progress.at("dshpc.load.bytes_done"), int64_t{300} << 20);
  EXPECT_DOUBLE_EQ(progress.at("dshpc.load.percent").to_number<double>(), 30.0);
  EXPECT_DOUBLE_EQ(progress.at("dshpc.load.bytes_per_second").to_number<double>(),
                   50.0 * (1 << 20));
  EXPECT_DOUBLE_EQ(progress.at("dshpc.load.seconds_left").to_number<double>(), 14.0);
  EXPECT_NE(std::string(progress.at("message").as_string()).find("30.0%"), std::string::npos);
  EXPECT_NE(std::string(progress.at("message").as_string()).find("14 s left"), std::string::npos);
  EXPECT_EQ(lines[2].at("event.action"), "weights.load_done");
  EXPECT_DOUBLE_EQ(lines[2].at("dshpc.load.seconds").to_number<double>(), 10.0);
  EXPECT_DOUBLE_EQ(lines[2].at("dshpc.load.bytes_per_second").to_number<double>(),
                   100.0 * (1 << 20));
}

// Model::load reports the shard's exact total first (a shape-only pass), then growing byte counts
// that end at that total; the shard's weight bytes are the same with and without a callback.
TEST(LoadProgress, ModelLoadReportsBytesUpToThePlannedTotal) {
  ModelRuntimeOptions options;
  options.model = std::string(DSHPC_FIXTURES_DIR) + "/models/deepseek-v3-tiny/config.json";
  options.random_weights = true;
  options.kv_blocks = 4;
  std::vector<std::pair<int64_t, int64_t>> calls;
  options.on_load_progress = [&](int64_t done, int64_t total) { calls.emplace_back(done, total); };
  SoloCollectives tp("tp");
  auto runtime = ModelRuntime::create(options, ModelShard{}, make_cpu_backend(), tp);
  ASSERT_TRUE(runtime.ok()) << runtime.status().to_string();
  const int64_t bytes = (*runtime)->model().weight_bytes();
  ASSERT_GT(calls.size(), 10u);
  EXPECT_EQ(calls.front(), std::make_pair(int64_t{0}, bytes));
  EXPECT_EQ(calls.back(), std::make_pair(bytes, bytes));
  for (size_t i = 1; i < calls.size(); ++i) {
    EXPECT_GE(calls[i].first, calls[i - 1].first);
    EXPECT_EQ(calls[i].second, bytes);
  }

  options.on_load_progress = nullptr;
  auto plain = ModelRuntime::create(options, ModelShard{}, make_cpu_backend(), tp);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->model().weight_bytes(), bytes);
}

}  // namespace
}  // namespace dshpc
