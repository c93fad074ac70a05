#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <memory>

#include "common/check.h"

namespace dshpc {

const char* log_level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

namespace {

const char* log_level_upper(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "DEBUG";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarn:
      return "WARN";
    case LogLevel::kError:
      return "ERROR";
  }
  return "INFO";
}

// Keys the logger writes itself; a caller's field with one of these names is written as
// "labels.<key>" so that a line never holds the same key twice.
constexpr std::string_view kBaseKeys[] = {"@timestamp",  "log.level",    "message",
                                          "ecs.version", "service.name", "mpi.rank",
                                          "host.name",   "process.pid",  "slurm.job_id"};

bool is_base_key(std::string_view key) {
  for (std::string_view base : kBaseKeys) {
    if (key == base) return true;
  }
  return false;
}

constexpr char kEcsVersion[] = "8.11.0";

// Length of the well-formed UTF-8 sequence at text[i], or 0 when it is not one (RFC 3629:
// no overlong forms, no surrogates, nothing above U+10FFFF).
size_t utf8_sequence_length(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char b0 = byte(i);
  const size_t left = text.size() - i;
  const auto cont = [&](size_t k) { return k < text.size() && (byte(k) & 0xC0) == 0x80; };
  if (b0 < 0x80) return 1;
  if (b0 >= 0xC2 && b0 <= 0xDF) return (left >= 2 && cont(i + 1)) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (left < 3 || !cont(i + 1) || !cont(i + 2)) return 0;
    const unsigned char b1 = byte(i + 1);
    if (b0 == 0xE0 && b1 < 0xA0) return 0;   // overlong
    if (b0 == 0xED && b1 >= 0xA0) return 0;  // UTF-16 surrogate
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (left < 4 || !cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    const unsigned char b1 = byte(i + 1);
    if (b0 == 0xF0 && b1 < 0x90) return 0;   // overlong
    if (b0 == 0xF4 && b1 >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

// Escaped text without the surrounding quotes.
void append_escaped(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        default:
          if (c < 0x20 || c == 0x7F) {
            out += "\\u00";
            out += kHex[c >> 4];
            out += kHex[c & 0xF];
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    const size_t n = utf8_sequence_length(text, i);
    if (n == 0) {
      out += "\\ufffd";  // one replacement character per invalid byte
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
}

void append_double(std::string& out, double v) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, ec == std::errc() ? end : buf);
}

void append_json_value(std::string& out, const LogField::Value& value) {
  if (const auto* s = std::get_if<std::string>(&value)) {
    append_json_string(out, *s);
  } else if (const auto* i = std::get_if<int64_t>(&value)) {
    out += std::to_string(*i);
  } else if (const auto* d = std::get_if<double>(&value)) {
    if (std::isfinite(*d)) {
      append_double(out, *d);
    } else {
      out += "null";  // JSON has no NaN or infinity
    }
  } else {
    out += std::get<bool>(value) ? "true" : "false";
  }
}

// Text values stay bare unless they would be ambiguous (spaces, '=', quotes, empty, control or
// non-ASCII bytes); then they are quoted with JSON escapes, so a record stays on one line.
void append_text_value(std::string& out, const LogField::Value& value) {
  const auto* s = std::get_if<std::string>(&value);
  if (s == nullptr) {
    append_json_value(out, value);
    return;
  }
  bool bare = !s->empty();
  for (unsigned char c : *s) {
    if (c <= 0x20 || c == '=' || c == '"' || c == '\\' || c >= 0x7F) {
      bare = false;
      break;
    }
  }
  if (bare) {
    out += *s;
  } else {
    append_json_string(out, *s);
  }
}

void append_key(std::string& out, std::string_view key) {
  if (is_base_key(key)) {
    append_json_string(out, std::string("labels.") + std::string(key));
  } else {
    append_json_string(out, key);
  }
}

}  // namespace

StatusOr<LogLevel> parse_log_level(std::string_view text) {
  if (text == "debug") return LogLevel::kDebug;
  if (text == "info") return LogLevel::kInfo;
  if (text == "warn" || text == "warning") return LogLevel::kWarn;
  if (text == "error") return LogLevel::kError;
  return invalid_argument("--log-level: '" + std::string(text) +
                          "' is not one of debug, info, warn, error");
}

StatusOr<LogFormat> parse_log_format(std::string_view text) {
  if (text == "json") return LogFormat::kJson;
  if (text == "text") return LogFormat::kText;
  return invalid_argument("--log-format: '" + std::string(text) + "' is not one of json, text");
}

LoggerConfig LoggerConfig::from_environment(int rank, LogFormat format, LogLevel min_level) {
  LoggerConfig config;
  config.rank = rank;
  config.format = format;
  config.min_level = min_level;
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) == 0) config.host_name = host;
  if (const char* job = std::getenv("SLURM_JOB_ID"); job != nullptr) config.slurm_job_id = job;
  config.pid = static_cast<int64_t>(getpid());
  return config;
}

std::vector<OptionSpec> logging_option_specs() {
  return {
      {"log-format", "json|text",
       "log lines as JSON objects with ECS fields (for Filebeat) or as readable text", "json"},
      {"log-level", "LEVEL", "least severe level written: debug, info, warn, error", "info"},
  };
}

StatusOr<LoggerConfig> logger_config_from_options(const Options& options, int rank) {
  StatusOr<LogFormat> format = parse_log_format(options.get("log-format"));
  if (!format.ok()) return format.status();
  StatusOr<LogLevel> level = parse_log_level(options.get("log-level"));
  if (!level.ok()) return level.status();
  return LoggerConfig::from_environment(rank, *format, *level);
}

void append_json_string(std::string& out, std::string_view text) {
  out += '"';
  append_escaped(out, text);
  out += '"';
}

std::string format_rfc3339_millis(std::chrono::system_clock::time_point time) {
  using namespace std::chrono;
  const auto since_epoch = time.time_since_epoch();
  auto secs = duration_cast<seconds>(since_epoch);
  auto millis = duration_cast<milliseconds>(since_epoch - secs).count();
  if (millis < 0) {  // before 1970: floor, not truncate
    secs -= seconds(1);
    millis += 1000;
  }
  const std::time_t t = static_cast<std::time_t>(secs.count());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(millis));
  return buf;
}

std::string format_log_line(const LoggerConfig& config, const LogRecord& record) {
  std::string out;
  out.reserve(256 + record.message.size());
  const std::string timestamp = format_rfc3339_millis(record.time);
  if (config.format == LogFormat::kText) {
    out += timestamp;
    out += ' ';
    out += log_level_upper(record.level);
    out += " rank ";
    out += config.rank >= 0 ? std::to_string(config.rank) : "?";
    out += ' ';
    append_escaped(out, record.message);  // keeps the record on one line
    for (size_t i = 0; i < record.num_fields; ++i) {
      out += ' ';
      append_escaped(out, record.fields[i].key);
      out += '=';
      append_text_value(out, record.fields[i].value);
    }
    out += '\n';
    return out;
  }
  // ECS logging puts @timestamp, log.level and message first.
  out += "{\"@timestamp\":";
  append_json_string(out, timestamp);
  out += ",\"log.level\":";
  append_json_string(out, log_level_name(record.level));
  out += ",\"message\":";
  append_json_string(out, record.message);
  out += ",\"ecs.version\":\"";
  out += kEcsVersion;
  out += "\",\"service.name\":";
  append_json_string(out, config.service_name);
  out += ",\"mpi.rank\":";
  out += config.rank >= 0 ? std::to_string(config.rank) : "null";
  if (!config.host_name.empty()) {
    out += ",\"host.name\":";
    append_json_string(out, config.host_name);
  }
  if (config.pid != 0) {
    out += ",\"process.pid\":";
    out += std::to_string(config.pid);
  }
  if (!config.slurm_job_id.empty()) {
    out += ",\"slurm.job_id\":";
    append_json_string(out, config.slurm_job_id);
  }
  for (size_t i = 0; i < record.num_fields; ++i) {
    out += ',';
    append_key(out, record.fields[i].key);
    out += ':';
    append_json_value(out, record.fields[i].value);
  }
  out += "}\n";
  return out;
}

void Logger::log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) {
  if (!enabled(level)) return;
  write_record(level, message, fields.begin(), fields.size());
}

void Logger::log(LogLevel level, std::string_view message, const LogFields& fields) {
  if (!enabled(level)) return;
  write_record(level, message, fields.data(), fields.size());
}

void Logger::request_event(LogLevel level, std::string_view action, std::string_view request_id,
                           std::string_view message, std::initializer_list<LogField> fields) {
  if (!enabled(level)) return;
  LogFields all;
  all.reserve(fields.size() + 2);
  all.emplace_back("event.action", action);
  all.emplace_back("request.id", request_id);
  all.insert(all.end(), fields.begin(), fields.end());
  write_record(level, message, all.data(), all.size());
}

void Logger::write_record(LogLevel level, std::string_view message, const LogField* fields,
                          size_t n) {
  LogRecord record;
  record.time = std::chrono::system_clock::now();
  record.level = level;
  record.message = message;
  record.fields = fields;
  record.num_fields = n;
  const std::string line = format_log_line(config_, record);

  std::lock_guard<std::mutex> lock(write_mutex_);
  FILE* out = config_.out;
  if (out == nullptr) return;
  // Whatever stdio still buffers for this stream goes first, so that the order holds.
  std::fflush(out);
  const int fd = fileno(out);
  if (fd < 0) {  // a memory stream (tests): no descriptor
    std::fwrite(line.data(), 1, line.size(), out);
    std::fflush(out);
    return;
  }
  size_t written = 0;
  while (written < line.size()) {
    const ssize_t n_written = ::write(fd, line.data() + written, line.size() - written);
    if (n_written < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere left to report a failed log write
    }
    written += static_cast<size_t>(n_written);
  }
}

namespace {

std::atomic<Logger*> g_process_logger{nullptr};

Logger& bootstrap_logger() {
  // Text to stderr with an unknown rank: used only before init_process_logger().
  static Logger logger([] {
    LoggerConfig config = LoggerConfig::from_environment(-1, LogFormat::kText, LogLevel::kInfo);
    config.out = stderr;
    return config;
  }());
  return logger;
}

}  // namespace

void init_process_logger(LoggerConfig config) {
  auto logger = std::make_unique<Logger>(std::move(config));
  Logger* expected = nullptr;
  if (!g_process_logger.compare_exchange_strong(expected, logger.get())) {
    DSHPC_FATAL() << "init_process_logger called twice";
  }
  logger.release();  // lives until exit: other threads may log during shutdown
}

bool process_logger_installed() {
  return g_process_logger.load(std::memory_order_acquire) != nullptr;
}

Logger& process_logger() {
  Logger* logger = g_process_logger.load(std::memory_order_acquire);
  return logger != nullptr ? *logger : bootstrap_logger();
}

}  // namespace dshpc
