// Structured logging: one line per record, either a JSON object with Elastic Common Schema (ECS)
// fields, for Filebeat → Elasticsearch, or a human-readable text line.
//
//   {"@timestamp":"2026-11-28T14:00:00.123Z","log.level":"info","message":"request finished",
//    "ecs.version":"8.11.0","service.name":"dshpc","mpi.rank":0,"host.name":"gpu01",
//    "process.pid":4242,"slurm.job_id":"81234","event.action":"request.finished",
//    "request.id":"cmpl-7","request.finish_reason":"stop","request.completion_tokens":12}
//   2026-11-28T14:00:00.123Z INFO rank 0 request finished event.action=request.finished ...
//
// Keys are flat and dotted, as the ECS logging libraries write them; Filebeat's ndjson parser
// (configs/filebeat.yml, expand_keys) turns them into nested objects.
//
// Where the logger lives: a Logger is an ordinary object built from a LoggerConfig that carries
// the rank, host and Slurm job explicitly; nothing about it changes after construction. Code that
// is handed a Logger& uses it (tests build their own, writing to a memory stream). For code deep
// in the call tree, main() installs ONE process logger with init_process_logger() right after
// MPI_Init, before any thread starts; process_logger() returns it. Before that call,
// process_logger() returns a bootstrap logger that writes text to stderr and says "rank ?", so a
// message can never claim a rank it does not know. The process logger cannot be replaced.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "common/options.h"
#include "common/status.h"

namespace dshpc {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class LogFormat { kJson, kText };

const char* log_level_name(LogLevel level);  // "debug", "info", "warn", "error" (ECS log.level)
StatusOr<LogLevel> parse_log_level(std::string_view text);    // also accepts "warning"
StatusOr<LogFormat> parse_log_format(std::string_view text);  // "json" or "text"

// One structured field. Strings are escaped on output (invalid UTF-8 becomes U+FFFD); doubles
// that are not finite become null in JSON. A field named like one the logger writes itself
// (message, mpi.rank, …) is written as "labels.<key>", so that a line never repeats a key.
struct LogField {
  using Value = std::variant<std::string, int64_t, double, bool>;

  LogField(std::string_view k, std::string_view v) : key(k), value(std::string(v)) {}
  LogField(std::string_view k, const char* v) : key(k), value(std::string(v ? v : "")) {}
  LogField(std::string_view k, const std::string& v) : key(k), value(v) {}
  LogField(std::string_view k, bool v) : key(k), value(v) {}
  LogField(std::string_view k, double v) : key(k), value(v) {}
  LogField(std::string_view k, float v) : key(k), value(static_cast<double>(v)) {}
  template <typename Int,
            typename = std::enable_if_t<std::is_integral_v<Int> && !std::is_same_v<Int, bool>>>
  LogField(std::string_view k, Int v) : key(k), value(static_cast<int64_t>(v)) {}

  std::string key;
  Value value;
};
using LogFields = std::vector<LogField>;

// event.action values for the request lifecycle (issue 7). Each request event also carries
// request.id; request.finished carries request.finish_reason, request.error carries error.message.
namespace log_action {
inline constexpr std::string_view kRequestAccepted = "request.accepted";
inline constexpr std::string_view kRequestFirstToken = "request.first_token";
inline constexpr std::string_view kRequestFinished = "request.finished";
inline constexpr std::string_view kRequestError = "request.error";
}  // namespace log_action

// Who writes, fixed at start-up.
struct LoggerConfig {
  int rank = -1;  // MPI world rank; -1 before MPI is up (written as "?" / null)
  LogFormat format = LogFormat::kJson;
  LogLevel min_level = LogLevel::kInfo;
  FILE* out = stderr;  // not owned
  std::string service_name = "dshpc";
  std::string host_name;     // host.name
  std::string slurm_job_id;  // slurm.job_id; omitted when empty
  int64_t pid = 0;           // process.pid; omitted when 0

  // Host name from gethostname(), SLURM_JOB_ID from the environment, pid from getpid().
  static LoggerConfig from_environment(int rank, LogFormat format, LogLevel min_level);
};

// The options every command that logs accepts, and the config they produce.
std::vector<OptionSpec> logging_option_specs();  // --log-format, --log-level
StatusOr<LoggerConfig> logger_config_from_options(const Options& options, int rank);

// One record, before formatting. Pure data, so that formatting can be tested with a fixed time.
struct LogRecord {
  std::chrono::system_clock::time_point time;
  LogLevel level = LogLevel::kInfo;
  std::string_view message;
  const LogField* fields = nullptr;
  size_t num_fields = 0;
};

// The full line, newline included.
std::string format_log_line(const LoggerConfig& config, const LogRecord& record);
// RFC 3339, UTC, milliseconds: "2026-11-28T14:00:00.123Z".
std::string format_rfc3339_millis(std::chrono::system_clock::time_point time);
// Appends `text` as a JSON string literal (quotes included): escapes quotes, backslashes and
// control characters, replaces each invalid UTF-8 sequence with U+FFFD.
void append_json_string(std::string& out, std::string_view text);

class Logger {
 public:
  explicit Logger(LoggerConfig config) : config_(std::move(config)) {}
  Logger(const Logger&) = delete;
  Logger& operator=(const Logger&) = delete;

  const LoggerConfig& config() const { return config_; }
  bool enabled(LogLevel level) const { return level >= config_.min_level; }

  // Thread-safe; each record is one write(2) of one whole line (atomic on pipes up to PIPE_BUF
  // bytes, so ranks sharing a pipe do not interleave), then the stream is flushed.
  void log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields = {});
  void log(LogLevel level, std::string_view message, const LogFields& fields);

  void debug(std::string_view m, std::initializer_list<LogField> f = {}) {
    log(LogLevel::kDebug, m, f);
  }
  void info(std::string_view m, std::initializer_list<LogField> f = {}) {
    log(LogLevel::kInfo, m, f);
  }
  void warn(std::string_view m, std::initializer_list<LogField> f = {}) {
    log(LogLevel::kWarn, m, f);
  }
  void error(std::string_view m, std::initializer_list<LogField> f = {}) {
    log(LogLevel::kError, m, f);
  }

  // A request lifecycle event: adds event.action and request.id in front of `fields`.
  void request_event(LogLevel level, std::string_view action, std::string_view request_id,
                     std::string_view message, std::initializer_list<LogField> fields = {});

 private:
  void write_record(LogLevel level, std::string_view message, const LogField* fields, size_t n);

  const LoggerConfig config_;
  std::mutex write_mutex_;
};

// The process logger (see the top of this file). init_process_logger() may be called once;
// a second call is a fatal error.
void init_process_logger(LoggerConfig config);
Logger& process_logger();
// Whether init_process_logger() has run (before it, process_logger() is the bootstrap logger).
bool process_logger_installed();

}  // namespace dshpc
