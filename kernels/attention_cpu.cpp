// Paged attention on the CPU: the reference for prefill, chunked prefill and decode, and for a
// step that mixes them. Per (sequence, query token, kv head) it scores the query heads of that
// kv head's group against every visible key in one pass over the sequence's blocks (each key row
// is read once per group), takes a max-subtracted softmax in float32 with double sums, and reads
// the value rows in a second pass over the same blocks. Scratch is allocated once per call.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "kernels/attention.h"

namespace dshpc {
namespace {

double dot(const float* a, const float* b, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(a[i]) * b[i];
  return sum;
}

// Calls fn(j, slot) for logical positions j = 0 … num_keys − 1 of a sequence, block by block.
template <typename Fn>
void for_each_key(const int32_t* block_table, int64_t block_size, int64_t num_keys, Fn&& fn) {
  for (int64_t first = 0, b = 0; first < num_keys; first += block_size, ++b) {
    const int64_t slot0 = static_cast<int64_t>(block_table[b]) * block_size;
    const int64_t count = std::min(block_size, num_keys - first);
    for (int64_t o = 0; o < count; ++o) fn(first + o, slot0 + o);
  }
}

}  // namespace

void kv_cache_write_cpu(const float* k, int64_t k_row_stride, const float* v, int64_t v_row_stride,
                        int64_t tokens, const int64_t* slots, const PagedKvView& cache) {
  const size_t k_bytes = static_cast<size_t>(cache.kv_heads * cache.head_dim) * sizeof(float);
  const size_t v_bytes = static_cast<size_t>(cache.kv_heads * cache.v_dim) * sizeof(float);
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    std::memcpy(cache.k + slot * cache.k_token_stride, k + t * k_row_stride, k_bytes);
    if (v != nullptr) {
      std::memcpy(cache.v + slot * cache.v_token_stride, v + t * v_row_stride, v_bytes);
    }
  }
}

void paged_attention_cpu(const float* q, float* out, const PagedSequence* seqs, int64_t num_seqs,
                         int64_t q_heads, const PagedKvView& cache, float scale) {
  const int64_t kv_heads = cache.kv_heads;
  const int64_t head_dim = cache.head_dim;
  const int64_t v_dim = cache.v_dim;
  const int64_t block_size = cache.block_size;
  DSHPC_CHECK(kv_heads > 0 && q_heads % kv_heads == 0)
      << "q_heads " << q_heads << " is not a multiple of kv_heads " << kv_heads;
  DSHPC_CHECK(block_size > 0) << "block_size " << block_size;
  const int64_t group = q_heads / kv_heads;

  int64_t max_context = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    DSHPC_CHECK(seqs[s].query_len >= 0 && seqs[s].query_len <= seqs[s].context_len)
        << "sequence " << s << ": query_len " << seqs[s].query_len << ", context_len "
        << seqs[s].context_len;
    DSHPC_CHECK(seqs[s].query_len == 0 || seqs[s].block_table != nullptr)
        << "sequence " << s << " has no block table";
    max_context = std::max<int64_t>(max_context, seqs[s].context_len);
  }

  // probs[g, j]: scores, then unnormalised softmax numerators, of group head g for key j.
  std::vector<float> probs(static_cast<size_t>(group * max_context));
  std::vector<double> acc(static_cast<size_t>(group * v_dim));
  std::vector<double> denom(static_cast<size_t>(group));

  for (int64_t s = 0; s < num_seqs; ++s) {
    const PagedSequence& seq = seqs[s];
    const int64_t first_position = seq.context_len - seq.query_len;
    for (int64_t i = 0; i < seq.query_len; ++i) {
      const int64_t token = seq.query_begin + i;
      const int64_t num_keys = first_position + i + 1;  // causal: positions 0 … its own
      for (int64_t kvh = 0; kvh < kv_heads; ++kvh) {
        // Query heads kvh·group … kvh·group + group − 1 share this kv head; they are adjacent.
        const float* q_group = q + (token * q_heads + kvh * group) * head_dim;

        for_each_key(seq.block_table, block_size, num_keys, [&](int64_t j, int64_t slot) {
          const float* k_row = cache.k + slot * cache.k_token_stride + kvh * head_dim;
          for (int64_t g = 0; g < group; ++g) {
            probs[g * max_context + j] = static_cast<float>(
                static_cast<double>(scale) * dot(q_group + g * head_dim, k_row, head_dim));
          }
        });

        for (int64_t g = 0; g < group; ++g) {
          float* p = probs.data() + g * max_context;
          const float max_score = *std::max_element(p, p + num_keys);
          double sum = 0.0;
          for (int64_t j = 0; j < num_keys; ++j) {
            p[j] = std::exp(p[j] - max_score);
            sum += p[j];
          }
          denom[g] = sum;
        }

        std::fill(acc.begin(), acc.end(), 0.0);
        for_each_key(seq.block_table, block_size, num_keys, [&](int64_t j, int64_t slot) {
          const float* v_row = cache.v + slot * cache.v_token_stride + kvh * v_dim;
          for (int64_t g = 0; g < group; ++g) {
            const double weight = probs[g * max_context + j];
            double* a = acc.data() + g * v_dim;
            for (int64_t c = 0; c < v_dim; ++c) a[c] += weight * v_row[c];
          }
        });

        for (int64_t g = 0; g < group; ++g) {
          float* o = out + (token * q_heads + kvh * group + g) * v_dim;
          const double* a = acc.data() + g * v_dim;
          for (int64_t c = 0; c < v_dim; ++c) o[c] = static_cast<float>(a[c] / denom[g]);
        }
      }
    }
  }
}

}  // namespace dshpc
