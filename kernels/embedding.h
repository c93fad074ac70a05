// Token embedding lookup, vocabulary-parallel.
#pragma once

#include <cstdint>

namespace dshpc {

// The table holds rows [vocab_begin, vocab_begin + vocab_count) of the full vocabulary. For each
// token, out[t] = table[ids[t] − vocab_begin] when the id is in range, else zeros (another rank
// owns it; an all-reduce over the vocabulary-parallel group completes the lookup).
void embedding_cpu(const float* table, int64_t vocab_begin, int64_t vocab_count, int64_t dim,
                   const int32_t* ids, int64_t tokens, float* out);

}  // namespace dshpc
