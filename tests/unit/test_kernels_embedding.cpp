// Vocabulary-parallel embedding: a rank's slice gives its rows and zeros for the others, so the
// sum over ranks equals the full lookup.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/embedding.h"

namespace dshpc {
namespace {

// Full table row v is (v·10, v·10 + 1, v·10 + 2).
std::vector<float> full_table(int64_t vocab, int64_t dim) {
  std::vector<float> t(vocab * dim);
  for (int64_t v = 0; v < vocab; ++v) {
    for (int64_t d = 0; d < dim; ++d) t[v * dim + d] = static_cast<float>(v * 10 + d);
  }
  return t;
}

TEST(KernelEmbedding, VocabSliceGivesZerosOutsideAndSumsToFullLookup) {
  const int64_t vocab = 10, dim = 3;
  const auto table = full_table(vocab, dim);
  const std::vector<int32_t> ids = {0, 3, 4, 9, 5, 4, -1, 10};
  const int64_t tokens = static_cast<int64_t>(ids.size());
  // Two ranks: rows [0, 4) and [4, 10).
  std::vector<float> out0(tokens * dim, -7.0f), out1(tokens * dim, -7.0f);
  embedding_cpu(table.data(), 0, 4, dim, ids.data(), tokens, out0.data());
  embedding_cpu(table.data() + 4 * dim, 4, 6, dim, ids.data(), tokens, out1.data());
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t id = ids[t];
    for (int64_t d = 0; d < dim; ++d) {
      const float expected0 = (id >= 0 && id < 4) ? static_cast<float>(id * 10 + d) : 0.0f;
      const float expected1 = (id >= 4 && id < 10) ? static_cast<float>(id * 10 + d) : 0.0f;
      EXPECT_EQ(out0[t * dim + d], expected0) << "token " << t;
      EXPECT_EQ(out1[t * dim + d], expected1) << "token " << t;
    }
  }
}

}  // namespace
}  // namespace dshpc
