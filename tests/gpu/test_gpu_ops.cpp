// The element-wise, normalisation, embedding, rope, matmul and argmax ops of the CUDA backend
// against the CPU backend, in float32 and bf16 (tolerances: gpu_test_util.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "gpu_test_util.h"
#include "kernels/cuda/launchers.h"
#include "kernels/rope.h"

namespace dshpc::gpu_test {
namespace {

using GpuOps = BackendPair;

TEST_P(GpuOps, EmbeddingVocabularySlice) {
  const int64_t vocab_begin = 100, vocab_rows = 300, dim = 96, tokens = 45;
  const std::vector<float> table = values(vocab_rows * dim, 1);
  std::vector<int32_t> ids(tokens);
  std::mt19937 rng(2);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % 600);  // about half outside the slice
  ids[0] = 100;
  ids[1] = 399;
  ids[2] = 99;
  ids[3] = 400;
  Tensor cpu_table = upload_tensor(*cpu_, table, vocab_rows, dim, DType::kF32);
  Tensor gpu_table = upload_tensor(*gpu_, table, vocab_rows, dim, dtype());
  DeviceBuffer cpu_ids = upload_raw(*cpu_, ids), gpu_ids = upload_raw(*gpu_, ids);
  Tensor cpu_out = upload_tensor(*cpu_, values(tokens * dim, 3), tokens, dim, DType::kF32);
  // A strided output: its padding must survive.
  Tensor gpu_out = upload_tensor(*gpu_, values(tokens * dim, 3), tokens, dim, dtype(), dim + 5);
  cpu_->embedding(cpu_table.mat, vocab_begin, cpu_ids.as<int32_t>(), cpu_out.mat);
  gpu_->embedding(gpu_table.mat, vocab_begin, gpu_ids.as<int32_t>(), gpu_out.mat);
  // A copy of stored values: exact in both modes.
  EXPECT_EQ(download_tensor(*gpu_, gpu_out.mat), download_tensor(*cpu_, cpu_out.mat));
  EXPECT_TRUE(padding_intact(*gpu_, gpu_out.mat));
}

TEST_P(GpuOps, RmsNormStridedAndInPlace) {
  // Pitch pad 3: the scalar kernel; pad 8 keeps rows 16-byte aligned: the vectorised kernel
  // (up to 8192 bf16 / 4096 float32 columns).
  for (int64_t pad : {3, 8})
    for (int64_t dim : {128, 4096, 7168}) {
      SCOPED_TRACE(testing::Message() << "pad " << pad);
      const int64_t rows = 33;
      const std::vector<float> x = values(rows * dim, 10 + dim, 2.0f);
      const std::vector<float> w = values(dim, 11 + dim);
      Tensor cpu_x = upload_tensor(*cpu_, x, rows, dim, DType::kF32);
      Tensor gpu_x = upload_tensor(*gpu_, x, rows, dim, dtype(), dim + pad);
      Tensor cpu_w = upload_tensor(*cpu_, w, dim, 1, DType::kF32);
      Tensor gpu_w = upload_tensor(*gpu_, w, dim, 1, dtype());
      Tensor cpu_out = upload_tensor(*cpu_, std::vector<float>(rows * dim), rows, dim, DType::kF32);
      Tensor gpu_out =
          upload_tensor(*gpu_, std::vector<float>(rows * dim), rows, dim, dtype(), dim + 2 * pad);
      cpu_->rmsnorm(cpu_x.mat, cpu_w.buffer.data(), 1e-6f, cpu_out.mat);
      gpu_->rmsnorm(gpu_x.mat, gpu_w.buffer.data(), 1e-6f, gpu_out.mat);
      EXPECT_CLOSE(download_tensor(*gpu_, gpu_out.mat), download_tensor(*cpu_, cpu_out.mat), tol(1))
          << "dim " << dim;
      EXPECT_TRUE(padding_intact(*gpu_, gpu_out.mat));
      // In place (the MLA q_a / kv_a norms run so).
      cpu_->rmsnorm(cpu_x.mat, cpu_w.buffer.data(), 1e-6f, cpu_x.mat);
      gpu_->rmsnorm(gpu_x.mat, gpu_w.buffer.data(), 1e-6f, gpu_x.mat);
      EXPECT_CLOSE(download_tensor(*gpu_, gpu_x.mat), download_tensor(*cpu_, cpu_x.mat), tol(1))
          << "in place, dim " << dim;
    }
}

TEST_P(GpuOps, AddRmsNorm) {
  for (int64_t dim : {2048, 4096, 7168, 100}) {  // 100: not whole 16-byte chunks (scalar kernel)
    SCOPED_TRACE(testing::Message() << "dim " << dim);
    const int64_t rows = 17;
    const std::vector<float> residual = values(rows * dim, 20, 3.0f);
    const std::vector<float> delta = values(rows * dim, 21);
    const std::vector<float> w = values(dim, 22);
    Tensor cpu_r = upload_tensor(*cpu_, residual, rows, dim, DType::kF32);
    Tensor gpu_r = upload_tensor(*gpu_, residual, rows, dim, dtype());
    Tensor cpu_d = upload_tensor(*cpu_, delta, rows, dim, DType::kF32);
    Tensor gpu_d = upload_tensor(*gpu_, delta, rows, dim, dtype());
    Tensor cpu_w = upload_tensor(*cpu_, w, dim, 1, DType::kF32);
    Tensor gpu_w = upload_tensor(*gpu_, w, dim, 1, dtype());
    Tensor cpu_out = upload_tensor(*cpu_, std::vector<float>(rows * dim), rows, dim, DType::kF32);
    Tensor gpu_out = upload_tensor(*gpu_, std::vector<float>(rows * dim), rows, dim, dtype());
    cpu_->add_rmsnorm(cpu_r.mat, cpu_d.mat, cpu_w.buffer.data(), 1e-5f, cpu_out.mat);
    gpu_->add_rmsnorm(gpu_r.mat, gpu_d.mat, gpu_w.buffer.data(), 1e-5f, gpu_out.mat);
    // The residual: one rounding; the norm of the rounded residual: two.
    EXPECT_CLOSE(download_tensor(*gpu_, gpu_r.mat), download_tensor(*cpu_, cpu_r.mat), tol(1));
    EXPECT_CLOSE(download_tensor(*gpu_, gpu_out.mat), download_tensor(*cpu_, cpu_out.mat), tol(2));
  }
}

TEST_P(GpuOps, CopyAddZeroStrided) {
  const int64_t rows = 29, cols = 301;
  const std::vector<float> a = values(rows * cols, 30), b = values(rows * cols, 31);
  // copy: strided source column slice into a strided destination
  Tensor cpu_src = upload_tensor(*cpu_, a, rows, cols, DType::kF32);
  Tensor gpu_src = upload_tensor(*gpu_, a, rows, cols, dtype(), cols + 40);
  Tensor cpu_dst = upload_tensor(*cpu_, b, rows, cols, DType::kF32);
  Tensor gpu_dst = upload_tensor(*gpu_, b, rows, cols, dtype(), cols + 9);
  cpu_->copy(cpu_src.mat.col_slice(3, 200), cpu_dst.mat.col_slice(50, 200));
  gpu_->copy(gpu_src.mat.col_slice(3, 200), gpu_dst.mat.col_slice(50, 200));
  EXPECT_EQ(download_tensor(*gpu_, gpu_dst.mat), download_tensor(*cpu_, cpu_dst.mat));
  EXPECT_TRUE(padding_intact(*gpu_, gpu_dst.mat));
  // add
  cpu_->add(cpu_dst.mat, cpu_src.mat);
  gpu_->add(gpu_dst.mat, gpu_src.mat);
  EXPECT_CLOSE(download_tensor(*gpu_, gpu_dst.mat), download_tensor(*cpu_, cpu_dst.mat), tol(1));
  EXPECT_TRUE(padding_intact(*gpu_, gpu_dst.mat));
  // zero of a column slice
  cpu_->zero(cpu_dst.mat.col_slice(7, 100));
  gpu_->zero(gpu_dst.mat.col_slice(7, 100));
  EXPECT_CLOSE(download_tensor(*gpu_, gpu_dst.mat), download_tensor(*cpu_, cpu_dst.mat), tol(1));
  EXPECT_TRUE(padding_intact(*gpu_, gpu_dst.mat));
}

TEST_P(GpuOps, CopyConvertsBetweenTypes) {
  // float32 logits ↔ bf16 activations: the GPU converts with round-to-nearest-even.
  const int64_t rows = 5, cols = 1000;
  const std::vector<float> a = random_values(rows * cols, 35, 4.0f);
  Tensor src = upload_tensor(*gpu_, a, rows, cols, DType::kF32);
  Tensor dst = upload_tensor(*gpu_, std::vector<float>(rows * cols), rows, cols, DType::kBF16);
  gpu_->copy(src.mat, dst.mat);
  EXPECT_EQ(download_tensor(*gpu_, dst.mat), representable(a, DType::kBF16));
  Tensor back = upload_tensor(*gpu_, std::vector<float>(rows * cols), rows, cols, DType::kF32);
  gpu_->copy(dst.mat, back.mat);
  EXPECT_EQ(download_tensor(*gpu_, back.mat), representable(a, DType::kBF16));
}

TEST_P(GpuOps, RopeHalfSplitAndInterleaved) {
  RopeParams params;
  params.rot_dim = 64;
  params.theta = 10000.0;
  params.scaling = RopeScaling::kYarn;
  params.factor = 4.0;
  params.original_max_position = 128;
  params.mscale = 1.0;
  params.mscale_all_dim = 1.0;
  const int64_t positions = 512, half = params.rot_dim / 2;
  std::vector<float> cos(positions * half), sin(positions * half);
  rope_tables(params, positions, cos.data(), sin.data());
  DeviceBuffer cpu_cos = upload_raw(*cpu_, cos), cpu_sin = upload_raw(*cpu_, sin);
  DeviceBuffer gpu_cos = upload_raw(*gpu_, cos), gpu_sin = upload_raw(*gpu_, sin);
  const RopeTables cpu_tables{cpu_cos.as<float>(), cpu_sin.as<float>(), positions, 64};
  const RopeTables gpu_tables{gpu_cos.as<float>(), gpu_sin.as<float>(), positions, 64};

  const int64_t tokens = 23, heads = 6, nope = 32, head_stride = nope + 64;
  std::vector<int32_t> pos(tokens);
  std::mt19937 rng(40);
  for (int32_t& p : pos) p = static_cast<int32_t>(rng() % positions);
  DeviceBuffer cpu_pos = upload_raw(*cpu_, pos), gpu_pos = upload_raw(*gpu_, pos);
  for (RopeStyle style : {RopeStyle::kHalfSplit, RopeStyle::kInterleaved}) {
    // MLA's query shape: per head [nope | rope], rotate the rope part of every head.
    const std::vector<float> q = values(tokens * heads * head_stride, 41);
    Tensor cpu_q = upload_tensor(*cpu_, q, tokens, heads * head_stride, DType::kF32);
    Tensor gpu_q =
        upload_tensor(*gpu_, q, tokens, heads * head_stride, dtype(), heads * head_stride + 5);
    const Mat cpu_view = cpu_q.mat.col_slice(nope, heads * head_stride - nope);
    const Mat gpu_view = gpu_q.mat.col_slice(nope, heads * head_stride - nope);
    cpu_->rope(cpu_view, heads, head_stride, 64, cpu_pos.as<int32_t>(), cpu_tables, style);
    gpu_->rope(gpu_view, heads, head_stride, 64, gpu_pos.as<int32_t>(), gpu_tables, style);
    EXPECT_CLOSE(download_tensor(*gpu_, gpu_q.mat), download_tensor(*cpu_, cpu_q.mat), tol(1))
        << (style == RopeStyle::kHalfSplit ? "half-split" : "interleaved");
    EXPECT_TRUE(padding_intact(*gpu_, gpu_q.mat));
  }
}

TEST_P(GpuOps, SwiGlu) {
  const int64_t rows = 19, inter = 1408;
  std::vector<float> gate_up = values(rows * 2 * inter, 50, 3.0f);
  gate_up[0] = -100.0f;  // silu's large-negative limit
  gate_up[1] = 90.0f;
  gate_up = representable(gate_up, dtype());
  Tensor cpu_in = upload_tensor(*cpu_, gate_up, rows, 2 * inter, DType::kF32);
  Tensor gpu_in = upload_tensor(*gpu_, gate_up, rows, 2 * inter, dtype());
  Tensor cpu_out = upload_tensor(*cpu_, std::vector<float>(rows * inter), rows, inter, DType::kF32);
  Tensor gpu_out = upload_tensor(*gpu_, std::vector<float>(rows * inter), rows, inter, dtype());
  cpu_->swiglu(cpu_in.mat, cpu_out.mat);
  gpu_->swiglu(gpu_in.mat, gpu_out.mat);
  EXPECT_CLOSE(download_tensor(*gpu_, gpu_out.mat), download_tensor(*cpu_, cpu_out.mat), tol(1));
}

struct MatmulCase {
  int64_t m, k, n;
  bool w_transposed, accumulate, strided;
};

TEST_P(GpuOps, MatmulTransposedUntransposedStridedAccumulate) {
  const std::vector<MatmulCase> cases = {
      {1, 512, 384, true, false, false},  {37, 1024, 257, true, false, true},
      {129, 96, 1000, true, true, false}, {16, 64, 512, false, false, true},
      {5, 300, 77, false, true, true},    {64, 7168, 128, true, false, false},
  };
  uint32_t seed = 60;
  for (const MatmulCase& c : cases) {
    SCOPED_TRACE(testing::Message()
                 << "m " << c.m << " k " << c.k << " n " << c.n
                 << (c.w_transposed ? " w[n,k]" : " w[k,n]") << (c.accumulate ? " accumulate" : "")
                 << (c.strided ? " strided" : ""));
    const int64_t w_rows = c.w_transposed ? c.n : c.k, w_cols = c.w_transposed ? c.k : c.n;
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.k));
    const std::vector<float> x = values(c.m * c.k, seed++),
                             w = values(w_rows * w_cols, seed++, scale);
    const std::vector<float> y0 = values(c.m * c.n, seed++);
    const int64_t pad = c.strided ? 13 : 0;
    // Strided: x and y are column slices of wider buffers, as the MLA per-head products use.
    Tensor cpu_x = upload_tensor(*cpu_, x, c.m, c.k, DType::kF32);
    Tensor gpu_x = upload_tensor(*gpu_, x, c.m, c.k, dtype(), c.k + pad);
    Tensor cpu_w = upload_tensor(*cpu_, w, w_rows, w_cols, DType::kF32);
    Tensor gpu_w = upload_tensor(*gpu_, w, w_rows, w_cols, dtype());
    Tensor cpu_y = upload_tensor(*cpu_, y0, c.m, c.n, DType::kF32);
    Tensor gpu_y = upload_tensor(*gpu_, y0, c.m, c.n, dtype(), c.n + pad);
    cpu_->matmul(cpu_x.mat, cpu_w.mat, cpu_y.mat, c.w_transposed, c.accumulate);
    gpu_->matmul(gpu_x.mat, gpu_w.mat, gpu_y.mat, c.w_transposed, c.accumulate);
    EXPECT_CLOSE(download_tensor(*gpu_, gpu_y.mat), download_tensor(*cpu_, cpu_y.mat),
                 tol(c.accumulate ? 2 : 1));
    EXPECT_TRUE(padding_intact(*gpu_, gpu_y.mat));
  }
}

TEST_P(GpuOps, FewRowProductsDecodeShapes) {
  // 1 … 8 rows of x: bf16 takes the gemv kernel (gemv.cu), float32 cuBLAS; the same contract.
  struct Case {
    int64_t m, k, n;
    bool accumulate, strided, f32_out;
  };
  const std::vector<Case> cases = {
      {1, 4096, 4099, false, false, false}, {2, 11008, 512, true, false, false},
      {3, 520, 1000, false, true, false},   {4, 4096, 777, true, true, false},
      {5, 128, 64, false, false, true},     {6, 1024, 300, false, true, false},
      {7, 2048, 96, true, false, false},    {8, 4096, 1025, false, true, true},
      {1, 4096, 32000, false, false, true},
  };
  uint32_t seed = 90;
  const int64_t gemv_before = dtype() == DType::kBF16 ? cuda_path_counters(*gpu_).gemv : 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "m " << c.m << " k " << c.k << " n " << c.n
                                    << (c.accumulate ? " accumulate" : "")
                                    << (c.strided ? " strided" : "") << (c.f32_out ? " f32" : ""));
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.k));
    const std::vector<float> x = values(c.m * c.k, seed++), w = values(c.n * c.k, seed++, scale);
    const std::vector<float> y0 = values(c.m * c.n, seed++);
    const int64_t pad = c.strided ? 8 : 0;  // keeps rows 16-byte aligned
    const DType y_type = c.f32_out ? DType::kF32 : dtype();
    Tensor cpu_x = upload_tensor(*cpu_, x, c.m, c.k, DType::kF32);
    Tensor gpu_x = upload_tensor(*gpu_, x, c.m, c.k, dtype(), c.k + pad);
    Tensor cpu_w = upload_tensor(*cpu_, w, c.n, c.k, DType::kF32);
    Tensor gpu_w = upload_tensor(*gpu_, w, c.n, c.k, dtype());
    Tensor cpu_y = upload_tensor(*cpu_, y0, c.m, c.n, DType::kF32);
    Tensor gpu_y = upload_tensor(*gpu_, y0, c.m, c.n, y_type, c.n + pad);
    cpu_->matmul(cpu_x.mat, cpu_w.mat, cpu_y.mat, true, c.accumulate);
    gpu_->matmul(gpu_x.mat, gpu_w.mat, gpu_y.mat, true, c.accumulate);
    const double limit =
        c.f32_out ? (c.accumulate ? 2 : 1) * 10 * kF32Tol : tol(c.accumulate ? 2 : 1);
    EXPECT_CLOSE(download_tensor(*gpu_, gpu_y.mat), download_tensor(*cpu_, cpu_y.mat), limit);
    EXPECT_TRUE(padding_intact(*gpu_, gpu_y.mat));
  }
  if (dtype() == DType::kBF16) {
    EXPECT_EQ(cuda_path_counters(*gpu_).gemv, gemv_before + static_cast<int64_t>(cases.size()))
        << "bf16 products of ≤ 8 rows should all take the gemv kernel";
  }
}

// Two products of one input (MLA's q and latent down-projections) in one launch: bf16 decode
// rows take the paired gemv, float32 two cuBLAS products; either way each output is what its own
// matmul gives.
TEST_P(GpuOps, MatmulPairIsTwoProducts) {
  struct Case {
    int64_t m, k, n1, n2;
  };
  uint32_t seed = 400;
  const int64_t pairs_before = cuda_path_counters(*gpu_).gemv_pairs;
  int64_t paired = 0;
  // {3, 256, 37, 21}: one CTA of 8 rows holds rows of both products.
  for (const Case& c : {Case{1, 2048, 3072, 576}, Case{5, 2048, 1536, 576}, Case{8, 128, 64, 80},
                        Case{3, 256, 37, 21}, Case{9, 512, 40, 24}}) {
    SCOPED_TRACE(testing::Message()
                 << "m " << c.m << " k " << c.k << " n " << c.n1 << " + " << c.n2);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.k));
    const std::vector<float> x = values(c.m * c.k, seed++);
    const std::vector<float> w1 = values(c.n1 * c.k, seed++, scale);
    const std::vector<float> w2 = values(c.n2 * c.k, seed++, scale);
    Tensor cpu_x = upload_tensor(*cpu_, x, c.m, c.k, DType::kF32);
    Tensor gpu_x = upload_tensor(*gpu_, x, c.m, c.k, dtype(), c.k + 8);
    Tensor cpu_w1 = upload_tensor(*cpu_, w1, c.n1, c.k, DType::kF32);
    Tensor gpu_w1 = upload_tensor(*gpu_, w1, c.n1, c.k, dtype());
    Tensor cpu_w2 = upload_tensor(*cpu_, w2, c.n2, c.k, DType::kF32);
    Tensor gpu_w2 = upload_tensor(*gpu_, w2, c.n2, c.k, dtype());
    const std::vector<float> zeros1(c.m * c.n1, 0.0f), zeros2(c.m * c.n2, 0.0f);
    Tensor cpu_y1 = upload_tensor(*cpu_, zeros1, c.m, c.n1, DType::kF32);
    Tensor gpu_y1 = upload_tensor(*gpu_, zeros1, c.m, c.n1, dtype(), c.n1 + 8);
    Tensor cpu_y2 = upload_tensor(*cpu_, zeros2, c.m, c.n2, DType::kF32);
    Tensor gpu_y2 = upload_tensor(*gpu_, zeros2, c.m, c.n2, dtype(), c.n2 + 8);
    cpu_->matmul_pair(cpu_x.mat, cpu_w1.mat, cpu_y1.mat, cpu_w2.mat, cpu_y2.mat);
    gpu_->matmul_pair(gpu_x.mat, gpu_w1.mat, gpu_y1.mat, gpu_w2.mat, gpu_y2.mat);
    EXPECT_CLOSE(download_tensor(*gpu_, gpu_y1.mat), download_tensor(*cpu_, cpu_y1.mat), tol(1));
    EXPECT_CLOSE(download_tensor(*gpu_, gpu_y2.mat), download_tensor(*cpu_, cpu_y2.mat), tol(1));
    EXPECT_TRUE(padding_intact(*gpu_, gpu_y1.mat) && padding_intact(*gpu_, gpu_y2.mat));
    if (dtype() == DType::kBF16 && c.m <= 8) ++paired;
  }
  EXPECT_EQ(cuda_path_counters(*gpu_).gemv_pairs - pairs_before, paired);
}

// MLA's per-head products through kv_b (Backend::matmul_heads: one strided-batched cuBLAS call
// on the GPU, or for W_UV with a few bf16 rows the few-row kernel with a grid row per head)
// against the CPU's one matmul per head: both directions of W, V2-Lite's shapes.
TEST_P(GpuOps, MatmulHeadsEqualsOneMatmulPerHead) {
  {
    ScopedEnv on("DSHPC_GEMV_HEADS", "1");  // whatever the environment says
    gpu_ = cuda_backend(dtype());
  }
  ASSERT_NE(gpu_, nullptr);
  const int64_t tokens = 3, heads = 16, nope = 128, vdim = 128, lora = 512, rope = 64;
  const int64_t qk = nope + rope, entry = lora + rope;
  const std::vector<float> q = values(tokens * heads * qk, 80);
  const std::vector<float> kv_b = values(heads * (nope + vdim) * lora, 81, 0.05f);
  const std::vector<float> zeros(tokens * heads * entry, 0.0f);
  Tensor cpu_q = upload_tensor(*cpu_, q, tokens, heads * qk, DType::kF32);
  Tensor gpu_q = upload_tensor(*gpu_, q, tokens, heads * qk, dtype());
  Tensor cpu_w = upload_tensor(*cpu_, kv_b, heads * (nope + vdim), lora, DType::kF32);
  Tensor gpu_w = upload_tensor(*gpu_, kv_b, heads * (nope + vdim), lora, dtype());
  Tensor cpu_y = upload_tensor(*cpu_, zeros, tokens, heads * entry, DType::kF32);
  Tensor gpu_y = upload_tensor(*gpu_, zeros, tokens, heads * entry, dtype());
  const int64_t head_rows = (nope + vdim) * lora;
  // q_nope_h · W_UK_h (w as [k, n]) into columns [h · entry, + lora).
  for (Backend* b : {cpu_.get(), gpu_.get()}) {
    Tensor& qt = b == cpu_.get() ? cpu_q : gpu_q;
    Tensor& wt = b == cpu_.get() ? cpu_w : gpu_w;
    Tensor& yt = b == cpu_.get() ? cpu_y : gpu_y;
    b->matmul_heads(qt.mat.col_slice(0, nope), wt.mat.row_slice(0, nope), yt.mat.col_slice(0, lora),
                    heads, qk, head_rows, entry, /*w_transposed=*/false);
  }
  EXPECT_CLOSE(download_tensor(*gpu_, gpu_y.mat), download_tensor(*cpu_, cpu_y.mat), tol(1));
  // latent_h · W_UV_hᵀ (w as [n, k]) into columns [h · vdim, + vdim).
  const std::vector<float> latent = values(tokens * heads * lora, 82);
  Tensor cpu_l = upload_tensor(*cpu_, latent, tokens, heads * lora, DType::kF32);
  Tensor gpu_l = upload_tensor(*gpu_, latent, tokens, heads * lora, dtype());
  const std::vector<float> zero_values(tokens * heads * vdim, 0.0f);
  Tensor cpu_v = upload_tensor(*cpu_, zero_values, tokens, heads * vdim, DType::kF32);
  Tensor gpu_v = upload_tensor(*gpu_, zero_values, tokens, heads * vdim, dtype());
  const int64_t heads_before = cuda_path_counters(*gpu_).gemv_heads;
  cpu_->matmul_heads(cpu_l.mat.col_slice(0, lora), cpu_w.mat.row_slice(nope, vdim),
                     cpu_v.mat.col_slice(0, vdim), heads, lora, head_rows, vdim);
  gpu_->matmul_heads(gpu_l.mat.col_slice(0, lora), gpu_w.mat.row_slice(nope, vdim),
                     gpu_v.mat.col_slice(0, vdim), heads, lora, head_rows, vdim);
  EXPECT_CLOSE(download_tensor(*gpu_, gpu_v.mat), download_tensor(*cpu_, cpu_v.mat), tol(1));
  // In bf16 three rows take the few-row kernel, one grid row per head (cuBLAS otherwise).
  EXPECT_EQ(cuda_path_counters(*gpu_).gemv_heads - heads_before, dtype() == DType::kBF16 ? 1 : 0);
}

TEST_P(GpuOps, MatmulFloat32OutputOfBf16Inputs) {
  // The logits and router logits: bf16 (or f32) inputs, float32 output.
  const int64_t m = 7, k = 512, n = 1024;
  const std::vector<float> x = values(m * k, 70), w = values(n * k, 71, 0.05f);
  Tensor cpu_x = upload_tensor(*cpu_, x, m, k, DType::kF32);
  Tensor gpu_x = upload_tensor(*gpu_, x, m, k, dtype());
  Tensor cpu_w = upload_tensor(*cpu_, w, n, k, DType::kF32);
  Tensor gpu_w = upload_tensor(*gpu_, w, n, k, dtype());
  Tensor cpu_y = upload_tensor(*cpu_, std::vector<float>(m * n), m, n, DType::kF32);
  Tensor gpu_y = upload_tensor(*gpu_, std::vector<float>(m * n), m, n, DType::kF32);
  cpu_->matmul(cpu_x.mat, cpu_w.mat, cpu_y.mat);
  gpu_->matmul(gpu_x.mat, gpu_w.mat, gpu_y.mat);
  // No rounding to bf16 at all: products of bf16 values are exact in float32, so only the
  // summation order differs (tensor cores vs OpenBLAS): the float32 tolerance, times ten for
  // the tensor cores' accumulation.
  EXPECT_CLOSE(download_tensor(*gpu_, gpu_y.mat), download_tensor(*cpu_, cpu_y.mat),
               dtype() == DType::kF32 ? kF32Tol : 10 * kF32Tol);
}

// Up to kArgmaxSlicedMaxRows rows, a row is cut into 4,096-element slices over several CTAs
// (32,000: eight, the last one partial), the rows' last CTAs reducing them; more rows take one
// CTA each. Three launches in a row check that the per-row counters are left at zero.
TEST_P(GpuOps, ArgmaxTiesNanAndInfinities) {
  const int64_t vocab = 32000;
  for (const int64_t rows : {int64_t{6}, cuda::kArgmaxSlicedMaxRows + 1}) {
    SCOPED_TRACE(testing::Message() << rows << " rows");
    std::vector<float> logits = values(rows * vocab, 80, 3.0f);
    logits[0 * vocab + 500] = 50.0f;  // row 0: a tie, the lower index wins
    logits[0 * vocab + 300] = 50.0f;
    for (int64_t i = 0; i < vocab; ++i) logits[1 * vocab + i] = -INFINITY;  // row 1: all −inf → 0
    for (int64_t i = 0; i < vocab; ++i) {                                   // row 2: all NaN → 0
      logits[2 * vocab + i] = std::numeric_limits<float>::quiet_NaN();
    }
    logits[3 * vocab + 0] = std::numeric_limits<float>::quiet_NaN();  // row 3: NaN never wins
    logits[3 * vocab + vocab - 1] = 100.0f;                           // (in the partial slice)
    logits[4 * vocab + 17] = INFINITY;                                // row 4: +inf wins
    logits[5 * vocab + 30000] = 60.0f;  // row 5: a tie across slices 1 and 7
    logits[5 * vocab + 4100] = 60.0f;
    for (DType logits_dtype : {DType::kF32, dtype()}) {
      const std::vector<float> stored = representable(logits, logits_dtype);
      Tensor cpu_l = upload_tensor(*cpu_, stored, rows, vocab, DType::kF32);
      Tensor gpu_l = upload_tensor(*gpu_, stored, rows, vocab, logits_dtype);
      DeviceBuffer cpu_ids = cpu_->allocate(rows * sizeof(int32_t));
      DeviceBuffer gpu_ids = gpu_->allocate(rows * sizeof(int32_t));
      cpu_->argmax(cpu_l.mat, cpu_ids.as<int32_t>());
      const auto expected = download_raw<int32_t>(*cpu_, cpu_ids.data(), rows);
      EXPECT_EQ(expected[0], 300);
      EXPECT_EQ(expected[1], 0);
      EXPECT_EQ(expected[2], 0);
      EXPECT_EQ(expected[3], vocab - 1);
      EXPECT_EQ(expected[4], 17);
      EXPECT_EQ(expected[5], 4100);
      const int64_t sliced_before = cuda_path_counters(*gpu_).argmax_sliced;
      for (int launch = 0; launch < 3; ++launch) {
        gpu_->upload(gpu_ids.data(), std::vector<int32_t>(rows, -1).data(), rows * 4);
        gpu_->argmax(gpu_l.mat, gpu_ids.as<int32_t>());
        EXPECT_EQ(download_raw<int32_t>(*gpu_, gpu_ids.data(), rows), expected)
            << "launch " << launch;
      }
      EXPECT_EQ(cuda_path_counters(*gpu_).argmax_sliced - sliced_before,
                rows <= cuda::kArgmaxSlicedMaxRows ? 3 : 0);
    }
  }
}

TEST_P(GpuOps, StepUploadRoundTrip) {
  std::vector<int32_t> tokens = {5, 6, 7, 8}, positions = {0, 1, 2, 9};
  std::vector<int64_t> slots = {32, 33, 34, 9};
  std::vector<int32_t> table0 = {2, 7}, table1 = {0};
  std::vector<PagedSequence> seqs = {{0, 3, 3, nullptr}, {3, 1, 10, nullptr}};
  const int32_t* tables[] = {table0.data(), table1.data()};
  const int32_t lengths[] = {2, 1};
  const StepHostData host{tokens.data(), positions.data(), slots.data(), 4,
                          seqs.data(),   tables,           lengths,      2};
  const StepTensors step = gpu_->upload_step(host);
  EXPECT_EQ(download_raw<int32_t>(*gpu_, step.token_ids, 4), tokens);
  EXPECT_EQ(download_raw<int32_t>(*gpu_, step.positions, 4), positions);
  EXPECT_EQ(download_raw<int64_t>(*gpu_, step.slots, 4), slots);
  const auto device_seqs = download_raw<PagedSequence>(*gpu_, step.sequences, 2);
  EXPECT_EQ(device_seqs[1].query_begin, 3);
  EXPECT_EQ(device_seqs[1].context_len, 10);
  EXPECT_EQ(download_raw<int32_t>(*gpu_, device_seqs[0].block_table, 2), table0);
  EXPECT_EQ(download_raw<int32_t>(*gpu_, device_seqs[1].block_table, 1), table1);
}

INSTANTIATE_TEST_SUITE_P(Modes, GpuOps, ::testing::Values(DType::kF32, DType::kBF16),
                         dtype_param_name);

}  // namespace
}  // namespace dshpc::gpu_test
