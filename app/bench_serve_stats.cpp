// The pure parts of dshpc bench serve (see bench_serve.h). Compiled into dshpc and into the unit
// tests.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "app/bench_serve.h"

namespace dshpc::bench_serve {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  // Reject the top partial copy of [0, bound) so that every value is equally likely.
  const uint64_t limit =
      std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % bound;
  uint64_t x = rng();
  while (x >= limit) x = rng();
  return x % bound;
}

std::vector<double> poisson_arrivals(int64_t count, double rate, uint64_t seed) {
  std::vector<double> arrivals(static_cast<size_t>(std::max<int64_t>(count, 0)), 0.0);
  if (std::isinf(rate)) return arrivals;
  std::mt19937_64 rng(seed);
  double t = 0;
  for (double& arrival : arrivals) {
    t += -std::log1p(-uniform01(rng)) / rate;  // u in [0, 1): 1 − u in (0, 1], the log finite
    arrival = t;
  }
  return arrivals;
}

std::vector<int64_t> uniform_lengths(int64_t count, int64_t mean, double range_ratio,
                                     std::mt19937_64& rng) {
  const int64_t low =
      std::max<int64_t>(1, static_cast<int64_t>(std::floor(mean * (1.0 - range_ratio))));
  const int64_t high = std::max(low, static_cast<int64_t>(std::floor(mean * (1.0 + range_ratio))));
  std::vector<int64_t> lengths(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (int64_t& length : lengths) {
    length = low + static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(high - low + 1)));
  }
  return lengths;
}

double percentile(std::span<const double> sorted, double p) {
  if (sorted.empty()) return kNaN;
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(rank));
  const size_t above = std::min(below + 1, sorted.size() - 1);
  const double fraction = rank - static_cast<double>(below);
  return sorted[below] + fraction * (sorted[above] - sorted[below]);
}

Distribution summarize(std::vector<double> values) {
  Distribution d;
  d.count = static_cast<int64_t>(values.size());
  if (values.empty()) {
    d.mean = d.p50 = d.p90 = d.p99 = d.max = kNaN;
    return d;
  }
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  d.mean = sum / static_cast<double>(values.size());
  d.p50 = percentile(values, 50);
  d.p90 = percentile(values, 90);
  d.p99 = percentile(values, 99);
  d.max = values.back();
  return d;
}

// ---- SSE ----

void SseParser::end_line() {
  if (line_.empty()) {  // an empty line dispatches the event
    if (has_data_) completed_.push_back(std::move(data_));
    data_.clear();
    has_data_ = false;
    return;
  }
  std::string_view line = line_;
  if (line.front() != ':') {  // ":…" is a comment
    const size_t colon = line.find(':');
    const std::string_view field = line.substr(0, colon);
    std::string_view value =
        colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    if (field == "data") {
      if (has_data_) data_.push_back('\n');
      data_.append(value);
      has_data_ = true;
    }
  }
  line_.clear();
}

std::vector<std::string> SseParser::feed(std::string_view bytes) {
  for (char c : bytes) {
    if (after_cr_) {
      after_cr_ = false;
      if (c == '\n') continue;  // the '\n' of a "\r\n" already ended the line
    }
    if (c == '\r') {
      after_cr_ = true;
      end_line();
    } else if (c == '\n') {
      end_line();
    } else {
      line_.push_back(c);
    }
  }
  std::vector<std::string> out;
  out.swap(completed_);
  return out;
}

// ---- report ----

double time_per_output_token(const RequestResult& result) {
  if (result.output_tokens < 2) return kNaN;
  return (result.e2e_s - result.ttft_s) / static_cast<double>(result.output_tokens - 1);
}

bool meets_slo(const RequestResult& result, const Slo& slo) {
  if (!result.ok) return false;
  if (slo.ttft_s && result.ttft_s > *slo.ttft_s) return false;
  if (slo.e2e_s && result.e2e_s > *slo.e2e_s) return false;
  const double tpot = time_per_output_token(result);
  if (slo.tpot_s && !std::isnan(tpot) && tpot > *slo.tpot_s) return false;
  return true;
}

Report make_report(std::span<const RequestResult> results, double duration_s, const Slo& slo) {
  Report report;
  report.duration_s = duration_s;
  std::vector<double> ttft, tpot, itl, e2e;
  std::map<std::string, int64_t> errors;
  for (const RequestResult& r : results) {
    if (!r.ok) {
      ++report.failed;
      ++errors[r.error];
      continue;
    }
    ++report.completed;
    report.input_tokens += r.prompt_tokens;
    report.output_tokens += r.output_tokens;
    report.output_chunks += r.output_chunks;
    report.usage_reported += r.usage_reported ? 1 : 0;
    ttft.push_back(r.ttft_s);
    e2e.push_back(r.e2e_s);
    if (const double t = time_per_output_token(r); !std::isnan(t)) tpot.push_back(t);
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    if (meets_slo(r, slo)) ++report.good_requests;
  }
  report.request_throughput = report.completed / duration_s;
  report.output_token_throughput = report.output_tokens / duration_s;
  report.total_token_throughput = (report.input_tokens + report.output_tokens) / duration_s;
  report.goodput = report.good_requests / duration_s;
  report.ttft_s = summarize(std::move(ttft));
  report.tpot_s = summarize(std::move(tpot));
  report.itl_s = summarize(std::move(itl));
  report.e2e_s = summarize(std::move(e2e));
  for (const auto& [message, count] : errors) report.errors.push_back({message, count});
  std::stable_sort(report.errors.begin(), report.errors.end(),
                   [](const ErrorCount& a, const ErrorCount& b) { return a.count > b.count; });
  return report;
}

}  // namespace dshpc::bench_serve
