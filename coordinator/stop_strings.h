// Stop strings matched on generated text, for streaming and non-streaming responses alike.
//
// push() takes each newly decoded piece and returns what is safe to show: everything except the
// longest tail that could still grow into a stop string. Once a stop string appears, push()
// returns the text before it and stopped() turns true; the stop string and anything after it are
// never returned. Pieces must be valid UTF-8 (StreamDecoder output); then every returned piece
// is valid UTF-8 too, since a held tail starts where a stop string starts.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dshpc {

class StopStringFilter {
 public:
  StopStringFilter() = default;
  explicit StopStringFilter(std::vector<std::string> stop_strings);

  std::string push(std::string_view piece);
  // The held tail, at the end of generation (no stop string can complete any more).
  std::string flush();

  bool stopped() const { return stopped_; }
  // The stop string that matched; empty before.
  const std::string& matched() const { return matched_; }
  size_t held_bytes() const { return held_.size(); }

 private:
  std::vector<std::string> stop_strings_;
  std::string held_;
  std::string matched_;
  bool stopped_ = false;
};

}  // namespace dshpc
