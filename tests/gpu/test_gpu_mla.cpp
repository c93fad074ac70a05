// Backend::mla_prepare of the CUDA backend (one launch for a decode step's few tokens,
// mla_prepare.cu) against the CPU backend's op-by-op form: the latent cache entries written
// (normalised c, rotated k_pe), a padding row that writes nothing, and the absorbed query
// (W_UKᵀ q_nope, rotated q_pe), for V2/V3's shapes (16 heads of 128 + 64, latent 512) and the
// tiny fixtures' (4 heads of 32 + 16, latent 64), both rope styles; a step over the fused
// launch's token limit takes the op-by-op path on the GPU and gives the same results.
#include <algorithm>
#include <numeric>

#include "gpu_test_util.h"
#include "kernels/cuda/launchers.h"
#include "kernels/rope.h"

namespace dshpc::gpu_test {
namespace {

using GpuMla = BackendPair;

struct PrepareCase {
  const char* name;
  int64_t heads, nope, rope, lora, v_dim, tokens;
  RopeStyle style;
};

TEST_P(GpuMla, PrepareEqualsTheOpByOpForm) {
  const std::vector<PrepareCase> cases = {
      {"v2_one_token", 16, 128, 64, 512, 128, 1, RopeStyle::kInterleaved},
      {"v2_batch5", 16, 128, 64, 512, 128, 5, RopeStyle::kInterleaved},
      {"v2_batch16_half_split", 16, 128, 64, 512, 128, 16, RopeStyle::kHalfSplit},
      {"v2_batch17_op_by_op", 16, 128, 64, 512, 128, 17, RopeStyle::kInterleaved},
      {"tiny", 4, 32, 16, 64, 32, 3, RopeStyle::kInterleaved},
      {"v3_tp8_heads", 16, 128, 64, 512, 128, 2, RopeStyle::kInterleaved},
  };
  uint32_t seed = 500;
  for (const PrepareCase& c : cases) {
    SCOPED_TRACE(c.name);
    const int64_t T = c.tokens, qk = c.nope + c.rope, entry = c.lora + c.rope;
    const int64_t positions_max = 4096, slots_total = 4 * T + 8;
    RopeParams rp;
    rp.rot_dim = c.rope;
    std::vector<float> cos_table(positions_max * c.rope / 2), sin_table(cos_table.size());
    rope_tables(rp, positions_max, cos_table.data(), sin_table.data());
    // Positions spread over the table; slots shuffled, the last token a padding row (−1).
    std::vector<int32_t> positions(T);
    std::vector<int64_t> slots(T);
    std::vector<int64_t> order(slots_total);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(seed));
    for (int64_t t = 0; t < T; ++t) {
      positions[t] = static_cast<int32_t>((t * 977 + 13) % positions_max);
      slots[t] = t == T - 1 && T > 1 ? -1 : order[t];
    }
    const std::vector<float> q = values(T * c.heads * qk, seed++);
    const std::vector<float> latent = values(T * entry, seed++, 3.0f);
    std::vector<float> norm = values(c.lora, seed++, 0.2f);
    for (float& v : norm) v += 1.0f;
    norm = representable(norm, dtype());
    const std::vector<float> kv_b = values(c.heads * (c.nope + c.v_dim) * c.lora, seed++, 0.05f);
    const std::vector<float> cache0(slots_total * entry, 0.5f);

    struct Run {
      Tensor q, latent, kv_b, out, cache, norm;
      DeviceBuffer positions, slots, cos, sin;
    };
    auto run = [&](Backend& b, DType dtype) {
      Run r;
      r.q = upload_tensor(b, q, T, c.heads * qk, dtype);
      r.latent = upload_tensor(b, latent, T, entry, dtype, entry + 8);  // strided, as in a pair
      r.kv_b = upload_tensor(b, kv_b, c.heads * (c.nope + c.v_dim), c.lora, dtype);
      r.out = upload_tensor(b, std::vector<float>(T * c.heads * entry, 0.0f), T, c.heads * entry,
                            dtype);
      r.cache = upload_tensor(b, cache0, slots_total, entry, dtype);
      r.norm = upload_tensor(b, norm, 1, c.lora, dtype);
      r.positions = upload_raw(b, positions);
      r.slots = upload_raw(b, slots);
      r.cos = upload_raw(b, cos_table);
      r.sin = upload_raw(b, sin_table);
      MlaPrepareArgs a;
      a.q = r.q.mat;
      a.latent = r.latent.mat;
      a.kv_norm = r.norm.mat.data;
      a.eps = 1e-6f;
      a.kv_b = r.kv_b.mat;
      a.heads = c.heads;
      a.nope = c.nope;
      a.rope = c.rope;
      a.v_dim = c.v_dim;
      a.positions = r.positions.as<int32_t>();
      a.slots = r.slots.as<int64_t>();
      a.tables = {r.cos.as<float>(), r.sin.as<float>(), positions_max, c.rope};
      a.style = c.style;
      a.cache.k = static_cast<float*>(r.cache.mat.data);
      a.cache.v = a.cache.k;
      a.cache.block_size = 16;
      a.cache.k_token_stride = entry;
      a.cache.v_token_stride = entry;
      a.cache.kv_heads = 1;
      a.cache.head_dim = entry;
      a.cache.v_dim = c.lora;
      a.q_absorbed = r.out.mat;
      b.mla_prepare(a);
      return r;
    };
    const int64_t fused_before = cuda_path_counters(*gpu_).mla_prepare;
    Run cpu = run(*cpu_, DType::kF32);
    Run gpu = run(*gpu_, dtype());
    const bool fused = T <= cuda::kMlaPrepareMaxTokens;
    EXPECT_EQ(cuda_path_counters(*gpu_).mla_prepare - fused_before, fused ? 1 : 0);

    // The cache: normalised c (one rounding) and rotated k_pe (one rounding); the padding row's
    // slot and every unused slot keep their 0.5.
    const std::vector<float> gpu_cache = download_tensor(*gpu_, gpu.cache.mat);
    const std::vector<float> cpu_cache = download_tensor(*cpu_, cpu.cache.mat);
    EXPECT_CLOSE(gpu_cache, cpu_cache, tol(1)) << "latent cache";
    int64_t untouched = 0;
    for (int64_t s = 0; s < slots_total; ++s) {
      const bool written = std::find(slots.begin(), slots.end(), s) != slots.end();
      for (int64_t i = 0; i < entry; ++i) {
        if (!written && gpu_cache[s * entry + i] == 0.5f) ++untouched;
      }
    }
    const int64_t written_slots = T > 1 ? T - 1 : T;
    EXPECT_EQ(untouched, (slots_total - written_slots) * entry) << "writes outside the slots";
    // The absorbed query: W_UKᵀ q_nope (one rounding), rotated q_pe (one rounding).
    EXPECT_CLOSE(download_tensor(*gpu_, gpu.out.mat), download_tensor(*cpu_, cpu.out.mat), tol(1))
        << "absorbed query";
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, GpuMla, ::testing::Values(DType::kF32, DType::kBF16),
                         dtype_param_name);

}  // namespace
}  // namespace dshpc::gpu_test
