// dshpc bench serve's pure parts: percentiles, the Poisson schedule, length draws, the SSE
// splitter and the report's arithmetic (app/bench_serve.h).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include "app/bench_serve.h"

namespace dshpc::bench_serve {
namespace {

TEST(BenchServePercentile, InterpolatesBetweenNearestRanksLikeNumpy) {
  const std::vector<double> four = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(percentile(four, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(four, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile(four, 90), 3.7);  // rank 2.7
  EXPECT_DOUBLE_EQ(percentile(four, 100), 4);
  // numpy.percentile([1, 3, 7, 15, 31], [25, 99]) == [3, 30.36]
  const std::vector<double> five = {1, 3, 7, 15, 31};
  EXPECT_DOUBLE_EQ(percentile(five, 25), 3);
  EXPECT_NEAR(percentile(five, 99), 30.36, 1e-12);
  const std::vector<double> two = {10, 20};
  EXPECT_DOUBLE_EQ(percentile(two, 25), 12.5);
  const std::vector<double> one = {5};
  EXPECT_DOUBLE_EQ(percentile(one, 0), 5);
  EXPECT_DOUBLE_EQ(percentile(one, 99), 5);
  EXPECT_TRUE(std::isnan(percentile(std::vector<double>{}, 50)));
}

TEST(BenchServePercentile, SummarizeSortsAndOrders) {
  const Distribution d = summarize({3, 100, 1, 4, 2});
  EXPECT_EQ(d.count, 5);
  EXPECT_DOUBLE_EQ(d.mean, 22);
  EXPECT_DOUBLE_EQ(d.p50, 3);
  EXPECT_DOUBLE_EQ(d.p90, 4 + 0.6 * 96);  // rank 3.6
  EXPECT_DOUBLE_EQ(d.max, 100);
  EXPECT_LE(d.p50, d.p90);
  EXPECT_LE(d.p90, d.p99);
  EXPECT_LE(d.p99, d.max);
  const Distribution empty = summarize({});
  EXPECT_EQ(empty.count, 0);
  EXPECT_TRUE(std::isnan(empty.mean) && std::isnan(empty.p99) && std::isnan(empty.max));
}

TEST(BenchServeSchedule, ExponentialGapsWithTheRequestedMean) {
  constexpr int64_t kDraws = 100000;
  for (double rate : {20.0, 0.5}) {
    const std::vector<double> t = poisson_arrivals(kDraws, rate, 1234);
    ASSERT_EQ(t.size(), static_cast<size_t>(kDraws));
    std::vector<double> gaps(t.size());
    double previous = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      gaps[i] = t[i] - previous;
      ASSERT_GE(gaps[i], 0.0) << i;
      previous = t[i];
    }
    double sum = 0, sum_sq = 0;
    int64_t above_mean = 0;
    for (double g : gaps) {
      sum += g;
      sum_sq += g * g;
      above_mean += g > 1.0 / rate ? 1 : 0;
    }
    const double mean = sum / kDraws;
    const double stddev = std::sqrt(sum_sq / kDraws - mean * mean);
    EXPECT_NEAR(mean, 1.0 / rate, 0.01 / rate) << "rate " << rate;
    // Exponential, not evenly spaced: standard deviation = mean, P(gap > mean) = 1/e.
    EXPECT_NEAR(stddev, 1.0 / rate, 0.02 / rate) << "rate " << rate;
    EXPECT_NEAR(static_cast<double>(above_mean) / kDraws, std::exp(-1.0), 0.01);
  }
}

TEST(BenchServeSchedule, SeededAndReproducible) {
  EXPECT_EQ(poisson_arrivals(100, 5, 7), poisson_arrivals(100, 5, 7));
  EXPECT_NE(poisson_arrivals(100, 5, 7), poisson_arrivals(100, 5, 8));
  // Doubling the rate halves every gap of the same seed.
  const std::vector<double> slow = poisson_arrivals(50, 5, 7);
  const std::vector<double> fast = poisson_arrivals(50, 10, 7);
  for (size_t i = 0; i < slow.size(); ++i) EXPECT_NEAR(fast[i], slow[i] / 2, 1e-12);
  const std::vector<double> burst =
      poisson_arrivals(12, std::numeric_limits<double>::infinity(), 7);
  EXPECT_EQ(burst, std::vector<double>(12, 0.0));
}

TEST(BenchServeLengths, UniformOverTheWholeRange) {
  std::mt19937_64 rng(3);
  EXPECT_EQ(uniform_lengths(20, 16, 0.0, rng), std::vector<int64_t>(20, 16));
  const std::vector<int64_t> lengths = uniform_lengths(20000, 16, 0.5, rng);
  std::set<int64_t> seen(lengths.begin(), lengths.end());
  EXPECT_EQ(*seen.begin(), 8);
  EXPECT_EQ(*seen.rbegin(), 24);
  EXPECT_EQ(seen.size(), 17u);  // every length in [8, 24] occurs
  double sum = 0;
  for (int64_t v : lengths) sum += static_cast<double>(v);
  EXPECT_NEAR(sum / lengths.size(), 16.0, 0.16);
  // Never below 1.
  const std::vector<int64_t> short_ones = uniform_lengths(1000, 1, 0.9, rng);
  for (int64_t v : short_ones) EXPECT_EQ(v, 1);
}

TEST(BenchServeSse, SplitsEventsWhereverThePiecesBreak) {
  const std::string stream =
      ": a comment\r\n"
      "data: {\"a\":1}\r\n\r\n"
      "event: ignored\n"
      "data:no-space\n"
      "data: second line\n\n"
      "data: [DONE]\r\r";
  const std::vector<std::string> expected = {"{\"a\":1}", "no-space\nsecond line", "[DONE]"};
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    for (size_t cut2 = cut; cut2 <= stream.size(); cut2 += 7) {
      SseParser parser;
      std::vector<std::string> events = parser.feed(std::string_view(stream).substr(0, cut));
      for (auto& e : parser.feed(std::string_view(stream).substr(cut, cut2 - cut))) {
        events.push_back(e);
      }
      for (auto& e : parser.feed(std::string_view(stream).substr(cut2))) events.push_back(e);
      ASSERT_EQ(events, expected) << "cuts at " << cut << ", " << cut2;
    }
  }
  SseParser unfinished;
  EXPECT_TRUE(unfinished.feed("data: {\"half\":").empty());  // no blank line yet
}

RequestResult completed(double ttft, double e2e, int64_t prompt, int64_t output) {
  RequestResult r;
  r.ok = true;
  r.ttft_s = ttft;
  r.e2e_s = e2e;
  r.prompt_tokens = prompt;
  r.output_tokens = output;
  r.output_chunks = output;
  r.usage_reported = true;
  return r;
}

TEST(BenchServeReport, ThroughputLatencyAndGoodput) {
  std::vector<RequestResult> results = {
      completed(0.1, 0.8, 16, 8),  // TPOT 0.1
      completed(0.3, 1.0, 16, 8),  // TPOT 0.1
      completed(0.2, 1.6, 10, 8),  // TPOT 0.2
      completed(0.5, 0.5, 10, 1),  // no TPOT
  };
  results[0].itl_s = {0.1, 0.1};
  results[1].itl_s = {0.3};
  RequestResult refused;
  refused.error = "cannot connect";
  results.push_back(refused);
  results.push_back(refused);
  RequestResult rejected;
  rejected.error = "HTTP 429: queue full";
  results.push_back(rejected);

  Slo none;
  const Report r = make_report(results, 2.0, none);
  EXPECT_EQ(r.completed, 4);
  EXPECT_EQ(r.failed, 3);
  EXPECT_EQ(r.input_tokens, 52);
  EXPECT_EQ(r.output_tokens, 25);
  EXPECT_DOUBLE_EQ(r.request_throughput, 2.0);
  EXPECT_DOUBLE_EQ(r.output_token_throughput, 12.5);
  EXPECT_DOUBLE_EQ(r.total_token_throughput, 38.5);
  EXPECT_EQ(r.ttft_s.count, 4);
  EXPECT_DOUBLE_EQ(r.ttft_s.mean, 0.275);
  EXPECT_DOUBLE_EQ(r.e2e_s.max, 1.6);
  EXPECT_EQ(r.tpot_s.count, 3);
  EXPECT_NEAR(r.tpot_s.p50, 0.1, 1e-12);
  EXPECT_NEAR(r.tpot_s.max, 0.2, 1e-12);
  EXPECT_EQ(r.itl_s.count, 3);
  EXPECT_NEAR(r.itl_s.max, 0.3, 1e-12);
  EXPECT_EQ(r.good_requests, 4);  // no SLO: every completed request counts
  ASSERT_EQ(r.errors.size(), 2u);
  EXPECT_EQ(r.errors[0].message, "cannot connect");
  EXPECT_EQ(r.errors[0].count, 2);
  EXPECT_EQ(r.errors[1].count, 1);

  Slo ttft;
  ttft.ttft_s = 0.25;
  EXPECT_EQ(make_report(results, 2.0, ttft).good_requests, 2);
  Slo tpot;
  tpot.tpot_s = 0.15;  // the 1-token request has no TPOT and passes
  EXPECT_EQ(make_report(results, 2.0, tpot).good_requests, 3);
  Slo all;
  all.ttft_s = 0.4;
  all.tpot_s = 0.15;
  all.e2e_s = 0.9;
  const Report strict = make_report(results, 2.0, all);
  EXPECT_EQ(strict.good_requests, 1);  // only the first
  EXPECT_DOUBLE_EQ(strict.goodput, 0.5);
}

}  // namespace
}  // namespace dshpc::bench_serve
