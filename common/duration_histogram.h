// A histogram of durations with fixed bucket bounds, kept locally by every rank (collective calls,
// step phases) and shipped to rank 0 as cumulative counts, where coordinator/metrics.cpp adds the
// increase since the previous report to a Prometheus histogram of the same bounds. Fixed bounds
// make the merge exact (no re-bucketing) and the report small: 21 numbers per histogram.
//
// Plain data, not thread-safe: owners that are read from another thread guard it (see
// CollectiveCounters in parallel/collectives.h).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace dshpc {

// Upper bounds in seconds, 10 µs to 10 s: a tensor-parallel all-reduce on NVLink takes tens of
// microseconds, a pipeline receive that waits for a slow stage or a prefill step takes seconds.
inline constexpr std::array<double, 19> kDurationBucketBounds = {
    1e-5,  2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01,
    0.025, 0.05,   0.1,  0.25, 0.5,    1.0,  2.5,  5.0,    10.0};
// Buckets including the last one, (10 s, +Inf).
inline constexpr size_t kDurationBuckets = kDurationBucketBounds.size() + 1;

// The bucket of `seconds`: the first bound it does not exceed (Prometheus' `le`), or the last.
size_t duration_bucket(double seconds);

struct DurationHistogram {
  std::array<uint64_t, kDurationBuckets> counts{};  // per bucket, NOT cumulative
  double sum = 0.0;                                 // seconds

  void observe(double seconds);
  uint64_t count() const;
  DurationHistogram& operator+=(const DurationHistogram& other);
  bool operator==(const DurationHistogram& other) const = default;
};

}  // namespace dshpc
