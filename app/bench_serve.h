// dshpc bench serve: the parts of the serving load generator that are pure computation —
// arrival schedules, length draws, percentiles, the SSE splitter and the aggregation of
// per-request measurements into a report — kept apart from the HTTP client so that the unit
// tests can check them without a server.
//
// Randomness: every draw comes from std::mt19937_64, whose output the C++ standard fixes, turned
// into numbers by the functions below rather than by std::*_distribution (whose algorithms are
// left to each standard library). A seed therefore gives the same schedule and lengths on every
// platform, compiler and library.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dshpc::bench_serve {

// ---- random draws ----

// Uniform in [0, 1) with 53 random bits.
double uniform01(std::mt19937_64& rng);
// Uniform integer in [0, bound), without modulo bias. bound >= 1.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound);

// Send times of `count` requests, in seconds from the start, for a Poisson process of `rate`
// requests per second: the gaps are exponential with mean 1/rate, drawn by inversion
// (-ln(1 - u) / rate). The first request waits one gap too, as in vLLM's benchmark_serving.
// rate = +infinity: every request at 0 (all at once). rate must be > 0.
std::vector<double> poisson_arrivals(int64_t count, double rate, uint64_t seed);

// `count` lengths uniform over the integers [max(1, floor(mean·(1−r))), floor(mean·(1+r))]
// (the whole range inclusive; r = 0 gives `mean` every time). mean >= 1, 0 <= r < 1.
std::vector<int64_t> uniform_lengths(int64_t count, int64_t mean, double range_ratio,
                                     std::mt19937_64& rng);

// ---- statistics ----

// The p-th percentile (0 <= p <= 100) of ascending `sorted` values, interpolating linearly
// between the two nearest ranks (numpy's default, which vLLM's and SGLang's reports use):
// rank = p/100 · (n − 1). NaN when `sorted` is empty.
double percentile(std::span<const double> sorted, double p);

struct Distribution {
  int64_t count = 0;
  // NaN when count == 0.
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};
Distribution summarize(std::vector<double> values);

// ---- Server-Sent Events ----

// Splits a text/event-stream body into events as its bytes arrive in arbitrary pieces. An event
// ends at an empty line; its "data:" lines (one optional space after the colon removed) are
// joined with '\n'. Comment lines (":…") and other fields are ignored; lines may end in "\n",
// "\r\n" or "\r", even when a piece ends between the '\r' and the '\n'.
class SseParser {
 public:
  // Returns the data of every event the new bytes complete, in order.
  std::vector<std::string> feed(std::string_view bytes);

 private:
  void end_line();

  std::string line_;
  std::string data_;
  bool has_data_ = false;
  bool after_cr_ = false;
  std::vector<std::string> completed_;
};

// ---- measurements and the report ----

// What one request measured. Times in seconds; `sent_s` from the start of the run, the others
// from the moment the request's connection was opened.
struct RequestResult {
  bool ok = false;
  std::string error;  // why it failed: HTTP status and message, error event, connection failure
  double sent_s = 0;
  double ttft_s = 0;          // first chunk carrying output text (or the finish, if none did)
  double e2e_s = 0;           // until "data: [DONE]" (or the failure)
  std::vector<double> itl_s;  // gaps between consecutive chunks carrying output text
  int64_t prompt_tokens = 0;  // from usage when reported, else what was sent (ids) or planned
  int64_t output_tokens = 0;  // from usage when reported, else the number of output chunks
  int64_t output_chunks = 0;  // chunks carrying output text
  bool usage_reported = false;
};

// Mean time per output token after the first: (e2e − ttft) / (output_tokens − 1); NaN for
// fewer than two tokens.
double time_per_output_token(const RequestResult& result);

// Service-level objectives for goodput; an absent one is not checked.
struct Slo {
  std::optional<double> ttft_s;
  std::optional<double> tpot_s;  // per request: time_per_output_token()
  std::optional<double> e2e_s;
  bool any() const { return ttft_s || tpot_s || e2e_s; }
};
// A completed request meets the SLOs when each given bound holds (a request of fewer than two
// output tokens has no TPOT and meets that bound).
bool meets_slo(const RequestResult& result, const Slo& slo);

struct ErrorCount {
  std::string message;
  int64_t count = 0;
};

struct Report {
  int64_t completed = 0;
  int64_t failed = 0;
  double duration_s = 0;
  int64_t input_tokens = 0;   // of completed requests
  int64_t output_tokens = 0;  // of completed requests
  int64_t output_chunks = 0;
  int64_t usage_reported = 0;          // completed requests whose counts came from "usage"
  double request_throughput = 0;       // completed / duration
  double output_token_throughput = 0;  // output tokens / duration
  double total_token_throughput = 0;   // (input + output tokens) / duration
  Distribution ttft_s, tpot_s, itl_s, e2e_s;
  int64_t good_requests = 0;       // completed and meeting every given SLO
  double goodput = 0;              // good requests / duration
  std::vector<ErrorCount> errors;  // distinct failure messages, most frequent first
};
// Latency distributions and token counts cover the completed requests only. duration_s > 0.
Report make_report(std::span<const RequestResult> results, double duration_s, const Slo& slo);

}  // namespace dshpc::bench_serve
