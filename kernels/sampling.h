// Token selection from logits: greedy argmax, and a seeded sampler (temperature, top-k, top-p)
// whose draws come from a counter-based generator (Philox4x32-10), so a token depends only on
// (logits, parameters, seed, counter) — not on batching, thread count or earlier calls.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace dshpc {

// ids[r] = argmax over logits[r, 0 … vocab); ties go to the lowest index (NaN never wins).
void argmax_rows_cpu(const float* logits, int64_t rows, int64_t vocab, int32_t* ids);

struct SamplingParams {
  float temperature = 1.0f;  // ≤ 0: greedy (argmax); top_k / top_p are then irrelevant
  int64_t top_k = 0;         // keep the k most probable tokens; 0 (or ≥ vocab) = off
  float top_p = 1.0f;        // keep the smallest most-probable set with mass ≥ top_p; ≥ 1 = off
  uint64_t seed = 0;
};

// Philox4x32-10 (Salmon et al., SC'11; the generator of cuRAND and of Random123): one block of
// four 32-bit outputs for a 128-bit counter and a 64-bit key.
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Uniform double in [0, 1) with 53 random bits, from key = seed and counter = (counter, 0).
double philox_uniform(uint64_t seed, uint64_t counter);

// The tokens the sampler may draw from, as Hugging Face's warpers apply them in order:
// temperature, then top-k, then top-p on the probabilities renormalised over the top-k survivors.
// Tokens are ranked by logit descending, ties to the lower index; top-k keeps exactly the first
// min(k, vocab) of that ranking; top-p keeps the shortest prefix of it whose probability mass
// reaches top_p (at least one token). Temperature does not change the ranking but does change
// the probabilities that top-p sees. Returns the kept token ids in rank order.
std::vector<int32_t> sampling_candidates(const float* logits, int64_t vocab,
                                         const SamplingParams& params);

// keep[i] = 1 when token i is among sampling_candidates, else 0.
void sampling_keep_mask(const float* logits, int64_t vocab, const SamplingParams& params,
                        uint8_t* keep);

// Draws one token from softmax(logits / temperature) restricted to the candidates, with the
// uniform philox_uniform(seed, counter). Use a counter that is unique per (request, step), such
// as the index of the token being generated, to make a request reproducible per seed.
int32_t sample_token_cpu(const float* logits, int64_t vocab, const SamplingParams& params,
                         uint64_t counter);

// One logits row's sampling parameters as the backend's sample op reads them: plain data, copied
// to backend memory once per step (Backend::upload_sampling). The same semantics as
// SamplingParams plus the draw's counter; temperature ≤ 0 makes the row greedy (argmax).
struct SamplingRow {
  float temperature = 0.0f;
  float top_p = 1.0f;
  int64_t top_k = 0;
  uint64_t seed = 0;
  uint64_t counter = 0;
};

// Stops the job (DSHPC_CHECK) when a row is outside the contract: a temperature that is not
// finite or a NaN top_p. Both backends check what upload_sampling receives.
void check_sampling_rows(const SamplingRow* rows, int64_t count);

// ids[r] = sample_token_cpu(logits row r, rows[r], rows[r].counter) for r < num_rows; row r starts
// at logits + r · stride.
void sample_rows_cpu(const float* logits, int64_t num_rows, int64_t vocab, int64_t stride,
                     const SamplingRow* rows, int32_t* ids);

}  // namespace dshpc
