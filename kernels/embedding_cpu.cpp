// Vocabulary-parallel embedding lookup on the CPU. A rank holds rows [vocab_begin,
// vocab_begin + vocab_count) of the table; ids it does not own give zero rows so that a sum
// (all-reduce) over the vocabulary-parallel group yields the full lookup.
#include <cstring>

#include "kernels/embedding.h"

namespace dshpc {

void embedding_cpu(const float* table, int64_t vocab_begin, int64_t vocab_count, int64_t dim,
                   const int32_t* ids, int64_t tokens, float* out) {
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t local = static_cast<int64_t>(ids[t]) - vocab_begin;
    float* row = out + t * dim;
    if (local >= 0 && local < vocab_count) {
      std::memcpy(row, table + local * dim, static_cast<size_t>(dim) * sizeof(float));
    } else {
      std::memset(row, 0, static_cast<size_t>(dim) * sizeof(float));
    }
  }
}

}  // namespace dshpc
