#include "coordinator/stop_strings.h"

#include <algorithm>

namespace dshpc {

StopStringFilter::StopStringFilter(std::vector<std::string> stop_strings)
    : stop_strings_(std::move(stop_strings)) {
  stop_strings_.erase(std::remove(stop_strings_.begin(), stop_strings_.end(), std::string()),
                      stop_strings_.end());
}

std::string StopStringFilter::push(std::string_view piece) {
  if (stopped_) return {};
  if (stop_strings_.empty()) return std::string(piece);
  held_.append(piece);

  // The earliest occurrence of any stop string wins (the longest one on a tie).
  size_t match_at = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    const size_t at = held_.find(stop);
    if (at == std::string::npos) continue;
    if (at < match_at || (at == match_at && stop.size() > matched_.size())) {
      match_at = at;
      matched_ = stop;
    }
  }
  if (match_at != std::string::npos) {
    stopped_ = true;
    std::string before = held_.substr(0, match_at);
    held_.clear();
    return before;
  }

  // Hold the longest suffix of held_ that is a proper prefix of some stop string: any stop
  // string that will still complete must start inside it (else it would have been found above).
  size_t hold = 0;
  for (const std::string& stop : stop_strings_) {
    const size_t longest = std::min(stop.size() - 1, held_.size());
    for (size_t k = longest; k > hold; --k) {
      if (std::string_view(held_).substr(held_.size() - k) == std::string_view(stop).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  std::string safe = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return safe;
}

std::string StopStringFilter::flush() {
  std::string rest = std::move(held_);
  held_.clear();
  return stopped_ ? std::string() : rest;
}

}  // namespace dshpc
