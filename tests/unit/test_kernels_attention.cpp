// Paged attention against naive dense causal attention in double.
//
// Each test builds dense per-sequence K/V, scatters them into a block pool through
// kv_cache_write_cpu with block size 4 and shuffled (non-contiguous) block tables, runs one step
// that mixes a decode, a full prefill, a prefill chunk, an idle sequence and a one-token prompt,
// and compares every output row with attention computed directly from the dense arrays.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/attention.h"

namespace dshpc {
namespace {

struct SeqSpec {
  int32_t context_len;
  int32_t query_len;
};

// The step: decode, prefill, chunk (positions 6…9 of 10), idle, one-token prompt.
const std::vector<SeqSpec> kStep = {{13, 1}, {7, 7}, {10, 4}, {5, 0}, {1, 1}};
constexpr int64_t kBlockSize = 4;
constexpr int64_t kNumBlocks = 32;

std::vector<float> random_vector(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Layout {
  std::vector<std::vector<int32_t>> block_tables;
  std::vector<PagedSequence> seqs;
  int64_t total_queries = 0;
};

// Hands out shuffled block ids, so no sequence's blocks are contiguous or in order.
Layout make_layout(std::mt19937& rng) {
  std::vector<int32_t> pool(kNumBlocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  Layout layout;
  size_t next = 0;
  for (const SeqSpec& spec : kStep) {
    const int64_t blocks = (spec.context_len + kBlockSize - 1) / kBlockSize;
    layout.block_tables.emplace_back(pool.begin() + next, pool.begin() + next + blocks);
    next += blocks;
  }
  for (size_t s = 0; s < kStep.size(); ++s) {
    layout.seqs.push_back({static_cast<int32_t>(layout.total_queries), kStep[s].query_len,
                           kStep[s].context_len, layout.block_tables[s].data()});
    layout.total_queries += kStep[s].query_len;
  }
  return layout;
}

int64_t slot_of(const Layout& layout, size_t s, int64_t pos) {
  return static_cast<int64_t>(layout.block_tables[s][pos / kBlockSize]) * kBlockSize +
         pos % kBlockSize;
}

// softmax(scores) · values for one query head; values[j] has `dim` entries.
std::vector<double> naive_attend(const std::vector<double>& scores,
                                 const std::vector<std::vector<double>>& values, int64_t dim) {
  const double m = *std::max_element(scores.begin(), scores.end());
  double sum = 0.0;
  std::vector<double> out(dim, 0.0);
  for (size_t j = 0; j < scores.size(); ++j) sum += std::exp(scores[j] - m);
  for (size_t j = 0; j < scores.size(); ++j) {
    const double p = std::exp(scores[j] - m) / sum;
    for (int64_t c = 0; c < dim; ++c) out[c] += p * values[j][c];
  }
  return out;
}

TEST(AttentionPaged, GqaMixedStepMatchesDenseCausal) {
  const int64_t q_heads = 8, kv_heads = 2, head_dim = 16, v_dim = 12;
  const float scale = 1.3f / std::sqrt(static_cast<float>(head_dim));
  std::mt19937 rng(2024);
  const Layout layout = make_layout(rng);

  // Padded token strides so that a stride/width mix-up shows.
  PagedKvView cache;
  cache.block_size = kBlockSize;
  cache.kv_heads = kv_heads;
  cache.head_dim = head_dim;
  cache.v_dim = v_dim;
  cache.k_token_stride = kv_heads * head_dim + 3;
  cache.v_token_stride = kv_heads * v_dim + 1;
  // Guard regions of one token before and after each pool catch writes out of the pool.
  const float kGuard = 12345.0f;
  std::vector<float> k_pool((kNumBlocks * kBlockSize + 2) * cache.k_token_stride, NAN);
  std::vector<float> v_pool((kNumBlocks * kBlockSize + 2) * cache.v_token_stride, NAN);
  std::fill(k_pool.begin(), k_pool.begin() + cache.k_token_stride, kGuard);
  std::fill(k_pool.end() - cache.k_token_stride, k_pool.end(), kGuard);
  std::fill(v_pool.begin(), v_pool.begin() + cache.v_token_stride, kGuard);
  std::fill(v_pool.end() - cache.v_token_stride, v_pool.end(), kGuard);
  cache.k = k_pool.data() + cache.k_token_stride;
  cache.v = v_pool.data() + cache.v_token_stride;

  // Dense k[s][pos] = [kv_heads, head_dim], v[s][pos] = [kv_heads, v_dim]; written as one batch
  // of rows plus a padding row with slot −1 that must be skipped.
  std::vector<std::vector<float>> k_dense, v_dense;
  std::vector<float> k_rows, v_rows;
  std::vector<int64_t> slots;
  for (size_t s = 0; s < kStep.size(); ++s) {
    const int64_t n = kStep[s].context_len;
    k_dense.push_back(random_vector(n * kv_heads * head_dim, rng, 1.5f));
    v_dense.push_back(random_vector(n * kv_heads * v_dim, rng));
    k_rows.insert(k_rows.end(), k_dense[s].begin(), k_dense[s].end());
    v_rows.insert(v_rows.end(), v_dense[s].begin(), v_dense[s].end());
    for (int64_t pos = 0; pos < n; ++pos) slots.push_back(slot_of(layout, s, pos));
  }
  k_rows.resize(k_rows.size() + kv_heads * head_dim, 99.0f);
  v_rows.resize(v_rows.size() + kv_heads * v_dim, 99.0f);
  slots.push_back(-1);
  kv_cache_write_cpu(k_rows.data(), kv_heads * head_dim, v_rows.data(), kv_heads * v_dim,
                     static_cast<int64_t>(slots.size()), slots.data(), cache);

  for (int64_t c = 0; c < cache.k_token_stride; ++c) {
    ASSERT_EQ(k_pool[c], kGuard);
    ASSERT_EQ(k_pool[k_pool.size() - 1 - c], kGuard);
  }
  for (int64_t c = 0; c < cache.v_token_stride; ++c) {
    ASSERT_EQ(v_pool[c], kGuard);
    ASSERT_EQ(v_pool[v_pool.size() - 1 - c], kGuard);
  }

  const auto q = random_vector(layout.total_queries * q_heads * head_dim, rng, 1.5f);
  std::vector<float> out(layout.total_queries * q_heads * v_dim, NAN);
  paged_attention_cpu(q.data(), out.data(), layout.seqs.data(),
                      static_cast<int64_t>(layout.seqs.size()), q_heads, cache, scale);

  const int64_t group = q_heads / kv_heads;
  for (size_t s = 0; s < kStep.size(); ++s) {
    const PagedSequence& seq = layout.seqs[s];
    for (int64_t i = 0; i < seq.query_len; ++i) {
      const int64_t token = seq.query_begin + i;
      const int64_t pos = seq.context_len - seq.query_len + i;
      for (int64_t h = 0; h < q_heads; ++h) {
        const int64_t kvh = h / group;
        std::vector<double> scores;
        std::vector<std::vector<double>> values;
        for (int64_t j = 0; j <= pos; ++j) {
          double dot = 0.0;
          for (int64_t c = 0; c < head_dim; ++c) {
            dot += static_cast<double>(q[(token * q_heads + h) * head_dim + c]) *
                   k_dense[s][(j * kv_heads + kvh) * head_dim + c];
          }
          scores.push_back(scale * dot);
          const float* v = &v_dense[s][(j * kv_heads + kvh) * v_dim];
          values.emplace_back(v, v + v_dim);
        }
        const auto ref = naive_attend(scores, values, v_dim);
        for (int64_t c = 0; c < v_dim; ++c) {
          EXPECT_NEAR(out[(token * q_heads + h) * v_dim + c], ref[c], 2e-5)
              << "seq " << s << " token " << i << " head " << h << " dim " << c;
        }
      }
    }
  }
}

TEST(AttentionPaged, LargeScoresStayFinite) {
  // Scores of order ±1000 overflow exp() in float unless the max is subtracted first. One
  // decode over 6 keys, 1 head, head_dim 2: score_j = 1000 · k_j[0]; softmax in double here.
  const std::vector<float> keys = {1.0f,   0.0f, 0.99f, 0.0f, -1.0f, 0.0f,
                                   0.995f, 0.0f, 0.5f,  0.0f, 1.0f,  0.0f};
  std::vector<float> pool(kNumBlocks * kBlockSize * 2, NAN);
  PagedKvView cache;
  cache.block_size = kBlockSize;
  cache.head_dim = cache.v_dim = 2;
  cache.k_token_stride = cache.v_token_stride = 2;
  cache.k = cache.v = pool.data();
  const std::vector<int32_t> table = {5, 2};
  std::vector<int64_t> slots;
  for (int64_t pos = 0; pos < 6; ++pos) slots.push_back(table[pos / 4] * 4 + pos % 4);
  kv_cache_write_cpu(keys.data(), 2, nullptr, 0, 6, slots.data(), cache);
  const PagedSequence seq{0, 1, 6, table.data()};
  const std::vector<float> q = {1.0f, 0.0f};
  std::vector<float> out(2, NAN);
  paged_attention_cpu(q.data(), out.data(), &seq, 1, 1, cache, 1000.0f);
  std::vector<double> scores;
  std::vector<std::vector<double>> values;
  for (int j = 0; j < 6; ++j) {
    scores.push_back(1000.0 * keys[2 * j]);
    values.push_back({keys[2 * j], 0.0});
  }
  const auto ref = naive_attend(scores, values, 2);
  EXPECT_NEAR(out[0], ref[0], 1e-6);
  EXPECT_EQ(out[1], 0.0f);
}

TEST(AttentionPaged, MlaAbsorbedMatchesNaiveExpandedAttention) {
  // MLA with heads 4, kv_lora_rank C = 32, rope R = 8, qk_nope N = 16, v_head V = 12.
  // Naive: k_h = [W_UK_h · c | k_pe], v_h = W_UV_h · c, out_h = softmax(q_h · k_h) · v_h.
  // Absorbed: cache [c | k_pe], query [q_nope · W_UK_h | q_pe], kv_heads 1, v = k with
  // v_dim = C, then out_h = W_UV_h · (attention output in latent space).
  const int64_t heads = 4, C = 32, R = 8, N = 16, V = 12;
  const float scale = 1.0f / std::sqrt(static_cast<float>(N + R));  // qk_head_dim^-0.5
  std::mt19937 rng(77);
  const Layout layout = make_layout(rng);
  const auto w_uk = random_vector(heads * N * C, rng, 0.4f);  // [h][n][c]
  const auto w_uv = random_vector(heads * V * C, rng, 0.4f);  // [h][v][c]

  PagedKvView cache;
  cache.block_size = kBlockSize;
  cache.kv_heads = 1;
  cache.head_dim = C + R;
  cache.v_dim = C;
  cache.k_token_stride = cache.v_token_stride = C + R;
  std::vector<float> pool(kNumBlocks * kBlockSize * (C + R), NAN);
  cache.k = cache.v = pool.data();

  std::vector<std::vector<float>> latent;  // [pos][C + R] = [c_kv | k_pe]
  std::vector<float> rows;
  std::vector<int64_t> slots;
  for (size_t s = 0; s < kStep.size(); ++s) {
    latent.push_back(random_vector(kStep[s].context_len * (C + R), rng));
    rows.insert(rows.end(), latent[s].begin(), latent[s].end());
    for (int64_t pos = 0; pos < kStep[s].context_len; ++pos)
      slots.push_back(slot_of(layout, s, pos));
  }
  kv_cache_write_cpu(rows.data(), C + R, nullptr, 0, static_cast<int64_t>(slots.size()),
                     slots.data(), cache);

  const int64_t T = layout.total_queries;
  const auto q_nope = random_vector(T * heads * N, rng, 1.5f);
  const auto q_pe = random_vector(T * heads * R, rng, 1.5f);
  std::vector<float> q_abs(T * heads * (C + R));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      float* qa = &q_abs[(t * heads + h) * (C + R)];
      for (int64_t c = 0; c < C; ++c) {
        double sum = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          sum += static_cast<double>(q_nope[(t * heads + h) * N + n]) * w_uk[(h * N + n) * C + c];
        }
        qa[c] = static_cast<float>(sum);
      }
      for (int64_t r = 0; r < R; ++r) qa[C + r] = q_pe[(t * heads + h) * R + r];
    }
  }
  std::vector<float> out_latent(T * heads * C, NAN);
  paged_attention_cpu(q_abs.data(), out_latent.data(), layout.seqs.data(),
                      static_cast<int64_t>(layout.seqs.size()), heads, cache, scale);

  for (size_t s = 0; s < kStep.size(); ++s) {
    const PagedSequence& seq = layout.seqs[s];
    for (int64_t i = 0; i < seq.query_len; ++i) {
      const int64_t token = seq.query_begin + i;
      const int64_t pos = seq.context_len - seq.query_len + i;
      for (int64_t h = 0; h < heads; ++h) {
        std::vector<double> scores;
        std::vector<std::vector<double>> values;
        for (int64_t j = 0; j <= pos; ++j) {
          const float* c_kv = &latent[s][j * (C + R)];
          const float* k_pe = c_kv + C;
          double dot = 0.0;
          for (int64_t n = 0; n < N; ++n) {  // q_nope · (W_UK_h c_j), the long way
            double k_nope = 0.0;
            for (int64_t c = 0; c < C; ++c) k_nope += w_uk[(h * N + n) * C + c] * c_kv[c];
            dot += q_nope[(token * heads + h) * N + n] * k_nope;
          }
          for (int64_t r = 0; r < R; ++r) dot += q_pe[(token * heads + h) * R + r] * k_pe[r];
          scores.push_back(scale * dot);
          std::vector<double> v(V, 0.0);
          for (int64_t vv = 0; vv < V; ++vv) {
            for (int64_t c = 0; c < C; ++c) v[vv] += w_uv[(h * V + vv) * C + c] * c_kv[c];
          }
          values.push_back(v);
        }
        const auto ref = naive_attend(scores, values, V);
        for (int64_t vv = 0; vv < V; ++vv) {
          double absorbed = 0.0;  // W_UV_h applied after attention
          for (int64_t c = 0; c < C; ++c) {
            absorbed += w_uv[(h * V + vv) * C + c] * out_latent[(token * heads + h) * C + c];
          }
          EXPECT_NEAR(absorbed, ref[vv], 1e-4) << "seq " << s << " token " << i << " head " << h;
        }
      }
    }
  }
}

}  // namespace
}  // namespace dshpc
