// KV cache write and paged attention of the CUDA backend against the CPU backend: one step that
// mixes decode (query length 1), full prefill, chunked prefill (a query after cached history)
// and a padding row, over shuffled block tables, for multi-head, grouped-query (groups of 4 and
// of 3), v narrower than k, and MLA's absorbed shapes (kv_heads 1, head_dim 576 = 512 + 64 with
// v the first 512 dims of the same cache entry; 16 heads as V3 under tp 8, 128 as under tp 1).
#include <algorithm>
#include <numeric>

#include "gpu_test_util.h"
#include "kernels/cuda/launchers.h"

namespace dshpc::gpu_test {
namespace {

struct AttentionCase {
  const char* name;
  int64_t q_heads, kv_heads, head_dim, v_dim;
  bool mla;  // v inside the k entry
  int64_t block_size;
  float score_scale;  // multiplies head_dim^-0.5: larger values make the softmax sharp
};

struct SequenceShape {
  int32_t context_len;
  int32_t query_len;
};

// The cache and step of one backend.
struct AttentionRun {
  DeviceBuffer k_pool, v_pool;
  PagedKvView view;
  Tensor out;
};

class GpuAttention : public BackendPair {
 protected:
  // kGeneral: odd cache row pitches and a padding row (the general kernel, attention.cu).
  // kDecode: decode rows only (one new token per sequence, no padding row), cache rows padded to
  // 8 elements: the split-key decode kernel. kAligned: any step with cache rows padded to 8
  // elements and a padding row: the tensor-core prefill kernel in bf16 (head_dim 64, 128).
  enum Mode { kGeneral, kDecode, kAligned };
  void run_case(const AttentionCase& c, const std::vector<SequenceShape>& shapes,
                Mode mode = kGeneral) {
    SCOPED_TRACE(c.name);
    const bool decode_only = mode == kDecode;
    const bool aligned = mode != kGeneral;
    const CudaPathCounters before = cuda_path_counters(*gpu_);
    const int64_t bs = c.block_size;
    // Block tables: every sequence gets its blocks from one shuffled pool.
    std::vector<std::vector<int32_t>> tables;
    int64_t num_blocks = 0;
    for (const SequenceShape& s : shapes) num_blocks += (s.context_len + bs - 1) / bs;
    num_blocks += 3;  // never used: stays zero
    std::vector<int32_t> free_blocks(num_blocks);
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::shuffle(free_blocks.begin(), free_blocks.end(), std::mt19937(7));
    size_t next = 0;
    for (const SequenceShape& s : shapes) {
      std::vector<int32_t> table;
      for (int64_t b = 0; b < (s.context_len + bs - 1) / bs; ++b)
        table.push_back(free_blocks[next++]);
      tables.push_back(table);
    }
    auto slot_of = [&](size_t seq, int64_t position) {
      return static_cast<int64_t>(tables[seq][position / bs]) * bs + position % bs;
    };

    // History (already cached tokens) and the step's new tokens, plus one padding row.
    std::vector<int64_t> history_slots, step_slots;
    std::vector<int32_t> positions;
    std::vector<PagedSequence> seqs;
    for (size_t s = 0; s < shapes.size(); ++s) {
      const int32_t first = shapes[s].context_len - shapes[s].query_len;
      for (int32_t p = 0; p < first; ++p) history_slots.push_back(slot_of(s, p));
      seqs.push_back({static_cast<int32_t>(step_slots.size()), shapes[s].query_len,
                      shapes[s].context_len, nullptr});
      for (int32_t p = first; p < shapes[s].context_len; ++p) {
        step_slots.push_back(slot_of(s, p));
        positions.push_back(p);
      }
    }
    if (!decode_only) {
      step_slots.push_back(-1);  // padding: not written, attends to nothing
      positions.push_back(0);
    }
    const int64_t tokens = static_cast<int64_t>(step_slots.size());
    const int64_t history = static_cast<int64_t>(history_slots.size());
    const int64_t k_width = c.kv_heads * c.head_dim, v_width = c.kv_heads * c.v_dim;

    const std::vector<float> k_hist = values(history * k_width, 1),
                             v_hist = values(history * v_width, 2);
    const std::vector<float> k_new = values(tokens * k_width, 3),
                             v_new = values(tokens * v_width, 4);
    const std::vector<float> q = values(tokens * c.q_heads * c.head_dim, 5);
    const float scale = c.score_scale / std::sqrt(static_cast<float>(c.head_dim));

    std::vector<int32_t> token_ids(tokens, 0);
    std::vector<const int32_t*> table_ptrs;
    std::vector<int32_t> table_lengths;
    for (const auto& t : tables) {
      table_ptrs.push_back(t.data());
      table_lengths.push_back(static_cast<int32_t>(t.size()));
    }
    const StepHostData host{token_ids.data(),     positions.data(),
                            step_slots.data(),    tokens,
                            seqs.data(),          table_ptrs.data(),
                            table_lengths.data(), static_cast<int64_t>(seqs.size())};

    auto run = [&](Backend& b, DType dtype) {
      AttentionRun r;
      const int64_t pool_slots = num_blocks * bs;
      const int64_t k_stride = c.mla ? c.head_dim : k_width + (aligned ? 8 : 2);  // padded
      const int64_t v_stride = c.mla ? c.head_dim : v_width + (aligned ? 8 : 1);
      r.k_pool = b.allocate(pool_slots * k_stride * dtype_size(dtype));
      if (!c.mla) r.v_pool = b.allocate(pool_slots * v_stride * dtype_size(dtype));
      r.view.k = static_cast<float*>(r.k_pool.data());
      r.view.v = c.mla ? r.view.k : static_cast<float*>(r.v_pool.data());
      r.view.block_size = bs;
      r.view.k_token_stride = k_stride;
      r.view.v_token_stride = v_stride;
      r.view.kv_heads = c.kv_heads;
      r.view.head_dim = c.head_dim;
      r.view.v_dim = c.v_dim;

      Tensor kh = upload_tensor(b, k_hist, history, k_width, dtype);
      Tensor vh = upload_tensor(b, v_hist, history, v_width, dtype);
      DeviceBuffer hslots = upload_raw(b, history_slots);
      if (history > 0) {
        b.kv_cache_write(kh.mat, c.mla ? nullptr : &vh.mat, hslots.as<int64_t>(), r.view);
      }
      const StepTensors step = b.upload_step(host);
      // New keys as strided column slices of a wider projection output, as the models write them.
      Tensor kn = upload_tensor(b, k_new, tokens, k_width, dtype, k_width + 5);
      Tensor vn = upload_tensor(b, v_new, tokens, v_width, dtype, v_width + 3);
      b.kv_cache_write(kn.mat, c.mla ? nullptr : &vn.mat, step.slots, r.view);
      Tensor qt = upload_tensor(b, q, tokens, c.q_heads * c.head_dim, dtype);
      r.out = upload_tensor(b, std::vector<float>(tokens * c.q_heads * c.v_dim), tokens,
                            c.q_heads * c.v_dim, dtype);
      b.paged_attention(qt.mat, r.out.mat, step, c.q_heads, r.view, scale);
      return r;
    };
    AttentionRun cpu = run(*cpu_, DType::kF32);
    AttentionRun gpu = run(*gpu_, dtype());

    // The caches hold the same stored values (a copy: exact).
    const int64_t pool_slots = num_blocks * bs;
    const Mat cpu_k{cpu.k_pool.data(), DType::kF32, pool_slots, cpu.view.k_token_stride,
                    cpu.view.k_token_stride};
    const Mat gpu_k{gpu.k_pool.data(), dtype(), pool_slots, gpu.view.k_token_stride,
                    gpu.view.k_token_stride};
    EXPECT_EQ(download_tensor(*gpu_, gpu_k), download_tensor(*cpu_, cpu_k)) << "k cache";
    if (!c.mla) {
      const Mat cpu_v{cpu.v_pool.data(), DType::kF32, pool_slots, cpu.view.v_token_stride,
                      cpu.view.v_token_stride};
      const Mat gpu_v{gpu.v_pool.data(), dtype(), pool_slots, gpu.view.v_token_stride,
                      gpu.view.v_token_stride};
      EXPECT_EQ(download_tensor(*gpu_, gpu_v), download_tensor(*cpu_, cpu_v)) << "v cache";
    }
    // One rounding: the output (inputs are the same stored values on both sides). The
    // tensor-core kernel (kAligned, bf16) also rounds the probabilities P to bf16 before P·V, as
    // FlashAttention-2 and PyTorch's bf16 SDPA kernels do: each weight is off by up to 2^-9
    // relative, independently, so an output element is off by about 2^-9/√3 of its own scale
    // (the same √(Σ p²v²) that sets the output's size for random v): ~1e-3 rms, and over the
    // ~10^6 outputs of a case ≥ 5 standard deviations at worst; with the output rounding that is
    // three to four bf16 ulps (measured worst 0.0117 = 3.0 ulps on TensorCorePrefillLong).
    // MLA's absorbed shapes take their own tensor-core kernel (attention_mla_prefill.cu) in any
    // bf16 step that is not decode-only, with the same P rounding.
    const bool bf16 = dtype() == DType::kBF16;
    const bool mla_kernel =
        c.mla && bf16 && !decode_only &&
        ((c.head_dim == 576 && c.v_dim == 512) || (c.head_dim == 80 && c.v_dim == 64));
    const int roundings = mode == kAligned || mla_kernel ? 4 : 1;
    EXPECT_CLOSE(download_tensor(*gpu_, gpu.out.mat), download_tensor(*cpu_, cpu.out.mat),
                 tol(roundings));
    const CudaPathCounters after = cuda_path_counters(*gpu_);
    if (decode_only) {
      EXPECT_EQ(after.decode_attention, before.decode_attention + 1)
          << "the step did not take the split-key decode kernel";
    }
    if (mode == kAligned && bf16 && !c.mla) {
      EXPECT_EQ(after.prefill_attention, before.prefill_attention + 1)
          << "the step did not take the tensor-core prefill kernel";
    }
    EXPECT_EQ(after.mla_prefill_attention, before.mla_prefill_attention + (mla_kernel ? 1 : 0))
        << (mla_kernel ? "the step did not take the MLA prefill kernel"
                       : "the MLA prefill kernel ran");
  }
};

const std::vector<SequenceShape> kMixedStep = {
    {1, 1},    // first token of a sequence
    {37, 1},   // decode
    {23, 23},  // prefill
    {40, 9},   // chunked prefill after 31 cached tokens
    {150, 5},  // a short chunk after a long history
    {70, 70},  // a longer prefill (several query tiles)
};

TEST_P(GpuAttention, MultiHead) {
  run_case({"mha", 8, 8, 64, 64, false, 16, 1.0f}, kMixedStep);
}

TEST_P(GpuAttention, GroupedQueryOfFour) {
  run_case({"gqa4", 32, 8, 128, 128, false, 16, 1.0f}, kMixedStep);
}

TEST_P(GpuAttention, GroupOfThreeOddBlockSize) {
  run_case({"group3", 12, 4, 80, 80, false, 7, 1.0f}, kMixedStep);
}

TEST_P(GpuAttention, ValueNarrowerThanKeySharpSoftmax) {
  run_case({"v_narrower", 4, 4, 96, 64, false, 16, 8.0f}, kMixedStep);
}

TEST_P(GpuAttention, MlaTinyFixtureShape) {
  run_case({"mla_tiny", 4, 1, 80, 64, true, 16, 1.0f}, kMixedStep);
}

TEST_P(GpuAttention, MlaV3ShapeSixteenHeads) {
  run_case({"mla16", 16, 1, 576, 512, true, 16, 1.0f}, kMixedStep);
}

TEST_P(GpuAttention, MlaV3ShapeAllHeads) {
  run_case({"mla128", 128, 1, 576, 512, true, 64, 1.0f}, {{1, 1}, {90, 1}, {33, 33}, {80, 6}});
}

// Decode steps: the split-key kernel (attention_decode.cu). Long contexts make it split the keys
// (up to 64 ranges) and merge them; short ones and large batches run unsplit.
const std::vector<SequenceShape> kDecodeBatch = {{1, 1}, {37, 1}, {300, 1}, {129, 1}, {2100, 1}};

TEST_P(GpuAttention, DecodeMultiHead128) {
  run_case({"decode_mha128", 32, 32, 128, 128, false, 16, 1.0f}, kDecodeBatch, kDecode);
}

TEST_P(GpuAttention, DecodeBatchOfOneLongContextSplits) {
  run_case({"decode_one", 32, 32, 128, 128, false, 16, 1.0f}, {{3001, 1}}, kDecode);
  run_case({"decode_one_sharp", 8, 8, 128, 128, false, 16, 8.0f}, {{777, 1}}, kDecode);
}

TEST_P(GpuAttention, DecodeGroupedQueryGroupsOf4And8And16) {
  run_case({"decode_gqa4", 32, 8, 128, 128, false, 16, 1.0f}, kDecodeBatch, kDecode);
  run_case({"decode_gqa8", 64, 8, 128, 128, false, 16, 1.0f}, kDecodeBatch, kDecode);
  run_case({"decode_gqa16", 32, 2, 128, 128, false, 16, 1.0f}, kDecodeBatch, kDecode);
}

TEST_P(GpuAttention, DecodeOddGroupsHeadDimsAndBlockSizes) {
  run_case({"decode_group3_d64", 12, 4, 64, 64, false, 7, 1.0f}, kDecodeBatch, kDecode);
  run_case({"decode_group6_d32", 12, 2, 32, 32, false, 16, 1.0f}, kDecodeBatch, kDecode);
  run_case({"decode_d256", 8, 4, 256, 256, false, 32, 1.0f}, kDecodeBatch, kDecode);
}

// The decode kernel's two forms (DecodeAttentionPlan::wide_keys). Wide: in bf16 a 32-, 64- or
// 128-dim head row takes 4, 8 or 16 lanes (16 bytes each), so a warp reads 8, 4 or 2 keys at
// once, with one or two heads per CTA (in float32 the 32- and 64-dim heads), and two or four
// such key groups in flight per iteration (DecodeAttentionPlan::unroll, forced here through
// DSHPC_DECODE_UNROLL). Contexts of 1 to 5 keys leave some of a warp's key groups with nothing
// to read while the others have keys; with a 2,100-key context the keys are split (a partial
// result per split, then the combine), with contexts under 64 keys they are not (the kernel
// writes the output). Then the one-key-per-warp form (DSHPC_DECODE_WIDE=0) on the shapes that
// would take the wide one. The path counters tell which form ran.
TEST_P(GpuAttention, DecodeWideAndOneKeyForms) {
  const std::vector<SequenceShape> split = {{1, 1}, {2, 1},  {3, 1},   {5, 1},
                                            {9, 1}, {70, 1}, {2100, 1}};
  const std::vector<SequenceShape> unsplit = {{1, 1}, {2, 1}, {3, 1}, {5, 1}, {17, 1}, {40, 1}};
  const bool bf16 = dtype() == DType::kBF16;
  auto expect_form = [&](const AttentionCase& c, const std::vector<SequenceShape>& shapes,
                         bool wide, int unroll) {
    const CudaPathCounters before = cuda_path_counters(*gpu_);
    run_case(c, shapes, kDecode);
    const CudaPathCounters after = cuda_path_counters(*gpu_);
    EXPECT_EQ(after.decode_attention_wide - before.decode_attention_wide, wide ? 1 : 0)
        << c.name << ": " << (wide ? "the wide form did not run" : "the wide form ran");
    EXPECT_EQ(after.decode_attention_unroll2 - before.decode_attention_unroll2,
              wide && unroll == 2 ? 1 : 0)
        << c.name << ": unroll " << unroll;
  };
  for (const char* unroll : {"2", "4"}) {
    {
      ScopedEnv on("DSHPC_DECODE_WIDE", "1");
      ScopedEnv forced("DSHPC_DECODE_UNROLL", unroll);
      gpu_ = cuda_backend(dtype());
    }
    ASSERT_NE(gpu_, nullptr);
    SCOPED_TRACE(std::string("unroll ") + unroll);
    const int u = std::atoi(unroll);
    for (const auto* shapes : {&split, &unsplit}) {
      expect_form({"decode_d32_mha", 8, 8, 32, 32, false, 16, 1.0f}, *shapes, true, u);
      expect_form({"decode_d64_group2", 16, 8, 64, 64, false, 5, 1.0f}, *shapes, true, u);
      expect_form({"decode_d128_group2_sharp", 16, 8, 128, 128, false, 16, 8.0f}, *shapes, bf16, u);
      expect_form({"decode_mha128", 32, 32, 128, 128, false, 16, 1.0f}, *shapes, bf16, u);
    }
  }
  {
    ScopedEnv off("DSHPC_DECODE_WIDE", "0");
    gpu_ = cuda_backend(dtype());
  }
  ASSERT_NE(gpu_, nullptr);
  expect_form({"one_key_mha128", 32, 32, 128, 128, false, 16, 1.0f}, split, false, 0);
  expect_form({"one_key_d64_group2", 16, 8, 64, 64, false, 5, 1.0f}, unsplit, false, 0);
}

// A bad DSHPC_DECODE_UNROLL is an error that names the variable, not a silent default. A plain
// test (no fixture backend), the variable set only inside the statement: the child re-runs the
// test from the start (threadsafe style, CUDA afresh) and dies where the statement creates the
// backend.
TEST(GpuDecodeAttentionSwitch, RejectsAnUnrollOtherThanTwoOrFour) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ScopedEnv bad("DSHPC_DECODE_UNROLL", "3");
        (void)make_cuda_backend(0, DType::kBF16);
      },
      "DSHPC_DECODE_UNROLL must be 2 or 4");
}

// The decode plan (host code) on an H200's 132 SMs: the one-head wide form (bf16, 128-dim MHA:
// DeepSeek-LLM 7B) splits while twice the grid fits in 8 CTAs an SM and takes two key groups
// a warp past 7 CTAs an SM; the other forms keep splitting until 2 CTAs an SM with four groups.
TEST(GpuDecodeAttentionPlan, UnrollAndSplitsFollowTheGridSize) {
  struct Case {
    const char* name;
    int64_t seqs, q_heads, kv_heads, head_dim;
    DType dtype;
    int64_t context;
    int splits, unroll;
  };
  const Case cases[] = {
      {"7b_batch64", 64, 32, 32, 128, DType::kBF16, 192, 1, 2},        // 2,048 CTAs
      {"7b_batch16", 16, 32, 32, 128, DType::kBF16, 192, 2, 2},        // 512 → 1,024 CTAs
      {"7b_batch1", 1, 32, 32, 128, DType::kBF16, 192, 4, 4},          // split cap 4 at 192 keys
      {"7b_batch1_long", 1, 32, 32, 128, DType::kBF16, 1024, 32, 2},   // 32 → 1,024 CTAs
      {"7b_batch8_long", 8, 32, 32, 128, DType::kBF16, 1024, 4, 2},    // 1,024 CTAs > 924
      {"f32_one_key", 16, 32, 32, 128, DType::kF32, 192, 1, 4},        // 512 ≥ 2 · 132
      {"f32_one_key_batch4", 4, 32, 32, 128, DType::kF32, 192, 4, 4},  // 128 → 256 → 512
      {"bf16_two_heads", 16, 32, 16, 128, DType::kBF16, 192, 2, 4},    // 256 CTAs < 264: 512
      {"gqa8_67b", 64, 64, 8, 128, DType::kBF16, 192, 1, 4},           // 8 heads a CTA
  };
  for (const Case& c : cases) {
    const cuda::DecodeAttentionPlan plan = cuda::decode_attention_plan(
        c.seqs, c.q_heads, c.kv_heads, c.head_dim, c.dtype, c.context, 132);
    EXPECT_EQ(plan.splits, c.splits) << c.name;
    EXPECT_EQ(plan.unroll, c.unroll) << c.name;
  }
  // Without the wide form (DSHPC_DECODE_WIDE=0) the 7B shape keeps the old rules too.
  const cuda::DecodeAttentionPlan one_key =
      cuda::decode_attention_plan(16, 32, 32, 128, DType::kBF16, 192, 132, false);
  EXPECT_EQ(one_key.splits, 1);
  EXPECT_EQ(one_key.unroll, 4);
}

// MLA decode steps (the latent kernel of attention_decode.cu): V2/V3's 512 + 64 with 16 heads
// (V2-Lite, V3 under tp 8) and 128 (V3 under tp 1), and the tiny fixtures' 64 + 16 with 4 heads
// and with 2 (a head chunk only half used); long contexts split the keys, sharp softmax too.
TEST_P(GpuAttention, DecodeMlaLatent) {
  run_case({"decode_mla16", 16, 1, 576, 512, true, 16, 1.0f}, kDecodeBatch, kDecode);
  run_case({"decode_mla16_one", 16, 1, 576, 512, true, 16, 1.0f}, {{3001, 1}}, kDecode);
  run_case({"decode_mla128", 128, 1, 576, 512, true, 64, 1.0f}, {{1, 1}, {90, 1}, {700, 1}},
           kDecode);
  run_case({"decode_mla_sharp", 16, 1, 576, 512, true, 7, 8.0f}, {{333, 1}, {17, 1}}, kDecode);
  run_case({"decode_mla_tiny", 4, 1, 80, 64, true, 16, 1.0f}, kDecodeBatch, kDecode);
  run_case({"decode_mla_tiny2", 2, 1, 80, 64, true, 16, 1.0f}, kDecodeBatch, kDecode);
}

TEST_P(GpuAttention, DecodeMlaLargeBatch) {
  std::vector<SequenceShape> batch;
  for (int i = 0; i < 64; ++i) batch.push_back({100 + 7 * i, 1});
  run_case({"decode_mla_batch64", 16, 1, 576, 512, true, 16, 1.0f}, batch, kDecode);
}

// 64 sequences × 32 heads: more CTAs than the four-group form holds in a wave, so the plan takes
// two key groups a warp (bf16; in float32 the 128-dim head takes the one-key form).
TEST_P(GpuAttention, DecodeLargeBatch) {
  std::vector<SequenceShape> batch;
  for (int i = 0; i < 64; ++i) batch.push_back({100 + 7 * i, 1});
  const int64_t before = cuda_path_counters(*gpu_).decode_attention_unroll2;
  run_case({"decode_batch64", 32, 32, 128, 128, false, 16, 1.0f}, batch, kDecode);
  EXPECT_EQ(cuda_path_counters(*gpu_).decode_attention_unroll2 - before,
            dtype() == DType::kBF16 ? 1 : 0);
}

// Prefill and mixed steps on the tensor cores (bf16; float32 runs the general kernel).
TEST_P(GpuAttention, TensorCorePrefillMixedStep) {
  run_case({"tc_mha64", 8, 8, 64, 64, false, 16, 1.0f}, kMixedStep, kAligned);
  run_case({"tc_gqa4_128", 32, 8, 128, 128, false, 16, 1.0f}, kMixedStep, kAligned);
  run_case({"tc_sharp", 4, 4, 128, 128, false, 7, 8.0f}, kMixedStep, kAligned);
}

TEST_P(GpuAttention, TensorCorePrefillLongPromptsAndChunks) {
  // Several 64-row tiles and 64-key tiles, a chunk after a long history, odd lengths.
  run_case({"tc_long", 8, 2, 128, 128, false, 16, 1.0f},
           {{300, 300}, {1000, 129}, {65, 65}, {64, 64}, {200, 1}}, kAligned);
}

// MLA prefill on the tensor cores (bf16; float32 runs the general kernel): several key tiles of
// 32 and query tiles of 4 tokens × 16 heads, 1 token × 64 heads (two head blocks at 128 heads),
// 8 tokens × 8 heads (V2-Lite under tp 2), a chunk after a long history, odd lengths and block
// sizes, a sharp softmax, and the tiny fixtures' 64 + 16 with 4 heads.
const std::vector<SequenceShape> kMlaLongSteps = {
    {300, 300}, {1000, 129}, {65, 65}, {33, 33}, {200, 1}};
const std::vector<SequenceShape> kMlaAllHeadsSteps = {{130, 130}, {700, 37}, {1, 1}};

TEST_P(GpuAttention, MlaPrefillLongPromptsAndChunks) {
  const std::vector<SequenceShape>& long_steps = kMlaLongSteps;
  run_case({"mla_prefill16", 16, 1, 576, 512, true, 16, 1.0f}, long_steps);
  run_case({"mla_prefill128", 128, 1, 576, 512, true, 64, 1.0f}, kMlaAllHeadsSteps);
  if (dtype() == DType::kBF16) {
    // Only for the tensor-core kernel: in float32 (the general kernel) scores 8 times sharper
    // over 576-term dot products carry relative errors of about 2^-24 · |score| with |score| up
    // to ~30, which exp turns into output errors beyond kF32Tol's few-ulp argument (5.2e-5
    // measured; the float32 cases above stay within it).
    run_case({"mla_prefill8_sharp", 8, 1, 576, 512, true, 7, 8.0f}, long_steps);
  }
  run_case({"mla_prefill_tiny", 4, 1, 80, 64, true, 16, 1.0f}, long_steps);
  // 96 heads: two head blocks, the second with 32 of its 64 rows past the last head.
  run_case({"mla_prefill96", 96, 1, 576, 512, true, 16, 1.0f}, {{70, 70}, {130, 9}});
  run_case({"mla_prefill_heads3", 3, 1, 80, 64, true, 5, 1.0f}, {{97, 97}, {50, 11}});
}

// The same cases on the kernel's first form (each score computed by both warps of a row group;
// the split form is the default).
TEST_P(GpuAttention, MlaPrefillFirstForm) {
  {
    ScopedEnv split("DSHPC_MLA_PREFILL_SPLIT", "0");
    gpu_ = cuda_backend(dtype());
  }
  ASSERT_NE(gpu_, nullptr);
  run_case({"first_mla16", 16, 1, 576, 512, true, 16, 1.0f}, kMlaLongSteps);
  run_case({"first_mla128", 128, 1, 576, 512, true, 64, 1.0f}, kMlaAllHeadsSteps);
  run_case({"first_tiny", 4, 1, 80, 64, true, 16, 1.0f}, kMixedStep);
  if (dtype() == DType::kBF16) {  // float32: see MlaPrefillLongPromptsAndChunks
    run_case({"first_sharp", 8, 1, 576, 512, true, 7, 8.0f}, {{300, 300}, {1000, 129}});
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, GpuAttention, ::testing::Values(DType::kF32, DType::kBF16),
                         dtype_param_name);

}  // namespace
}  // namespace dshpc::gpu_test
