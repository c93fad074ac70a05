// Greedy and seeded sampling on the CPU (semantics in sampling.h).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/check.h"
#include "kernels/sampling.h"

namespace dshpc {
namespace {

// Softmax of logits[ids] / temperature over the listed ids, in their order; ids[0] must hold
// the largest logit (rank order), which makes the max subtraction a single read.
std::vector<double> candidate_probs(const float* logits, const std::vector<int32_t>& ids,
                                    float temperature) {
  std::vector<double> probs(ids.size());
  const double max_logit = logits[ids[0]];
  double sum = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {
    probs[i] = std::exp((static_cast<double>(logits[ids[i]]) - max_logit) / temperature);
    sum += probs[i];
  }
  for (double& p : probs) p /= sum;
  return probs;
}

}  // namespace

void argmax_rows_cpu(const float* logits, int64_t rows, int64_t vocab, int32_t* ids) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * vocab;
    int64_t best = 0;
    // `>` keeps the first of equal values; a NaN start is replaced by any number.
    for (int64_t i = 1; i < vocab; ++i) {
      if (row[i] > row[best] || (std::isnan(row[best]) && !std::isnan(row[i]))) best = i;
    }
    ids[r] = static_cast<int32_t>(best);
  }
}

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * ctr[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
    key[0] += kWeyl0;
    key[1] += kWeyl1;
  }
  return ctr;
}

double philox_uniform(uint64_t seed, uint64_t counter) {
  const auto out =
      philox4x32_10({static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u},
                    {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  const uint64_t bits = ((static_cast<uint64_t>(out[0]) << 32) | out[1]) >> 11;  // 53 bits
  return static_cast<double>(bits) * 0x1.0p-53;
}

std::vector<int32_t> sampling_candidates(const float* logits, int64_t vocab,
                                         const SamplingParams& params) {
  DSHPC_CHECK(vocab > 0) << "empty vocabulary";
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto better = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  const bool top_k_on = params.top_k > 0 && params.top_k < vocab;
  const int64_t keep = top_k_on ? params.top_k : vocab;
  // Only the kept prefix needs ordering; a full sort only when top-p alone is on.
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), better);
  order.resize(static_cast<size_t>(keep));

  if (params.temperature > 0.0f && params.top_p < 1.0f) {
    const std::vector<double> probs = candidate_probs(logits, order, params.temperature);
    double mass = 0.0;
    size_t n = 0;
    while (n < order.size()) {
      mass += probs[n++];
      if (mass >= params.top_p) break;
    }
    order.resize(n);
  }
  return order;
}

void sampling_keep_mask(const float* logits, int64_t vocab, const SamplingParams& params,
                        uint8_t* keep) {
  std::fill(keep, keep + vocab, uint8_t{0});
  for (int32_t id : sampling_candidates(logits, vocab, params)) keep[id] = 1;
}

int32_t sample_token_cpu(const float* logits, int64_t vocab, const SamplingParams& params,
                         uint64_t counter) {
  if (params.temperature <= 0.0f) {
    int32_t id = 0;
    argmax_rows_cpu(logits, 1, vocab, &id);
    return id;
  }
  const std::vector<int32_t> candidates = sampling_candidates(logits, vocab, params);
  const std::vector<double> probs = candidate_probs(logits, candidates, params.temperature);
  const double u = philox_uniform(params.seed, counter);
  // Inverse CDF in rank order; the last candidate takes any rounding remainder.
  double cumulative = 0.0;
  for (size_t i = 0; i + 1 < candidates.size(); ++i) {
    cumulative += probs[i];
    if (u < cumulative) return candidates[i];
  }
  return candidates.back();
}

void check_sampling_rows(const SamplingRow* rows, int64_t count) {
  for (int64_t r = 0; r < count; ++r) {
    DSHPC_CHECK(std::isfinite(rows[r].temperature) && !std::isnan(rows[r].top_p))
        << "sampling row " << r << ": temperature " << rows[r].temperature << ", top_p "
        << rows[r].top_p;
  }
}

void sample_rows_cpu(const float* logits, int64_t num_rows, int64_t vocab, int64_t stride,
                     const SamplingRow* rows, int32_t* ids) {
  for (int64_t r = 0; r < num_rows; ++r) {
    SamplingParams params;
    params.temperature = rows[r].temperature;
    params.top_k = rows[r].top_k;
    params.top_p = rows[r].top_p;
    params.seed = rows[r].seed;
    ids[r] = sample_token_cpu(logits + r * stride, vocab, params, rows[r].counter);
  }
}

}  // namespace dshpc
