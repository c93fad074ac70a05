// A blocking parallel loop over [0, count) for host-side bulk work (weight generation and type
// conversion while loading): the range is cut into one contiguous piece per thread, at most
// std::thread::hardware_concurrency() (and 16) threads, and only when there is enough work to pay
// for starting them; otherwise fn runs on the calling thread. fn(begin, end) must be safe to run
// concurrently on disjoint pieces. Every started thread is joined before parallel_for returns or
// throws; the first exception thrown by a piece (or by starting a thread) is rethrown then.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace dshpc {

template <typename Fn>
void parallel_for(int64_t count, int64_t min_per_thread, Fn&& fn) {
  const int64_t hardware = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t threads =
      std::min<int64_t>({hardware, int64_t{16}, std::max<int64_t>(1, count / min_per_thread)});
  if (threads <= 1) {
    fn(int64_t{0}, count);
    return;
  }
  const int64_t piece = (count + threads - 1) / threads;
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto run = [&](int64_t begin, int64_t end) {
    try {
      fn(begin, end);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  try {
    for (int64_t t = 1; t < threads; ++t) {
      const int64_t begin = std::min(count, t * piece), end = std::min(count, begin + piece);
      if (begin < end) workers.emplace_back(run, begin, end);
    }
  } catch (...) {  // a thread could not be started: its piece runs nowhere, so fail
    const std::lock_guard<std::mutex> lock(failure_mutex);
    if (!failure) failure = std::current_exception();
  }
  if (!failure) run(int64_t{0}, std::min(count, piece));
  for (std::thread& w : workers) w.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace dshpc
