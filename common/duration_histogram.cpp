#include "common/duration_histogram.h"

#include <algorithm>

namespace dshpc {

size_t duration_bucket(double seconds) {
  // lower_bound: the first bound >= seconds, so a value equal to a bound lands in that bucket.
  const auto it =
      std::lower_bound(kDurationBucketBounds.begin(), kDurationBucketBounds.end(), seconds);
  return static_cast<size_t>(it - kDurationBucketBounds.begin());
}

void DurationHistogram::observe(double seconds) {
  if (!(seconds >= 0.0)) seconds = 0.0;  // negative or NaN (a clock step): count it as 0
  ++counts[duration_bucket(seconds)];
  sum += seconds;
}

uint64_t DurationHistogram::count() const {
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  return total;
}

DurationHistogram& DurationHistogram::operator+=(const DurationHistogram& other) {
  for (size_t i = 0; i < kDurationBuckets; ++i) counts[i] += other.counts[i];
  sum += other.sum;
  return *this;
}

}  // namespace dshpc
