// The CPU backend: float32 everywhere, OpenBLAS for matrix products, the reference kernels of
// this folder for the rest. It is the numerical reference the CUDA backend is tested against.
#include <cblas.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "kernels/attention.h"
#include "kernels/backend.h"
#include "kernels/embedding.h"
#include "kernels/moe_routing.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/sampling.h"
#include "kernels/swiglu.h"

namespace dshpc {
namespace {

float* f32(const Mat& m) {
  DSHPC_CHECK(m.dtype == DType::kF32) << "CPU backend holds float32, got " << dtype_name(m.dtype);
  return static_cast<float*>(m.data);
}

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  DType weight_dtype() const override { return DType::kF32; }
  DType activation_dtype() const override { return DType::kF32; }

  DeviceBuffer allocate(size_t bytes) override {
    DeviceBuffer buffer = try_allocate(bytes);
    DSHPC_CHECK(bytes == 0 || buffer.data() != nullptr)
        << "host allocation of " << bytes << " bytes failed";
    return buffer;
  }
  DeviceBuffer try_allocate(size_t bytes) override {
    // 64-byte alignment for vector loads; zero-filled so that fresh KV blocks read as zeros.
    // Sizes whose rounding would overflow fail like any allocation the host cannot satisfy.
    if (bytes > SIZE_MAX - 64) return DeviceBuffer();
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = rounded == 0 ? nullptr : std::aligned_alloc(64, rounded);
    if (p == nullptr) return DeviceBuffer();
    std::memset(p, 0, rounded);
    return DeviceBuffer(this, p, bytes);
  }
  void release(void* data, size_t) override { std::free(data); }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void upload_weights(void* dst, const float* src, size_t count) override {
    if (count > 0) std::memcpy(dst, src, count * sizeof(float));
  }
  void download_f32(float* dst, const void* src, size_t count) override {
    if (count > 0) std::memcpy(dst, src, count * sizeof(float));
  }
  void synchronize() override {}

  StepTensors upload_step(const StepHostData& host) override {
    // Host memory is device memory here: keep pointers, but own a copy of the sequence table so
    // block_table pointers stay valid for the step.
    sequences_.assign(host.sequences, host.sequences + host.num_sequences);
    for (int64_t s = 0; s < host.num_sequences; ++s) {
      sequences_[s].block_table = host.block_tables[s];
    }
    StepTensors step;
    step.token_ids = host.token_ids;
    step.positions = host.positions;
    step.slots = host.slots;
    step.sequences = sequences_.data();
    step.num_tokens = host.num_tokens;
    step.num_sequences = host.num_sequences;
    return step;
  }

  const SamplingRow* upload_sampling(const SamplingRow* rows, int64_t count) override {
    check_sampling_rows(rows, count);
    sampling_rows_.assign(rows, rows + count);
    return sampling_rows_.data();
  }

  void embedding(const Mat& table, int64_t vocab_begin, const int32_t* ids, Mat out) override {
    DSHPC_CHECK(out.contiguous() && table.contiguous() && out.cols == table.cols);
    embedding_cpu(f32(table), vocab_begin, table.rows, table.cols, ids, out.rows, f32(out));
  }

  void matmul(const Mat& x, const Mat& w, Mat y, bool w_transposed, bool accumulate) override {
    const int64_t m = x.rows, k = x.cols;
    const int64_t n = w_transposed ? w.rows : w.cols;
    DSHPC_CHECK_EQ(w_transposed ? w.cols : w.rows, k) << "matmul inner dimension";
    DSHPC_CHECK(y.rows == m && y.cols == n)
        << "matmul output " << y.rows << "x" << y.cols << ", expected " << m << "x" << n;
    if (m == 0 || n == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, w_transposed ? CblasTrans : CblasNoTrans,
                static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f, f32(x),
                static_cast<int>(x.stride), f32(w), static_cast<int>(w.stride),
                accumulate ? 1.0f : 0.0f, f32(y), static_cast<int>(y.stride));
  }

  void rmsnorm(const Mat& x, const void* weight, float eps, Mat out) override {
    DSHPC_CHECK(x.rows == out.rows && x.cols == out.cols);
    rmsnorm_cpu(f32(x), x.stride, static_cast<const float*>(weight), f32(out), out.stride, x.rows,
                x.cols, eps);
  }

  void add_rmsnorm(Mat residual, const Mat& delta, const void* weight, float eps,
                   Mat out) override {
    DSHPC_CHECK(residual.contiguous() && delta.contiguous() && out.contiguous());
    DSHPC_CHECK(residual.rows == delta.rows && residual.cols == delta.cols);
    add_rmsnorm_cpu(f32(residual), f32(delta), static_cast<const float*>(weight), f32(out),
                    residual.rows, residual.cols, eps);
  }

  void copy(const Mat& src, Mat dst) override {
    DSHPC_CHECK(src.rows == dst.rows && src.cols == dst.cols) << "copy shape mismatch";
    const float* s = f32(src);
    float* d = f32(dst);
    for (int64_t r = 0; r < src.rows; ++r) {
      std::memmove(d + r * dst.stride, s + r * src.stride, src.cols * sizeof(float));
    }
  }

  void add(Mat a, const Mat& b) override {
    DSHPC_CHECK(a.rows == b.rows && a.cols == b.cols) << "add shape mismatch";
    float* pa = f32(a);
    const float* pb = f32(b);
    for (int64_t r = 0; r < a.rows; ++r) {
      for (int64_t c = 0; c < a.cols; ++c) pa[r * a.stride + c] += pb[r * b.stride + c];
    }
  }

  void zero(Mat m) override {
    float* p = f32(m);
    for (int64_t r = 0; r < m.rows; ++r) std::memset(p + r * m.stride, 0, m.cols * sizeof(float));
  }

  void rope(Mat x, int64_t heads, int64_t head_stride, int64_t rot_dim, const int32_t* positions,
            const RopeTables& tables, RopeStyle style) override {
    DSHPC_CHECK_EQ(rot_dim, tables.rot_dim) << "rope table width";
    rope_apply_cpu(f32(x), x.rows, heads, x.stride, head_stride, rot_dim, positions, tables.cos,
                   tables.sin, style);
  }

  void swiglu(const Mat& gate_up, Mat out) override {
    DSHPC_CHECK(gate_up.contiguous() && out.contiguous() && gate_up.cols == 2 * out.cols);
    swiglu_cpu(f32(gate_up), f32(out), out.rows, out.cols);
  }

  void kv_cache_write(const Mat& k, const Mat* v, const int64_t* slots,
                      const PagedKvView& cache) override {
    kv_cache_write_cpu(f32(k), k.stride, v ? f32(*v) : nullptr, v ? v->stride : 0, k.rows, slots,
                       cache);
  }

  void paged_attention(const Mat& q, Mat out, const StepTensors& step, int64_t q_heads,
                       const PagedKvView& cache, float scale) override {
    DSHPC_CHECK(q.contiguous() && out.contiguous());
    DSHPC_CHECK_EQ(q.cols, q_heads * cache.head_dim) << "attention query width";
    DSHPC_CHECK_EQ(out.cols, q_heads * cache.v_dim) << "attention output width";
    paged_attention_cpu(f32(q), f32(out), step.sequences, step.num_sequences, q_heads, cache,
                        scale);
  }

  void moe_route(const Mat& router_logits, const float* bias, const MoeRoutingParams& params,
                 int32_t* expert_ids, float* weights) override {
    DSHPC_CHECK(router_logits.contiguous() && router_logits.cols == params.num_experts);
    moe_route_cpu(f32(router_logits), bias, router_logits.rows, params, expert_ids, weights);
  }

  void moe_experts(const Mat& x, const int32_t* expert_ids, const float* weights, int64_t top_k,
                   const ExpertWeights* local_experts, int64_t expert_begin, int64_t num_local,
                   Mat out) override {
    DSHPC_CHECK(x.contiguous() && out.contiguous() && x.rows == out.rows);
    const int64_t tokens = x.rows, hidden = x.cols;
    // Group the (token, slot) pairs by local expert, then run each expert once on its tokens.
    std::vector<std::vector<std::pair<int64_t, float>>> routed(num_local);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < top_k; ++j) {
        int64_t e = expert_ids[t * top_k + j] - expert_begin;
        if (e >= 0 && e < num_local) routed[e].push_back({t, weights[t * top_k + j]});
      }
    }
    for (int64_t e = 0; e < num_local; ++e) {
      const auto& list = routed[e];
      if (list.empty()) continue;
      const int64_t n = static_cast<int64_t>(list.size());
      const int64_t inter = local_experts[e].down.cols;
      gathered_.resize(n * hidden);
      gate_up_.resize(n * 2 * inter);
      act_.resize(n * inter);
      expert_out_.resize(n * hidden);
      for (int64_t i = 0; i < n; ++i) {
        std::memcpy(&gathered_[i * hidden], f32(x) + list[i].first * x.stride,
                    hidden * sizeof(float));
      }
      matmul(Mat::of(gathered_.data(), DType::kF32, n, hidden), local_experts[e].gate_up,
             Mat::of(gate_up_.data(), DType::kF32, n, 2 * inter), true, false);
      swiglu_cpu(gate_up_.data(), act_.data(), n, inter);
      matmul(Mat::of(act_.data(), DType::kF32, n, inter), local_experts[e].down,
             Mat::of(expert_out_.data(), DType::kF32, n, hidden), true, false);
      float* o = f32(out);
      for (int64_t i = 0; i < n; ++i) {
        float w = list[i].second;
        float* row = o + list[i].first * out.stride;
        const float* src = &expert_out_[i * hidden];
        for (int64_t c = 0; c < hidden; ++c) row[c] += w * src[c];
      }
    }
  }

  void argmax(const Mat& logits, int32_t* ids) override {
    DSHPC_CHECK(logits.contiguous());
    argmax_rows_cpu(f32(logits), logits.rows, logits.cols, ids);
  }

  void sample(const Mat& logits, const SamplingRow* rows, int32_t* ids) override {
    sample_rows_cpu(f32(logits), logits.rows, logits.cols, logits.stride, rows, ids);
  }

 private:
  std::vector<PagedSequence> sequences_;
  std::vector<SamplingRow> sampling_rows_;
  std::vector<float> gathered_, gate_up_, act_, expert_out_;  // MoE scratch, reused across steps
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace dshpc
