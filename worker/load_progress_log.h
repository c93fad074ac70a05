// Rank 0's log of the weight load: a line when it starts (the shard's bytes), then at most one
// every `interval` with bytes done, percent, throughput and the time left at that rate, and one
// when it is done. Call it with Model::LoadProgress's arguments; it forwards them to `forward`
// (serve's /health) before logging.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

#include "common/log.h"
#include "worker/model.h"

namespace dshpc {

class LoadProgressLog {
 public:
  using Clock = std::chrono::steady_clock;

  LoadProgressLog(Logger& logger, Model::LoadProgress forward,
                  std::chrono::milliseconds interval = std::chrono::seconds(5),
                  std::function<Clock::time_point()> now = Clock::now);

  void operator()(int64_t bytes_done, int64_t bytes_total);

 private:
  Logger* logger_;
  Model::LoadProgress forward_;
  std::chrono::milliseconds interval_;
  std::function<Clock::time_point()> now_;
  bool started_ = false;
  bool finished_ = false;
  Clock::time_point start_{}, last_log_{};
};

}  // namespace dshpc
