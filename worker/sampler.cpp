#include "worker/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/check.h"
#include "kernels/sampling.h"

namespace dshpc {

std::vector<uint8_t> encode_samples(const std::vector<SampledToken>& samples) {
  std::vector<uint8_t> out;
  auto put = [&out](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  };
  const uint32_t count = static_cast<uint32_t>(samples.size());
  put(&count, sizeof(count));
  for (const SampledToken& s : samples) {
    const uint32_t top = static_cast<uint32_t>(s.top.size());
    put(&s.token, sizeof(s.token));
    put(&s.logprob, sizeof(s.logprob));
    put(&top, sizeof(top));
    for (const auto& [token, logprob] : s.top) {
      put(&token, sizeof(token));
      put(&logprob, sizeof(logprob));
    }
  }
  return out;
}

std::vector<SampledToken> decode_samples(const std::vector<uint8_t>& bytes) {
  size_t pos = 0;
  auto get = [&](void* p, size_t n) {
    DSHPC_CHECK(pos + n <= bytes.size()) << "sample message truncated";
    std::memcpy(p, bytes.data() + pos, n);
    pos += n;
  };
  uint32_t count = 0;
  get(&count, sizeof(count));
  DSHPC_CHECK(count <= bytes.size()) << "sample message count " << count;
  std::vector<SampledToken> samples(count);
  for (SampledToken& s : samples) {
    uint32_t top = 0;
    get(&s.token, sizeof(s.token));
    get(&s.logprob, sizeof(s.logprob));
    get(&top, sizeof(top));
    DSHPC_CHECK(top <= 64) << "sample message with " << top << " top logprobs";
    s.top.resize(top);
    for (auto& [token, logprob] : s.top) {
      get(&token, sizeof(token));
      get(&logprob, sizeof(logprob));
    }
  }
  DSHPC_CHECK_EQ(pos, bytes.size()) << "sample message trailing bytes";
  return samples;
}

void apply_penalties(float* logits, int64_t vocab, float presence, float frequency,
                     float repetition, const std::unordered_map<int32_t, int32_t>& output_counts,
                     const std::unordered_map<int32_t, int32_t>& all_counts) {
  if (repetition != 1.0f) {
    for (const auto& [token, count] : all_counts) {
      if (token < 0 || token >= vocab) continue;
      float& l = logits[token];
      l = l > 0 ? l / repetition : l * repetition;
    }
  }
  if (presence != 0.0f || frequency != 0.0f) {
    for (const auto& [token, count] : output_counts) {
      if (token < 0 || token >= vocab) continue;
      logits[token] -= presence + frequency * static_cast<float>(count);
    }
  }
}

void Sampler::observe(const StepPlan& plan) {
  for (int64_t id : plan.released_sequences) history_.erase(id);
  for (const SequenceStep& s : plan.sequences) {
    // Only sequences that use penalties need their history (parameters are fixed per request).
    const bool penalised =
        s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f || s.repetition_penalty != 1.0f;
    if (!penalised) continue;
    History& h = history_[s.sequence_id];
    if (s.start_position == 0) h = History();  // a new sequence, or recomputed after preemption
    if (h.prompt_len < 0) h.prompt_len = s.prompt_len;
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      const int32_t token = s.tokens[i];
      h.all_counts[token]++;
      if (s.start_position + static_cast<int64_t>(i) >= h.prompt_len) h.output_counts[token]++;
    }
  }
}

SampledToken Sampler::sample(const SequenceStep& seq, float* logits, int64_t vocab,
                             uint64_t counter) {
  SampledToken out;
  // Logprobs are reported for the model's distribution, before penalties and temperature.
  double max_logit = -INFINITY;
  if (seq.top_logprobs >= 0) {
    for (int64_t i = 0; i < vocab; ++i) max_logit = std::max<double>(max_logit, logits[i]);
  }
  double log_z = 0.0;
  if (seq.top_logprobs >= 0) {
    double z = 0.0;
    for (int64_t i = 0; i < vocab; ++i) z += std::exp(static_cast<double>(logits[i]) - max_logit);
    log_z = max_logit + std::log(z);
    if (seq.top_logprobs > 0) {
      std::vector<int32_t> order(static_cast<size_t>(vocab));
      for (int64_t i = 0; i < vocab; ++i) order[i] = static_cast<int32_t>(i);
      const int64_t k = std::min<int64_t>(seq.top_logprobs, vocab);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      for (int64_t i = 0; i < k; ++i) {
        out.top.push_back({order[i], static_cast<float>(logits[order[i]] - log_z)});
      }
    }
  }
  std::vector<float> raw;
  if (seq.top_logprobs >= 0) raw.assign(logits, logits + vocab);

  auto it = history_.find(seq.sequence_id);
  if (it != history_.end()) {
    apply_penalties(logits, vocab, seq.presence_penalty, seq.frequency_penalty,
                    seq.repetition_penalty, it->second.output_counts, it->second.all_counts);
  }
  out.token = sample_token_cpu(logits, vocab, seq.sampling, counter);
  if (seq.top_logprobs >= 0) out.logprob = static_cast<float>(raw[out.token] - log_z);
  return out;
}

}  // namespace dshpc
