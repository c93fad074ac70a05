#include <gtest/gtest.h>
#include <stdlib.h>

#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "common/options.h"

namespace dshpc {
namespace {

using std::chrono::milliseconds;
using std::chrono::system_clock;

// 2026-11-28T14:00:00.123Z
system_clock::time_point fixed_time() {
  return system_clock::time_point(std::chrono::seconds(1795874400)) + milliseconds(123);
}

LoggerConfig test_config(LogFormat format) {
  LoggerConfig config;
  config.rank = 3;
  config.format = format;
  config.min_level = LogLevel::kDebug;
  config.host_name = "gpu01";
  config.slurm_job_id = "81234";
  config.pid = 4242;
  return config;
}

std::string line_for(const LoggerConfig& config, LogLevel level, std::string_view message,
                     const std::vector<LogField>& fields = {}) {
  LogRecord record;
  record.time = fixed_time();
  record.level = level;
  record.message = message;
  record.fields = fields.data();
  record.num_fields = fields.size();
  return format_log_line(config, record);
}

// Parses one JSON line strictly (Boost.JSON rejects invalid UTF-8 and duplicate-free is checked
// separately); fails the test when it does not parse.
boost::json::object parse_line(const std::string& line) {
  EXPECT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "one record, one line: " << line;
  boost::system::error_code ec;
  boost::json::value value = boost::json::parse(line, ec);
  EXPECT_FALSE(ec) << ec.message() << " in " << line;
  if (ec || !value.is_object()) return {};
  return value.as_object();
}

TEST(Log, Rfc3339WithMillisecondsInUtc) {
  EXPECT_EQ(format_rfc3339_millis(fixed_time()), "2026-11-28T14:00:00.123Z");
  EXPECT_EQ(format_rfc3339_millis(system_clock::time_point{}), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(format_rfc3339_millis(system_clock::time_point{} - milliseconds(1)),
            "1969-12-31T23:59:59.999Z");
}

TEST(Log, JsonLineHasTheEcsFields) {
  const auto object = parse_line(line_for(test_config(LogFormat::kJson), LogLevel::kWarn, "hello"));
  EXPECT_EQ(object.at("@timestamp").as_string(), "2026-11-28T14:00:00.123Z");
  EXPECT_EQ(object.at("log.level").as_string(), "warn");
  EXPECT_EQ(object.at("message").as_string(), "hello");
  EXPECT_EQ(object.at("ecs.version").as_string(), "8.11.0");
  EXPECT_EQ(object.at("service.name").as_string(), "dshpc");
  EXPECT_EQ(object.at("mpi.rank").as_int64(), 3);
  EXPECT_EQ(object.at("host.name").as_string(), "gpu01");
  EXPECT_EQ(object.at("process.pid").as_int64(), 4242);
  EXPECT_EQ(object.at("slurm.job_id").as_string(), "81234");
}

TEST(Log, JsonLineStartsWithTimestampLevelMessage) {
  const std::string line = line_for(test_config(LogFormat::kJson), LogLevel::kInfo, "m");
  EXPECT_EQ(line.rfind("{\"@timestamp\":\"2026-11-28T14:00:00.123Z\",\"log.level\":\"info\","
                       "\"message\":\"m\",",
                       0),
            0u)
      << line;
}

TEST(Log, NoSlurmJobAndUnknownRank) {
  LoggerConfig config = test_config(LogFormat::kJson);
  config.slurm_job_id.clear();
  config.rank = -1;
  const auto object = parse_line(line_for(config, LogLevel::kInfo, "x"));
  EXPECT_FALSE(object.contains("slurm.job_id"));
  EXPECT_TRUE(object.at("mpi.rank").is_null());
}

TEST(Log, EscapesQuotesNewlinesAndControlCharacters) {
  const std::string nasty = "say \"hi\"\\ now\nnext\tline\r\x01\x1f\x7f\b\f end";
  const std::string line = line_for(test_config(LogFormat::kJson), LogLevel::kError, nasty,
                                    {{"client.text", nasty}, {"we\"ird\nkey", "v"}});
  const auto object = parse_line(line);
  EXPECT_EQ(object.at("message").as_string(), nasty);
  EXPECT_EQ(object.at("client.text").as_string(), nasty);
  EXPECT_EQ(object.at("we\"ird\nkey").as_string(), "v");
  EXPECT_NE(line.find("\\u0001"), std::string::npos);
  EXPECT_NE(line.find("\\u007f"), std::string::npos);
}

TEST(Log, InvalidUtf8BecomesReplacementCharacters) {
  const std::string valid = "caf\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x82\xac";  // é, U+1F600, €
  const std::string cases[] = {
      "\xff",              // never valid
      "\xe2\x82",          // truncated 3-byte sequence
      "\xc0\xaf",          // overlong '/'
      "\xed\xa0\x80",      // UTF-16 surrogate
      "\xf4\x90\x80\x80",  // above U+10FFFF
      "\x80",              // lone continuation byte
  };
  for (const std::string& bad : cases) {
    const std::string message = "a" + bad + "b " + valid;
    const auto object =
        parse_line(line_for(test_config(LogFormat::kJson), LogLevel::kInfo, message));
    const std::string got(object.at("message").as_string());
    // "a", then one or more U+FFFD in place of the bad bytes, then the valid text unchanged.
    const std::string tail = "b " + valid;
    ASSERT_GE(got.size(), 1 + 3 + tail.size()) << got;
    EXPECT_EQ(got.substr(0, 1), "a");
    EXPECT_EQ(got.substr(got.size() - tail.size()), tail) << "valid UTF-8 is kept as is";
    const std::string middle = got.substr(1, got.size() - 1 - tail.size());
    ASSERT_EQ(middle.size() % 3, 0u) << middle;
    for (size_t i = 0; i < middle.size(); i += 3) {
      EXPECT_EQ(middle.substr(i, 3), "\xef\xbf\xbd") << "U+FFFD for " << message;
    }
  }
}

TEST(Log, FieldTypesAndReservedKeys) {
  const auto object = parse_line(line_for(test_config(LogFormat::kJson), LogLevel::kInfo, "load",
                                          {{"load.bytes", int64_t{123456789012}},
                                           {"load.percent", 42.5},
                                           {"load.eta_seconds", std::nan("")},
                                           {"load.done", false},
                                           {"tokens", 7},
                                           {"message", "shadow"},
                                           {"mpi.rank", 99}}));
  EXPECT_EQ(object.at("load.bytes").as_int64(), 123456789012);
  EXPECT_DOUBLE_EQ(object.at("load.percent").as_double(), 42.5);
  EXPECT_TRUE(object.at("load.eta_seconds").is_null());
  EXPECT_EQ(object.at("load.done").as_bool(), false);
  EXPECT_EQ(object.at("tokens").as_int64(), 7);
  // A caller's field never replaces a field the logger owns.
  EXPECT_EQ(object.at("message").as_string(), "load");
  EXPECT_EQ(object.at("labels.message").as_string(), "shadow");
  EXPECT_EQ(object.at("mpi.rank").as_int64(), 3);
  EXPECT_EQ(object.at("labels.mpi.rank").as_int64(), 99);
}

TEST(Log, TextLineIsReadable) {
  EXPECT_EQ(
      line_for(
          test_config(LogFormat::kText), LogLevel::kInfo, "model loaded",
          {{"load.seconds", 2.5}, {"model", "deepseek-v3"}, {"note", "two words"}, {"empty", ""}}),
      "2026-11-28T14:00:00.123Z INFO rank 3 model loaded load.seconds=2.5 "
      "model=deepseek-v3 note=\"two words\" empty=\"\"\n");
  LoggerConfig unknown = test_config(LogFormat::kText);
  unknown.rank = -1;
  EXPECT_EQ(line_for(unknown, LogLevel::kError, "bad\nthing"),
            "2026-11-28T14:00:00.123Z ERROR rank ? bad\\nthing\n");
}

// A memory stream that collects what a Logger writes.
class MemoryStream {
 public:
  MemoryStream() { file_ = open_memstream(&data_, &size_); }
  ~MemoryStream() {
    if (file_) std::fclose(file_);
    free(data_);
  }
  FILE* file() { return file_; }
  std::string text() {
    std::fflush(file_);
    return std::string(data_, size_);
  }

 private:
  FILE* file_ = nullptr;
  char* data_ = nullptr;
  size_t size_ = 0;
};

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    if (end == std::string::npos) {
      lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, end - start + 1));
    start = end + 1;
  }
  return lines;
}

TEST(Log, LevelFilterAndRequestEvents) {
  MemoryStream stream;
  LoggerConfig config = test_config(LogFormat::kJson);
  config.min_level = LogLevel::kInfo;
  config.out = stream.file();
  Logger logger(config);
  EXPECT_FALSE(logger.enabled(LogLevel::kDebug));
  logger.debug("hidden");
  logger.request_event(LogLevel::kInfo, log_action::kRequestAccepted, "cmpl-1", "request accepted",
                       {{"request.prompt_tokens", 12}});
  logger.request_event(LogLevel::kInfo, log_action::kRequestFinished, "cmpl-1", "request finished",
                       {{"request.finish_reason", "stop"}});
  logger.request_event(LogLevel::kWarn, log_action::kRequestError, "cmpl-2", "request failed",
                       {{"error.message", "queue full"}});
  const auto lines = split_lines(stream.text());
  ASSERT_EQ(lines.size(), 3u);
  const auto accepted = parse_line(lines[0]);
  EXPECT_EQ(accepted.at("event.action").as_string(), "request.accepted");
  EXPECT_EQ(accepted.at("request.id").as_string(), "cmpl-1");
  EXPECT_EQ(accepted.at("request.prompt_tokens").as_int64(), 12);
  const auto finished = parse_line(lines[1]);
  EXPECT_EQ(finished.at("event.action").as_string(), "request.finished");
  EXPECT_EQ(finished.at("request.finish_reason").as_string(), "stop");
  const auto error = parse_line(lines[2]);
  EXPECT_EQ(error.at("log.level").as_string(), "warn");
  EXPECT_EQ(error.at("event.action").as_string(), "request.error");
  EXPECT_EQ(error.at("error.message").as_string(), "queue full");
}

TEST(Log, ConcurrentWritersNeverInterleave) {
  FILE* file = std::tmpfile();  // a real descriptor: the write(2) path
  ASSERT_NE(file, nullptr);
  LoggerConfig config = test_config(LogFormat::kJson);
  config.out = file;
  Logger logger(config);
  constexpr int kThreads = 8, kLines = 250;
  const std::string padding(300, 'x');  // lines long enough that a torn write would show
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kLines; ++i) {
        logger.info("concurrent", {{"thread", t}, {"i", i}, {"padding", padding}});
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::fflush(file);
  std::rewind(file);
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), file)) > 0) text.append(buf, n);
  std::fclose(file);
  const auto lines = split_lines(text);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kThreads * kLines));
  std::vector<int> per_thread(kThreads, 0);
  for (const std::string& line : lines) {
    const auto object = parse_line(line);
    ASSERT_TRUE(object.contains("thread")) << line;
    ++per_thread[object.at("thread").as_int64()];
  }
  for (int count : per_thread) EXPECT_EQ(count, kLines);
}

TEST(Log, ParsesLevelsAndFormats) {
  EXPECT_EQ(*parse_log_level("debug"), LogLevel::kDebug);
  EXPECT_EQ(*parse_log_level("warning"), LogLevel::kWarn);
  EXPECT_EQ(*parse_log_format("text"), LogFormat::kText);
  const auto bad_level = parse_log_level("loud");
  ASSERT_FALSE(bad_level.ok());
  EXPECT_NE(bad_level.status().message().find("--log-level"), std::string::npos);
  const auto bad_format = parse_log_format("xml");
  ASSERT_FALSE(bad_format.ok());
  EXPECT_NE(bad_format.status().message().find("'xml'"), std::string::npos);
}

TEST(Log, ConfigFromOptionsAndEnvironment) {
  setenv("SLURM_JOB_ID", "777", 1);
  std::vector<std::string> args = {"dshpc", "serve", "--log-format", "text", "--log-level=warn"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  auto options = Options::parse("dshpc serve", logging_option_specs(),
                                static_cast<int>(argv.size()), argv.data(), 2);
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  auto config = logger_config_from_options(*options, 5);
  unsetenv("SLURM_JOB_ID");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->rank, 5);
  EXPECT_EQ(config->format, LogFormat::kText);
  EXPECT_EQ(config->min_level, LogLevel::kWarn);
  EXPECT_EQ(config->slurm_job_id, "777");
  EXPECT_FALSE(config->host_name.empty());
  EXPECT_GT(config->pid, 0);

  std::vector<std::string> defaults = {"dshpc", "serve"};
  std::vector<char*> argv2 = {defaults[0].data(), defaults[1].data()};
  auto default_options = Options::parse("dshpc serve", logging_option_specs(), 2, argv2.data(), 2);
  ASSERT_TRUE(default_options.ok());
  auto default_config = logger_config_from_options(*default_options, 0);
  ASSERT_TRUE(default_config.ok());
  EXPECT_EQ(default_config->format, LogFormat::kJson);
  EXPECT_EQ(default_config->min_level, LogLevel::kInfo);
  EXPECT_TRUE(default_config->slurm_job_id.empty());
}

TEST(Log, ProcessLoggerIsInitialisedOnce) {
  // Before init: the bootstrap logger, which does not claim a rank.
  EXPECT_EQ(process_logger().config().rank, -1);
  EXPECT_EQ(process_logger().config().format, LogFormat::kText);
  LoggerConfig config = test_config(LogFormat::kJson);
  config.rank = 7;
  init_process_logger(config);
  EXPECT_EQ(process_logger().config().rank, 7);
  EXPECT_EQ(&process_logger(), &process_logger());
}

}  // namespace
}  // namespace dshpc
