// Greedy argmax, the Philox generator, the top-k / top-p candidate masks, the seeded sampler and
// the backend's sample op on the CPU backend.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/sampling.h"

namespace dshpc {
namespace {

std::vector<float> log_probs(const std::vector<double>& p) {
  std::vector<float> l;
  for (double v : p) l.push_back(static_cast<float>(std::log(v)));
  return l;
}

std::vector<uint8_t> mask(const std::vector<float>& logits, const SamplingParams& params) {
  std::vector<uint8_t> keep(logits.size());
  sampling_keep_mask(logits.data(), static_cast<int64_t>(logits.size()), params, keep.data());
  return keep;
}

TEST(KernelSampling, ArgmaxTiesGoToLowestIndex) {
  const std::vector<float> logits = {1,   7,  3,  7,      // tie at 1 and 3 → 1
                                     -2,  -2, -2, -2,     // all equal → 0
                                     NAN, 0,  5,  5,      // a NaN never wins → 2
                                     -1,  -1, -1, 0.5f};  // last → 3
  std::vector<int32_t> ids(4, -1);
  argmax_rows_cpu(logits.data(), 4, 4, ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 0, 2, 3}));
}

TEST(KernelSampling, PhiloxMatchesRandom123KnownAnswers) {
  // Random123's published known-answer vectors for Philox4x32-10 (its tests/kat_vectors).
  EXPECT_EQ(philox4x32_10({0, 0, 0, 0}, {0, 0}),
            (std::array<uint32_t, 4>{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(
      philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
      (std::array<uint32_t, 4>{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(
      philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
      (std::array<uint32_t, 4>{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(KernelSampling, UniformIsInRangeAndRoughlyUniform) {
  double sum = 0.0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double u = philox_uniform(42, static_cast<uint64_t>(i));
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.01);  // σ of the mean ≈ 0.002
  EXPECT_NE(philox_uniform(1, 0), philox_uniform(2, 0));
  EXPECT_NE(philox_uniform(1, 0), philox_uniform(1, 1));
}

TEST(KernelSampling, TopKKeepsExactlyKByRank) {
  const std::vector<float> logits = {1, 5, 3, 5, 2, 0};
  SamplingParams p;
  p.top_k = 3;
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>{0, 1, 1, 1, 0, 0}));
  p.top_k = 1;  // the tie at 5 goes to the lower index
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>{0, 1, 0, 0, 0, 0}));
  p.top_k = 0;  // off
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>(6, 1)));
  p.top_k = 100;  // more than the vocabulary: off
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>(6, 1)));
}

TEST(KernelSampling, TopPKeepsSmallestSetReachingMass) {
  // Probabilities 0.5, 0.1, 0.25, 0.15: ranked 0, 2, 3, 1 with cumulative 0.5, 0.75, 0.9, 1.
  const auto logits = log_probs({0.5, 0.1, 0.25, 0.15});
  SamplingParams p;
  p.top_p = 0.3f;
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>{1, 0, 0, 0}));
  p.top_p = 0.7f;
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>{1, 0, 1, 0}));
  p.top_p = 0.76f;
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>{1, 0, 1, 1}));
  p.top_p = 0.95f;
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>{1, 1, 1, 1}));
  p.top_p = 1.0f;
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>{1, 1, 1, 1}));
}

TEST(KernelSampling, TopPSeesTopKRenormalisedAndTemperatureScaled) {
  // 0.4, 0.3, 0.2, 0.1 with top_k 2 → renormalised 4/7 ≈ 0.571, 3/7: top_p 0.55 keeps only
  // token 0 (top-p on the unrenormalised 0.4 would also keep token 1).
  const auto logits = log_probs({0.4, 0.3, 0.2, 0.1});
  SamplingParams p;
  p.top_k = 2;
  p.top_p = 0.55f;
  EXPECT_EQ(mask(logits, p), (std::vector<uint8_t>{1, 0, 0, 0}));

  // 0.5, 0.3, 0.2: at T = 1 top_p 0.6 keeps two tokens; at T = 0.25 the probabilities are
  // ∝ p⁴ (0.0625, 0.0081, 0.0016 → 0.870 for token 0), so one.
  const auto l3 = log_probs({0.5, 0.3, 0.2});
  SamplingParams q;
  q.top_p = 0.6f;
  EXPECT_EQ(mask(l3, q), (std::vector<uint8_t>{1, 1, 0}));
  q.temperature = 0.25f;
  EXPECT_EQ(mask(l3, q), (std::vector<uint8_t>{1, 0, 0}));
}

TEST(KernelSampling, SeededSamplerIsReproducibleAndFollowsTheDistribution) {
  const auto logits = log_probs({0.5, 0.3, 0.2});
  SamplingParams p;
  p.seed = 1234;
  std::vector<int> counts(3, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const int32_t a = sample_token_cpu(logits.data(), 3, p, static_cast<uint64_t>(i));
    ASSERT_EQ(a, sample_token_cpu(logits.data(), 3, p, static_cast<uint64_t>(i)));
    ++counts[a];
  }
  // σ of a frequency ≈ 0.0035 here; 0.02 is more than five of them.
  EXPECT_NEAR(counts[0] / double(n), 0.5, 0.02);
  EXPECT_NEAR(counts[1] / double(n), 0.3, 0.02);
  EXPECT_NEAR(counts[2] / double(n), 0.2, 0.02);

  // Another seed gives another sequence of draws.
  SamplingParams other = p;
  other.seed = 99;
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    differ +=
        sample_token_cpu(logits.data(), 3, p, i) != sample_token_cpu(logits.data(), 3, other, i);
  }
  EXPECT_GT(differ, 50);
}

TEST(KernelSampling, SamplerStaysInsideMaskAndGreedyAtZeroTemperature) {
  const std::vector<float> logits = {0.1f, 2.0f, 1.9f, 1.8f, -3.0f, 1.95f};
  SamplingParams p;
  p.top_k = 2;  // tokens 1 and 5
  p.seed = 7;
  std::vector<int> counts(6, 0);
  for (int i = 0; i < 2000; ++i) ++counts[sample_token_cpu(logits.data(), 6, p, i)];
  EXPECT_EQ(counts[0] + counts[2] + counts[3] + counts[4], 0);
  EXPECT_GT(counts[1], 0);
  EXPECT_GT(counts[5], 0);

  p.temperature = 0.0f;
  for (int i = 0; i < 10; ++i) EXPECT_EQ(sample_token_cpu(logits.data(), 6, p, i), 1);
}

}  // namespace
}  // namespace dshpc

namespace dshpc {
namespace {

// The backend op (Backend::upload_sampling + sample) on the CPU backend: every row drawn with its
// own parameters and counter from its own (strided) logits row, as sample_token_cpu draws it.
TEST(KernelSampling, CpuBackendSampleOpDrawsEachRowWithItsParameters) {
  const int64_t rows = 24, vocab = 300, stride = 307;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(static_cast<size_t>(rows * stride), 1e6f);  // padding would win
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < vocab; ++i) logits[r * stride + i] = normal(rng);
  }
  std::vector<SamplingRow> params(rows);
  const float temperatures[] = {0.0f, 0.5f, 1.0f, 1.7f};
  const int64_t top_ks[] = {0, 1, 40, vocab};
  const float top_ps[] = {0.1f, 0.9f, 1.0f};
  for (int64_t r = 0; r < rows; ++r) {
    params[r].temperature = temperatures[r % 4];
    params[r].top_k = top_ks[(r / 4) % 4];
    params[r].top_p = top_ps[r % 3];
    params[r].seed = 1000 + static_cast<uint64_t>(r) * 7;
    params[r].counter = static_cast<uint64_t>(r) * 13;
  }
  std::unique_ptr<Backend> backend = make_cpu_backend();
  DeviceBuffer device_logits = backend->allocate(logits.size() * sizeof(float));
  backend->upload(device_logits.data(), logits.data(), logits.size() * sizeof(float));
  const Mat view{device_logits.data(), DType::kF32, rows, vocab, stride};
  DeviceBuffer ids_buffer = backend->allocate(rows * sizeof(int32_t));

  int differing_from_argmax = 0;
  for (uint64_t step = 0; step < 8; ++step) {
    for (SamplingRow& p : params) p.counter += step;
    const SamplingRow* device_params = backend->upload_sampling(params.data(), rows);
    backend->sample(view, device_params, ids_buffer.as<int32_t>());
    std::vector<int32_t> ids(rows);
    backend->download(ids.data(), ids_buffer.data(), rows * sizeof(int32_t));
    for (int64_t r = 0; r < rows; ++r) {
      SamplingParams sp;
      sp.temperature = params[r].temperature;
      sp.top_k = params[r].top_k;
      sp.top_p = params[r].top_p;
      sp.seed = params[r].seed;
      const float* row = logits.data() + r * stride;
      EXPECT_EQ(ids[r], sample_token_cpu(row, vocab, sp, params[r].counter))
          << "row " << r << " step " << step;
      int32_t greedy = 0;
      argmax_rows_cpu(row, 1, vocab, &greedy);
      if (params[r].temperature <= 0.0f) {
        EXPECT_EQ(ids[r], greedy) << "greedy row " << r;
      }
      differing_from_argmax += ids[r] != greedy;
    }
  }
  // The sampled rows really sample (a broken op that always took the argmax would pass above
  // only if sample_token_cpu did too).
  EXPECT_GT(differing_from_argmax, 20);
}

}  // namespace
}  // namespace dshpc
