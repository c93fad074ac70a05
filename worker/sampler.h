// Token selection on the last pipeline stage, where the logits are: penalties from the
// sequence's token history, then greedy or seeded sampling (kernels/sampling.h), plus logprobs.
// Only compact results travel to rank 0, never a vocabulary-sized row.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "worker/engine.h"

namespace dshpc {

// Wire form of one step's samples (one entry per sequence with sample = true, in plan order).
std::vector<uint8_t> encode_samples(const std::vector<SampledToken>& samples);
std::vector<SampledToken> decode_samples(const std::vector<uint8_t>& bytes);

class Sampler {
 public:
  // Records the step's tokens of every sequence (the history penalties need) and drops released
  // sequences. Call once per micro-batch plan, before sample().
  void observe(const StepPlan& plan);

  // Samples the next token of `seq` from its logits row (modified in place by the penalties).
  // `counter` makes seeded sampling reproducible: the index of the token being generated.
  SampledToken sample(const SequenceStep& seq, float* logits, int64_t vocab, uint64_t counter);

  size_t tracked_sequences() const { return history_.size(); }

 private:
  struct History {
    int64_t prompt_len = -1;  // tokens at positions >= prompt_len count as output
    std::unordered_map<int32_t, int32_t> output_counts;
    std::unordered_map<int32_t, int32_t> all_counts;  // prompt + output, for repetition_penalty
    int64_t generated = 0;
  };
  std::unordered_map<int64_t, History> history_;
};

// Applies OpenAI presence/frequency penalties (output tokens) and the HF-style repetition
// penalty (every token seen): logits of seen tokens are divided by it when positive, multiplied
// when negative.
void apply_penalties(float* logits, int64_t vocab, float presence, float frequency,
                     float repetition, const std::unordered_map<int32_t, int32_t>& output_counts,
                     const std::unordered_map<int32_t, int32_t>& all_counts);

}  // namespace dshpc
