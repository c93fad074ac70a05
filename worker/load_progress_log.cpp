#include "worker/load_progress_log.h"

#include <cstdio>
#include <utility>

namespace dshpc {

LoadProgressLog::LoadProgressLog(Logger& logger, Model::LoadProgress forward,
                                 std::chrono::milliseconds interval,
                                 std::function<Clock::time_point()> now)
    : logger_(&logger), forward_(std::move(forward)), interval_(interval), now_(std::move(now)) {}

void LoadProgressLog::operator()(int64_t done, int64_t total) {
  const Clock::time_point now = now_();
  if (!started_) {
    started_ = true;
    start_ = now;
    last_log_ = now;
    logger_->info("loading weights",
                  {{"event.action", "weights.load_start"}, {"dshpc.load.bytes_total", total}});
  }
  if (forward_) forward_(done, total);
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  if (total > 0 && done >= total) {
    if (finished_) return;
    finished_ = true;
    logger_->info("weights loaded", {{"event.action", "weights.load_done"},
                                     {"dshpc.load.bytes_done", done},
                                     {"dshpc.load.bytes_total", total},
                                     {"dshpc.load.seconds", elapsed},
                                     {"dshpc.load.bytes_per_second", rate}});
    return;
  }
  if (now - last_log_ < interval_) return;
  last_log_ = now;
  const double percent = total > 0 ? 100.0 * static_cast<double>(done) / total : 0.0;
  LogFields fields = {{"event.action", "weights.load_progress"},
                      {"dshpc.load.bytes_done", done},
                      {"dshpc.load.bytes_total", total},
                      {"dshpc.load.percent", percent},
                      {"dshpc.load.bytes_per_second", rate}};
  const double seconds_left = rate > 0 ? static_cast<double>(total - done) / rate : -1.0;
  if (seconds_left >= 0) fields.emplace_back("dshpc.load.seconds_left", seconds_left);
  char message[160];
  std::snprintf(message, sizeof(message),
                "loading weights: %.1f%% (%.2f of %.2f GiB, %.1f MiB/s, %.0f s left)", percent,
                done / 1073741824.0, total / 1073741824.0, rate / 1048576.0,
                seconds_left >= 0 ? seconds_left : 0.0);
  logger_->log(LogLevel::kInfo, message, fields);
}

}  // namespace dshpc
