// The CUDA backend: the Backend interface on one GPU (CPU reference: kernels/cpu_backend.cpp).
//
// - One non-blocking stream per backend; every op, copy and (through CudaBackendHandles) every
//   NCCL collective is queued on it, so stream order is the only synchronisation the step loop
//   needs. The host waits only in download / download_f32 / synchronize and for the MoE routing
//   counts, always by polling with a timeout (stream_wait.h), never blindly.
// - One exception, inside a MoE layer: the shared experts may run on a second, lower-priority
//   stream beside the router (start_shared_side), forked from and joined back into the first by
//   events, so that a captured step holds them as a parallel branch.
// - Memory from a caching pool (memory_pool.h): no cudaMalloc once reserve_step has sized the
//   step buffers (or the largest step has run). Fresh buffers are zero-filled, as the CPU
//   backend's are.
// - Element types: weights and activations are both bf16 (serving) or both float32 (parity).
//   Matrix products accumulate in float32; kernels compute in float32 and round once on store.
//   Logits and router logits may be float32 outputs of bf16 products (Mat::dtype says which).
// - The KV cache (PagedKvView) holds activation_dtype() elements; its float* members are storage.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/parallel_for.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/host_staging.h"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/memory_pool.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/stream_wait.h"
#include "kernels/cuda_backend.h"

namespace dshpc {
namespace {

using cuda::AsyncWatch;

constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // cuBLAS's recommendation for Hopper
constexpr size_t kWeightChunk = size_t{1} << 24;            // elements converted per upload
// Steps of up to this many tokens run a MoE layer's shared experts beside its router (decode),
// unless DSHPC_MOE_SHARED_SIDE says otherwise: "0" never, a number N up to N tokens.
constexpr int64_t kMoeSharedSideMaxTokens = 256;

int64_t moe_shared_side_max_tokens() {
  const char* env = std::getenv("DSHPC_MOE_SHARED_SIDE");
  if (env == nullptr || *env == '\0') return kMoeSharedSideMaxTokens;
  char* end = nullptr;
  const long long tokens = std::strtoll(env, &end, 10);
  DSHPC_CHECK(*end == '\0' && tokens >= 0)
      << "DSHPC_MOE_SHARED_SIDE must be 0 (off) or a number of tokens, not \"" << env << "\"";
  return tokens;
}

// DSHPC_DECODE_UNROLL: unset or empty 0 (the plan decides), else 2 or 4.
int decode_unroll_from_env() {
  const char* env = std::getenv("DSHPC_DECODE_UNROLL");
  if (env == nullptr || *env == '\0') return 0;
  const std::string value(env);
  DSHPC_CHECK(value == "2" || value == "4")
      << "DSHPC_DECODE_UNROLL must be 2 or 4 (key groups a warp in flight), not \"" << value
      << "\"";
  return value == "2" ? 2 : 4;
}

size_t align_up(size_t bytes, size_t alignment) {
  return (bytes + alignment - 1) / alignment * alignment;
}

// The host-sorted MoE path's upload: token_of_row [rows] and row_of_pair [pairs] (int32), then
// at 8 bytes the grouped products' six pointer arrays of `groups` entries (gate_up's weights,
// inputs and outputs, then down's).
size_t moe_index_pointers_offset(int64_t rows, int64_t pairs) {
  return align_up((rows + pairs) * sizeof(int32_t), sizeof(void*));
}
size_t moe_index_bytes(int64_t rows, int64_t pairs, int64_t groups) {
  return moe_index_pointers_offset(rows, pairs) + 6 * groups * sizeof(void*);
}

// A switch for comparisons: on unless the variable is "0".
bool env_enabled(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::string(env) != "0";
}

// Off unless the variable is "1" (switches kept for comparison).
bool env_opted_in(const char* name) {
  const char* env = std::getenv(name);
  return env != nullptr && std::string(env) == "1";
}

bool overlaps(const Mat& a, const Mat& b) {
  if (a.rows == 0 || a.cols == 0 || b.rows == 0 || b.cols == 0) return false;
  const auto span = [](const Mat& m) {
    const char* begin = static_cast<const char*>(m.data);
    const size_t bytes = ((m.rows - 1) * m.stride + m.cols) * dtype_size(m.dtype);
    return std::pair<const char*, const char*>(begin, begin + bytes);
  };
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(b);
  return a0 < b1 && b0 < a1;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, DType dtype)
      : device_(make_current(device)),
        dtype_(dtype),
        watch_(std::make_shared<AsyncWatch>()),
        timeout_s_(cuda::gpu_wait_timeout_s()) {
    DSHPC_CUDA_CHECK(cudaSetDevice(device));
    // The main stream at the highest priority, the shared experts' side stream at the lowest: the
    // router's few CTAs take SMs ahead of the side branch's many (graphs keep the priorities:
    // end_capture instantiates with per-node priority).
    int lowest = 0, highest = 0;
    DSHPC_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lowest, &highest));
    DSHPC_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, highest));
    DSHPC_CUDA_CHECK(cudaStreamCreateWithPriority(&side_stream_, cudaStreamNonBlocking, lowest));
    DSHPC_CUDA_CHECK(cudaEventCreateWithFlags(&side_fork_, cudaEventDisableTiming));
    DSHPC_CUDA_CHECK(cudaEventCreateWithFlags(&side_join_, cudaEventDisableTiming));
    // One cuBLAS handle per stream, each with its own workspace (the two may run at once); the
    // side stream's only once a model with shared experts needs it (ensure_side_cublas).
    cublas_workspace_ = pool_.allocate(kCublasWorkspaceBytes);
    cublas_ = make_cublas(stream_, cublas_workspace_);
    DSHPC_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device));
    clusters_ = cuda::cluster_launch_supported() && cuda::moe_gate_cluster_compiled();
    gate_done_ = allocate(sizeof(unsigned int));
    DSHPC_CUDA_CHECK(cudaMemsetAsync(gate_done_.data(), 0, sizeof(unsigned int), stream_));
    argmax_partial_ = allocate(cuda::kArgmaxPartialBytes);
    argmax_done_ = allocate(cuda::kArgmaxSlicedMaxRows * sizeof(unsigned int));
    DSHPC_CUDA_CHECK(cudaMemsetAsync(argmax_done_.data(), 0,
                                     cuda::kArgmaxSlicedMaxRows * sizeof(unsigned int), stream_));
    name_ = "cuda:" + std::to_string(device) + " " + cuda::device_description(device) + " " +
            (dtype == DType::kBF16 ? "bf16" : "f32");
  }

  ~CudaBackend() override {
    drop_graphs();
    join_side();
    cuda::wait_stream(stream_, watch_.get(), timeout_s_, "the backend's shutdown");
    cublasDestroy(cublas_);
    if (side_cublas_ != nullptr) cublasDestroy(side_cublas_);
    pool_.release(cublas_workspace_);
    if (side_cublas_workspace_ != nullptr) pool_.release(side_cublas_workspace_);
    cudaEventDestroy(side_fork_);
    cudaEventDestroy(side_join_);
    cudaStreamDestroy(side_stream_);
    cudaStreamDestroy(stream_);
    // Then the members: buffers release into the pool, staging frees its pinned memory, and the
    // pool returns every block to the driver. None of that uses the stream.
  }

  std::string name() const override { return name_; }
  DType weight_dtype() const override { return dtype_; }
  DType activation_dtype() const override { return dtype_; }

  // ---- memory

  DeviceBuffer allocate(size_t bytes) override {
    if (bytes == 0) return DeviceBuffer(this, nullptr, 0);
    memory_changed();
    void* block = pool_.allocate(bytes);
    DSHPC_CUDA_CHECK(cudaMemsetAsync(block, 0, bytes, stream_));
    return DeviceBuffer(this, block, bytes);
  }

  DeviceBuffer try_allocate(size_t bytes) override {
    if (bytes == 0) return DeviceBuffer(this, nullptr, 0);
    DSHPC_CHECK(!capturing_) << "try_allocate during a graph capture";
    memory_changed();
    void* block = pool_.try_allocate(bytes);
    if (block == nullptr) return DeviceBuffer();
    DSHPC_CUDA_CHECK(cudaMemsetAsync(block, 0, bytes, stream_));
    return DeviceBuffer(this, block, bytes);
  }

  void release(void* data, size_t) override {
    join_side();  // the pool reuses blocks in the main stream's order
    memory_changed();
    pool_.release(data);
  }

  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    DSHPC_CHECK(!capturing_) << "upload during a graph capture";
    // A copy from pageable memory synchronises the stream first: wait by polling instead.
    wait("upload");
    DSHPC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }

  void download(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    DSHPC_CHECK(!capturing_) << "download during a graph capture";
    wait("the work before a download");
    DSHPC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    wait("a download");
  }

  void upload_weights(void* dst, const float* src, size_t count) override {
    if (dtype_ == DType::kF32) {
      upload(dst, src, count * sizeof(float));
      return;
    }
    // bf16: round to nearest even on the host (common/dtype.h, the same rounding as torch), in
    // chunks so that host memory stays bounded for large tensors; pieces from 64 K values up,
    // so that an expert's few million values are converted on every core.
    std::vector<uint16_t> converted(std::min(count, kWeightChunk));
    for (size_t begin = 0; begin < count; begin += kWeightChunk) {
      const size_t n = std::min(kWeightChunk, count - begin);
      parallel_for(static_cast<int64_t>(n), int64_t{1} << 16, [&](int64_t from, int64_t to) {
        for (int64_t i = from; i < to; ++i) converted[i] = float_to_bf16(src[begin + i]);
      });
      upload(static_cast<uint16_t*>(dst) + begin, converted.data(), n * sizeof(uint16_t));
    }
  }

  void download_f32(float* dst, const void* src, size_t count) override {
    if (dtype_ == DType::kF32) {
      download(dst, src, count * sizeof(float));
      return;
    }
    std::vector<uint16_t> raw(count);
    download(raw.data(), src, count * sizeof(uint16_t));
    for (size_t i = 0; i < count; ++i) dst[i] = bf16_to_float(raw[i]);
  }

  void synchronize() override { wait("synchronize"); }

  int64_t free_memory_bytes() override {
    size_t free_bytes = 0, total_bytes = 0;
    DSHPC_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return static_cast<int64_t>(free_bytes) + pool_.stats().cached_bytes;
  }

  BackendMemory memory_info() override {
    const cuda::PoolStats pool = pool_.stats();
    size_t free_bytes = 0, total_bytes = 0;
    DSHPC_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    BackendMemory m;
    m.device_total_bytes = static_cast<int64_t>(total_bytes);
    m.device_free_bytes = static_cast<int64_t>(free_bytes);
    m.pool_in_use_bytes = pool.in_use_bytes;
    m.pool_cached_bytes = pool.cached_bytes;
    for (const DeviceBuffer* buffer : step_buffers()) {
      m.step_buffers_bytes += static_cast<int64_t>(buffer->bytes());
    }
    for (const TileList& list : tile_lists_) {
      m.step_buffers_bytes += static_cast<int64_t>(list.buffer.bytes());
    }
    return m;
  }

  Status reserve_step(const StepCapacity& c) override {
    // upload_step's blob without the block tables (small; they grow on demand), the sampling
    // rows, and moe_experts' buffers for every pair routed to this rank's experts.
    const size_t element = dtype_size(dtype_);
    const size_t metadata = align_up(c.tokens * sizeof(int32_t), 16) * 2 +
                            align_up(c.tokens * sizeof(int64_t), 16) +
                            align_up(c.sequences * sizeof(PagedSequence), 16);
    // The shared experts' branch (start_shared_side), for the steps that take it; with its own
    // cuBLAS workspace.
    const int64_t side_tokens =
        c.moe_shared_inter > 0 ? std::min(c.tokens, moe_shared_side_max_tokens_) : 0;
    if (side_tokens > 0 && !ensure_side_cublas()) {
      return resource_exhausted("no device memory for the shared experts' cuBLAS workspace (" +
                                std::to_string(kCublasWorkspaceBytes >> 20) + " MiB) on " + name_);
    }
    const struct {
      DeviceBuffer* buffer;
      size_t bytes;
      const char* what;
    } wanted[] = {
        {&step_device_, metadata, "step metadata"},
        {&sampling_device_, c.logits_rows * sizeof(SamplingRow), "sampling rows"},
        {&moe_index_, moe_index_bytes(c.moe_rows, c.moe_rows, c.moe_rows),
         "MoE permutation and grouped-product pointers"},
        {&moe_rows_, c.moe_rows * c.moe_hidden * element, "MoE gathered rows"},
        {&moe_gate_up_, c.moe_rows * 2 * c.moe_inter * element, "MoE gate/up"},
        {&moe_act_, c.moe_rows * c.moe_inter * element, "MoE activations"},
        {&moe_out_, c.moe_rows * c.moe_hidden * element, "MoE expert outputs"},
        {&side_gate_up_, side_tokens * 2 * c.moe_shared_inter * element, "shared-expert gate/up"},
        {&side_act_, side_tokens * c.moe_shared_inter * element, "shared-expert activations"},
        {&side_out_, side_tokens * c.moe_hidden * element, "shared-expert outputs"},
    };
    for (const auto& w : wanted) {
      RETURN_IF_ERROR(try_grow(*w.buffer, w.bytes, std::string(w.what) + " buffer on " + name_));
    }
    return ok_status();
  }

  void release_step_buffers() override {
    join_side();
    for (DeviceBuffer* buffer : step_buffers()) *buffer = DeviceBuffer();
    tile_lists_.clear();
  }

  // ---- step metadata

  StepTensors upload_step(const StepHostData& host) override {
    const int64_t tokens = host.num_tokens, num_seqs = host.num_sequences;
    DSHPC_CHECK(tokens >= 0 && num_seqs >= 0)
        << "upload_step: " << tokens << " tokens, " << num_seqs << " sequences";
    DSHPC_CHECK(!capturing_) << "upload_step during a graph capture";
    int64_t total_blocks = 0;
    bool decode = num_seqs > 0 && num_seqs == tokens;
    int64_t max_context = 0;
    for (int64_t s = 0; s < num_seqs; ++s) {
      const PagedSequence& seq = host.sequences[s];
      decode = decode && seq.query_len == 1;
      max_context = std::max<int64_t>(max_context, seq.context_len);
      DSHPC_CHECK(seq.query_begin >= 0 && seq.query_len >= 0 &&
                  seq.query_begin + seq.query_len <= tokens && seq.query_len <= seq.context_len &&
                  host.block_table_lengths[s] >= 0)
          << "upload_step: sequence " << s << " has query rows [" << seq.query_begin << ", "
          << seq.query_begin + seq.query_len << ") of " << tokens << ", context_len "
          << seq.context_len << ", " << host.block_table_lengths[s] << " blocks";
      total_blocks += host.block_table_lengths[s];
    }
    // One pinned blob, one copy: [token ids | positions | slots | sequences | block tables].
    const size_t ids_at = 0;
    const size_t positions_at = align_up(ids_at + tokens * sizeof(int32_t), 16);
    const size_t slots_at = align_up(positions_at + tokens * sizeof(int32_t), 16);
    const size_t seqs_at = align_up(slots_at + tokens * sizeof(int64_t), 16);
    const size_t blocks_at = align_up(seqs_at + num_seqs * sizeof(PagedSequence), 16);
    const size_t total = align_up(blocks_at + total_blocks * sizeof(int32_t), 16);

    ensure(step_device_, total);
    char* device = static_cast<char*>(step_device_.data());
    char* staging = static_cast<char*>(
        step_staging_.acquire(total, watch_.get(), timeout_s_, "the previous step's upload"));
    if (tokens > 0) {
      std::memcpy(staging + ids_at, host.token_ids, tokens * sizeof(int32_t));
      std::memcpy(staging + positions_at, host.positions, tokens * sizeof(int32_t));
      std::memcpy(staging + slots_at, host.slots, tokens * sizeof(int64_t));
    }
    host_sequences_.assign(host.sequences, host.sequences + num_seqs);
    host_block_table_lengths_.assign(host.block_table_lengths, host.block_table_lengths + num_seqs);
    int64_t block_offset = 0;
    for (int64_t s = 0; s < num_seqs; ++s) {
      const int32_t length = host.block_table_lengths[s];
      auto* table = reinterpret_cast<int32_t*>(device + blocks_at) + block_offset;
      host_sequences_[s].block_table = table;
      if (length > 0) {
        std::memcpy(staging + blocks_at + block_offset * sizeof(int32_t), host.block_tables[s],
                    length * sizeof(int32_t));
      }
      block_offset += length;
    }
    if (num_seqs > 0) {
      std::memcpy(staging + seqs_at, host_sequences_.data(), num_seqs * sizeof(PagedSequence));
    }
    if (total > 0) {
      DSHPC_CUDA_CHECK(cudaMemcpyAsync(device, staging, total, cudaMemcpyHostToDevice, stream_));
    }
    step_staging_.copied(stream_);
    ++step_generation_;

    StepTensors step;
    step.token_ids = tokens > 0 ? reinterpret_cast<const int32_t*>(device + ids_at) : nullptr;
    step.positions = tokens > 0 ? reinterpret_cast<const int32_t*>(device + positions_at) : nullptr;
    step.slots = tokens > 0 ? reinterpret_cast<const int64_t*>(device + slots_at) : nullptr;
    step.sequences =
        num_seqs > 0 ? reinterpret_cast<const PagedSequence*>(device + seqs_at) : nullptr;
    step.num_tokens = tokens;
    step.num_sequences = num_seqs;
    step_sequences_ = step.sequences;
    decode_step_ = decode;
    max_context_ = max_context;
    // The decode launches depend on the batch and, through the key splits of the attention,
    // on the longest context's split caps (decode_attention_plan, mla_decode_attention_plan).
    graph_key_ =
        decode
            ? 1 + (static_cast<uint64_t>(num_seqs) << 16) +
                  (static_cast<uint64_t>(
                       cuda::decode_split_cap(max_context, cuda::kDecodeMinSplitKeys))
                   << 8) +
                  static_cast<uint64_t>(cuda::decode_split_cap(max_context, cuda::kMlaMinSplitKeys))
            : 0;
    return step;
  }

  const SamplingRow* upload_sampling(const SamplingRow* rows, int64_t count) override {
    check_sampling_rows(rows, count);
    if (count <= 0) return nullptr;
    // As upload_step: one pinned staging buffer and one device buffer, both reused across steps.
    const size_t bytes = static_cast<size_t>(count) * sizeof(SamplingRow);
    ensure(sampling_device_, bytes);
    void* staging = sampling_staging_.acquire(bytes, watch_.get(), timeout_s_,
                                              "the previous sampling parameters' upload");
    std::memcpy(staging, rows, bytes);
    DSHPC_CUDA_CHECK(
        cudaMemcpyAsync(sampling_device_.data(), staging, bytes, cudaMemcpyHostToDevice, stream_));
    sampling_staging_.copied(stream_);
    return sampling_device_.as<SamplingRow>();
  }

  // ---- ops

  void embedding(const Mat& table, int64_t vocab_begin, const int32_t* ids, Mat out) override {
    DSHPC_CHECK(out.cols == table.cols && table.contiguous())
        << "embedding: table [" << table.rows << ", " << table.cols << "], output width "
        << out.cols;
    cuda::launch_embedding(table, vocab_begin, ids, out, stream_);
  }

  void matmul(const Mat& x, const Mat& w, Mat y, bool w_transposed, bool accumulate) override {
    const int64_t m = x.rows, k = x.cols;
    const int64_t n = w_transposed ? w.rows : w.cols;
    DSHPC_CHECK_EQ(w_transposed ? w.cols : w.rows, k) << "matmul inner dimension";
    DSHPC_CHECK(y.rows == m && y.cols == n)
        << "matmul output " << y.rows << "x" << y.cols << ", expected " << m << "x" << n;
    if (m == 0 || n == 0) return;
    if (k == 0) {  // an empty sum: y = 0, or y unchanged when accumulating
      if (!accumulate) zero(y);
      return;
    }
    if (cuda::gemv_supported(x, w, y, w_transposed)) {
      cuda::launch_gemv(x, w, y, accumulate, stream_);
      ++counters_.gemv;
      return;
    }
    cuda::gemm(cublas_, x, w, y, w_transposed, accumulate);
  }

  void matmul_pair(const Mat& x, const Mat& w1, Mat y1, const Mat& w2, Mat y2) override {
    const bool shapes = w1.cols == x.cols && w2.cols == x.cols && y1.rows == x.rows &&
                        y2.rows == x.rows && y1.cols == w1.rows && y2.cols == w2.rows;
    if (gemv_pair_enabled_ && shapes && cuda::gemv_pair_supported(x, w1, y1, w2, y2)) {
      cuda::launch_gemv_pair(x, w1, y1, w2, y2, stream_);
      ++counters_.gemv_pairs;
      return;
    }
    Backend::matmul_pair(x, w1, y1, w2, y2);  // two matmuls, with their shape checks
  }

  void mla_prepare(const MlaPrepareArgs& args) override {
    if (mla_prepare_enabled_ && cuda::mla_prepare_supported(args, dtype_)) {
      cuda::launch_mla_prepare(args, dtype_, stream_);
      ++counters_.mla_prepare;
      return;
    }
    Backend::mla_prepare(args);
  }

  void mla_attention(const Mat& q_absorbed, Mat latent, const StepTensors& step, int64_t heads,
                     const PagedKvView& cache, float scale, const Mat& kv_b, int64_t nope,
                     int64_t v_dim, Mat values) override {
    cuda::MlaValueProjection proj;
    proj.w_uv = static_cast<const char*>(kv_b.data) + nope * kv_b.stride * dtype_size(kv_b.dtype);
    proj.row_stride = kv_b.stride;
    proj.head_stride = (nope + v_dim) * kv_b.stride;
    proj.v_dim = v_dim;
    proj.values = values.data;
    proj.values_stride = values.stride;
    const bool shapes = latent.cols == heads * cache.v_dim && values.cols == heads * v_dim &&
                        values.rows == q_absorbed.rows && kv_b.cols == cache.v_dim &&
                        kv_b.rows >= heads * (nope + v_dim) && kv_b.dtype == dtype_ &&
                        values.dtype == dtype_;
    if (mla_values_enabled_ && decode_step_ && shapes && q_absorbed.contiguous() &&
        latent.contiguous() &&
        cuda::mla_decode_attention_supported(q_absorbed, latent, cache, dtype_) &&
        cuda::mla_values_supported(proj, cache, dtype_, step.num_sequences)) {
      check_attention(q_absorbed, latent, step, heads, cache);
      mla_decode(q_absorbed, latent, step, heads, cache, scale, &proj);
      ++counters_.mla_values;
      return;
    }
    Backend::mla_attention(q_absorbed, latent, step, heads, cache, scale, kv_b, nope, v_dim,
                           values);
  }

  void moe_gate(const Mat& x, const Mat& router, Mat logits, const float* bias,
                const MoeRoutingParams& params, int32_t* expert_ids, float* weights,
                const MoeExpertsAfterGate* next) override {
    join_side();
    gate(x, router, logits, bias, params, expert_ids, weights, next);
  }

  void add_rmsnorm_moe_gate(Mat residual, const Mat& delta, const void* norm_weight, float eps,
                            Mat normed, const Mat& router, Mat logits, const float* bias,
                            const MoeRoutingParams& params, int32_t* expert_ids, float* weights,
                            const MoeExpertsAfterGate* next) override {
    join_side();
    // The shared experts beside the router: the norm in its own launch, then the fork.
    if (next != nullptr && next->shared != nullptr &&
        start_shared_side(residual, delta, norm_weight, eps, normed, *next->shared,
                          !moe_shared_after_gate_)) {
      MoeExpertsAfterGate routed = *next;
      routed.shared = nullptr;  // the routed experts' index without the shared experts' rows
      gate(normed, router, logits, bias, params, expert_ids, weights, &routed);
      if (moe_shared_after_gate_) fork_side(normed, *next->shared);
      return;
    }
    const cuda::MoeGateNorm norm{residual, delta, norm_weight, eps, normed};
    if (moe_gate_norm_enabled_ &&
        fused_gate(&norm, normed, router, logits, bias, params, expert_ids, weights, next)) {
      return;
    }
    // add_rmsnorm, then this backend's moe_gate (fused without the norm where it can be).
    Backend::add_rmsnorm_moe_gate(residual, delta, norm_weight, eps, normed, router, logits, bias,
                                  params, expert_ids, weights, next);
  }

  void matmul_heads(const Mat& x, const Mat& w, Mat y, int64_t heads, int64_t x_offset,
                    int64_t w_offset, int64_t y_offset, bool w_transposed) override {
    const int64_t n = w_transposed ? w.rows : w.cols;
    DSHPC_CHECK_EQ(w_transposed ? w.cols : w.rows, x.cols) << "matmul_heads inner dimension";
    DSHPC_CHECK(y.rows == x.rows && y.cols == n)
        << "matmul_heads output " << y.rows << "x" << y.cols << ", expected " << x.rows << "x" << n;
    if (x.cols == 0) {
      Backend::matmul_heads(x, w, y, heads, x_offset, w_offset, y_offset, w_transposed);
      return;
    }
    if (gemv_heads_enabled_ &&
        cuda::gemv_heads_supported(x, w, y, heads, x_offset, w_offset, y_offset, w_transposed)) {
      cuda::launch_gemv_heads(x, w, y, heads, x_offset, w_offset, y_offset, stream_);
      ++counters_.gemv_heads;
      return;
    }
    cuda::gemm_heads(cublas_, x, w, y, heads, x_offset, w_offset, y_offset, w_transposed);
  }

  void rmsnorm(const Mat& x, const void* weight, float eps, Mat out) override {
    DSHPC_CHECK(x.rows == out.rows && x.cols == out.cols) << "rmsnorm shape mismatch";
    cuda::launch_rmsnorm(x, weight, dtype_, eps, out, stream_);
  }

  void add_rmsnorm(Mat residual, const Mat& delta, const void* weight, float eps,
                   Mat out) override {
    DSHPC_CHECK(residual.rows == delta.rows && residual.cols == delta.cols &&
                residual.rows == out.rows && residual.cols == out.cols)
        << "add_rmsnorm shape mismatch";
    cuda::launch_add_rmsnorm(residual, delta, weight, dtype_, eps, out, stream_);
  }

  void copy(const Mat& src, Mat dst) override {
    DSHPC_CHECK(src.rows == dst.rows && src.cols == dst.cols) << "copy shape mismatch";
    if (src.rows == 0 || src.cols == 0) return;
    DSHPC_CHECK(!overlaps(src, dst)) << "copy between overlapping views";
    if (src.dtype == dst.dtype) {
      const size_t element = dtype_size(src.dtype);
      DSHPC_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, dst.stride * element, src.data,
                                         src.stride * element, src.cols * element, src.rows,
                                         cudaMemcpyDeviceToDevice, stream_));
      return;
    }
    cuda::launch_copy(src, dst, stream_);
  }

  void add(Mat a, const Mat& b) override {
    DSHPC_CHECK(a.rows == b.rows && a.cols == b.cols) << "add shape mismatch";
    cuda::launch_add(a, b, stream_);
  }

  void zero(Mat m) override {
    if (m.rows == 0 || m.cols == 0) return;
    // All-zero bits are 0.0 in float32 and bf16 alike.
    const size_t element = dtype_size(m.dtype);
    DSHPC_CUDA_CHECK(
        cudaMemset2DAsync(m.data, m.stride * element, 0, m.cols * element, m.rows, stream_));
  }

  void rope(Mat x, int64_t heads, int64_t head_stride, int64_t rot_dim, const int32_t* positions,
            const RopeTables& tables, RopeStyle style) override {
    DSHPC_CHECK_EQ(rot_dim, tables.rot_dim) << "rope table width";
    DSHPC_CHECK(rot_dim > 0 && rot_dim % 2 == 0 && heads >= 0) << "rope: rot_dim " << rot_dim;
    DSHPC_CHECK(heads == 0 || (heads - 1) * head_stride + rot_dim <= x.cols)
        << "rope: " << heads << " heads of stride " << head_stride << " rotating " << rot_dim
        << " dims exceed the row's " << x.cols << " columns";
    cuda::launch_rope(x, heads, head_stride, rot_dim, positions, tables, style, stream_);
  }

  void swiglu(const Mat& gate_up, Mat out) override {
    DSHPC_CHECK(gate_up.contiguous() && out.contiguous() && gate_up.cols == 2 * out.cols &&
                gate_up.rows == out.rows)
        << "swiglu shapes [" << gate_up.rows << ", " << gate_up.cols << "] → [" << out.rows << ", "
        << out.cols << "]";
    cuda::launch_swiglu(gate_up, out, stream_);
  }

  void kv_cache_write(const Mat& k, const Mat* v, const int64_t* slots,
                      const PagedKvView& cache) override {
    DSHPC_CHECK(k.cols >= cache.kv_heads * cache.head_dim &&
                (v == nullptr || (v->rows == k.rows && v->cols >= cache.kv_heads * cache.v_dim)))
        << "kv_cache_write: rows narrower than the cache entries";
    cuda::launch_kv_cache_write(k, v, slots, cache, dtype_, stream_);
  }

  // The split-key MLA decode kernel for this step (plan, workspace, launch), with the value
  // projection in its last launch when `values` is given.
  void mla_decode(const Mat& q, const Mat& out, const StepTensors& step, int64_t q_heads,
                  const PagedKvView& cache, float scale, const cuda::MlaValueProjection* values) {
    const cuda::DecodeAttentionPlan plan =
        cuda::mla_decode_attention_plan(step.num_sequences, q_heads, max_context_, num_sms_);
    cuda::launch_mla_decode_attention(
        q, out, step.sequences, step.num_sequences, q_heads, cache, dtype_, scale, plan,
        decode_partial(plan, step.num_sequences, q_heads, cache.v_dim), stream_, values);
    ++counters_.decode_attention;
  }

  // paged_attention's contract, checked against the step's host-side sequences.
  void check_attention(const Mat& q, const Mat& out, const StepTensors& step, int64_t q_heads,
                       const PagedKvView& cache) const {
    DSHPC_CHECK(q.contiguous() && out.contiguous());
    DSHPC_CHECK_EQ(q.cols, q_heads * cache.head_dim) << "attention query width";
    DSHPC_CHECK_EQ(out.cols, q_heads * cache.v_dim) << "attention output width";
    DSHPC_CHECK(step.sequences == step_sequences_ &&
                step.num_sequences == static_cast<int64_t>(host_sequences_.size()))
        << "paged_attention needs the StepTensors of the latest upload_step";
    DSHPC_CHECK(cache.block_size > 0) << "block_size " << cache.block_size;
    for (size_t s = 0; s < host_sequences_.size(); ++s) {
      const PagedSequence& seq = host_sequences_[s];
      DSHPC_CHECK(seq.query_len == 0 ||
                  (seq.query_begin + seq.query_len <= q.rows &&
                   static_cast<int64_t>(host_block_table_lengths_[s]) * cache.block_size >=
                       seq.context_len))
          << "sequence " << s << ": query rows end at " << seq.query_begin + seq.query_len << " of "
          << q.rows << ", context_len " << seq.context_len << " needs more than its "
          << host_block_table_lengths_[s] << " blocks of " << cache.block_size;
    }
  }

  void paged_attention(const Mat& q, Mat out, const StepTensors& step, int64_t q_heads,
                       const PagedKvView& cache, float scale) override {
    check_attention(q, out, step, q_heads, cache);
    if (decode_step_ && cuda::mla_decode_attention_supported(q, out, cache, dtype_)) {
      mla_decode(q, out, step, q_heads, cache, scale, nullptr);
      return;
    }
    if (decode_step_ && cuda::decode_attention_supported(cache, dtype_)) {
      cuda::DecodeAttentionPlan plan =
          cuda::decode_attention_plan(step.num_sequences, q_heads, cache.kv_heads, cache.head_dim,
                                      dtype_, max_context_, num_sms_, decode_wide_enabled_);
      if (decode_unroll_ != 0) plan.unroll = decode_unroll_;
      const bool wide = cuda::launch_decode_attention(
          q, out, step.sequences, step.num_sequences, q_heads, cache, dtype_, scale, plan,
          decode_partial(plan, step.num_sequences, q_heads, cache.v_dim), stream_);
      ++counters_.decode_attention;
      if (wide) ++counters_.decode_attention_wide;
      if (wide && plan.unroll == 2) ++counters_.decode_attention_unroll2;
      return;
    }
    const bool prefill_kernel = cuda::prefill_attention_supported(q, cache, dtype_);
    if (decode_step_ && !prefill_kernel) {
      // A decode step's tiles are {s, 0} for every sequence s: a list that depends on the number
      // of sequences only, built once and kept, so that such steps (MLA's latent cache, head
      // sizes the split-key kernel does not take) are captured too.
      const cuda::AttentionShape shape =
          cuda::attention_shape(q_heads, cache.kv_heads, cache.v_dim);
      if (const cuda::AttentionTile* tiles = decode_tiles(step.num_sequences)) {
        cuda::launch_paged_attention(q, out, step.sequences, tiles, step.num_sequences, q_heads,
                                     cache, dtype_, scale, shape, stream_);
        return;
      }
    }
    if (capturing_) {
      // The kernels below upload a tile list from the host: not replayable. The capture is
      // discarded (end_capture returns false) and the step runs eagerly.
      capture_unusable_ = true;
      return;
    }
    if (cuda::mla_prefill_attention_supported(q, out, q_heads, cache, dtype_)) {
      const TileList& tiles = attention_tiles(cuda::mla_prefill_tokens_per_cta(q_heads));
      cuda::launch_mla_prefill_attention(q, out, step.sequences, tiles.device, tiles.count, q_heads,
                                         cache, scale, mla_prefill_split_, stream_);
      ++counters_.mla_prefill_attention;
      return;
    }
    if (prefill_kernel) {
      const TileList& tiles = attention_tiles(cuda::prefill_attention_rows_per_cta());
      cuda::launch_prefill_attention(q, out, step.sequences, tiles.device, tiles.count, q_heads,
                                     cache, scale, stream_);
      ++counters_.prefill_attention;
      return;
    }
    const cuda::AttentionShape shape = cuda::attention_shape(q_heads, cache.kv_heads, cache.v_dim);
    const TileList& tiles = attention_tiles(shape.tokens_per_cta);
    cuda::launch_paged_attention(q, out, step.sequences, tiles.device, tiles.count, q_heads, cache,
                                 dtype_, scale, shape, stream_);
  }

  void moe_route(const Mat& router_logits, const float* bias, const MoeRoutingParams& params,
                 int32_t* expert_ids, float* weights) override {
    gate_index_ = {};  // new ids: an index built by an earlier gate is stale
    DSHPC_CHECK(router_logits.contiguous() && router_logits.cols == params.num_experts)
        << "moe_route: router logits [" << router_logits.rows << ", " << router_logits.cols
        << "] for " << params.num_experts << " experts";
    cuda::launch_moe_route(router_logits, bias, params, expert_ids, weights, stream_);
  }

  void moe_experts(const Mat& x, const int32_t* expert_ids, const float* weights, int64_t top_k,
                   const ExpertWeights* local_experts, int64_t expert_begin, int64_t num_local,
                   Mat out) override;
  bool moe_experts_with_shared(const Mat& x, const int32_t* expert_ids, const float* weights,
                               int64_t top_k, const ExpertWeights* local_experts,
                               int64_t expert_begin, int64_t num_local, const ExpertWeights& shared,
                               Mat out, const ResidualNorm* then) override;
  // moe_experts_with_shared after start_shared_side: the routed experts, their sum started from
  // the side branch's result.
  bool routed_after_side(const Mat& x, const int32_t* expert_ids, const float* weights,
                         int64_t top_k, const ExpertWeights* local_experts, int64_t expert_begin,
                         int64_t num_local, Mat out, const ResidualNorm* then);

  void argmax(const Mat& logits, int32_t* ids) override {
    DSHPC_CHECK(logits.contiguous());
    cuda::launch_argmax(logits, ids, stream_, argmax_partial_.data(),
                        argmax_done_.as<unsigned int>());
    if (cuda::argmax_slices(logits) > 0) ++counters_.argmax_sliced;
  }

  // ---- captured steps

  uint64_t step_graph_key() const override { return graph_key_; }

  bool launch_graph(uint64_t key) override {
    join_side();
    const auto it = graphs_.find(key);
    if (it == graphs_.end()) return false;
    DSHPC_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
    ++counters_.graph_launches;
    return true;
  }

  bool begin_capture() override {
    if (capturing_) return false;
    join_side();
    DSHPC_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    capturing_ = true;
    capture_unusable_ = false;
    capture_generation_ = memory_generation_;
    return true;
  }

  bool end_capture(uint64_t key) override {
    DSHPC_CHECK(capturing_) << "end_capture without begin_capture";
    // A capture ends with every forked stream joined; in an invalidated capture the join fails
    // too, and the capture is run eagerly as any other unusable one.
    if (side_.pending) {
      side_.pending = false;
      if (cudaStreamWaitEvent(stream_, side_join_, 0) != cudaSuccess) {
        cudaGetLastError();
        capture_unusable_ = true;
      }
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    capturing_ = false;
    bool usable = ended == cudaSuccess && graph != nullptr && !capture_unusable_ &&
                  capture_generation_ == memory_generation_;
    if (ended != cudaSuccess) cudaGetLastError();  // an invalidated capture: clear and run eagerly
    cudaGraphExec_t exec = nullptr;
    if (usable) {
      // Per-node priorities: the side branch's kernels keep their stream's lower priority.
      usable = cudaGraphInstantiateWithFlags(
                   &exec, graph, cudaGraphInstantiateFlagUseNodePriority) == cudaSuccess;
      if (!usable) cudaGetLastError();
    }
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (!usable) return false;
    graphs_[key] = exec;
    ++counters_.graph_captures;
    return true;
  }

  void sample(const Mat& logits, const SamplingRow* rows, int32_t* ids) override {
    cuda::launch_sample(logits, rows, ids, stream_);
  }

  // ---- beyond Backend

  CudaBackendHandles handles() { return {device_, stream_, watch_}; }

  CudaPathCounters path_counters() const { return counters_; }

  CudaMemoryStats memory_stats() {
    const cuda::PoolStats pool = pool_.stats();
    size_t free_bytes = 0, total_bytes = 0;
    DSHPC_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return {pool.device_allocations, pool.in_use_bytes, pool.cached_bytes,
            static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
  }

 private:
  struct TileList {
    int tokens_per_cta = 0;
    uint64_t generation = 0;
    int64_t count = 0;
    const cuda::AttentionTile* device = nullptr;
    DeviceBuffer buffer;
  };

  // Every CUDA object of this backend (stream, events, memory) belongs to `device`: it is made
  // current before any member is constructed.
  static int make_current(int device) {
    DSHPC_CUDA_CHECK(cudaSetDevice(device));
    return device;
  }

  // The per-step buffers reserve_step grows and release_step_buffers frees.
  std::array<DeviceBuffer*, 11> step_buffers() {
    return {&step_device_,  &sampling_device_, &decode_partial_, &moe_index_,
            &moe_rows_,     &moe_gate_up_,     &moe_act_,        &moe_out_,
            &side_gate_up_, &side_act_,        &side_out_};
  }

  // Graphs hold raw pointers: any allocation or release may invalidate them.
  void memory_changed() {
    ++memory_generation_;
    if (!graphs_.empty()) drop_graphs();
  }

  void drop_graphs() {
    for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);  // freed once idle
    graphs_.clear();
  }

  void wait(const char* what) {
    DSHPC_CHECK(!capturing_) << "a host wait (" << what << ") during a graph capture";
    join_side();
    cuda::wait_stream(stream_, watch_.get(), timeout_s_, what);
  }

  static cublasHandle_t make_cublas(cudaStream_t stream, void* workspace) {
    cublasHandle_t handle = nullptr;
    DSHPC_CUBLAS_CHECK(cublasCreate(&handle));
    DSHPC_CUBLAS_CHECK(cublasSetStream(handle, stream));
    // float32 products stay float32: CUBLAS_COMPUTE_32F is requested per call and the default
    // math mode never substitutes TF32 for it.
    DSHPC_CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
    // An explicit workspace keeps cuBLAS from allocating on its own (and is what CUDA graph
    // capture requires).
    DSHPC_CUBLAS_CHECK(cublasSetWorkspace(handle, workspace, kCublasWorkspaceBytes));
    return handle;
  }

  // ---- the shared experts beside the router
  //
  // start_shared_side: residual += delta and normed = rmsnorm(residual) on the main stream, then
  // the fork: the shared MLP of normed into side_out_ on the side stream while the main stream
  // goes on with the router. moe_experts_with_shared starts its sum from side_out_ and joins
  // before its combine, the first launch that reads the side's result (or writes normed). That
  // no op in between writes normed or the shared weights is the caller's promise (Backend's
  // moe_gate `next`); the entries that wait on the host, capture, replay, release memory or
  // start another MoE layer join first (join_side).
  // fork false: everything but the fork, which the caller makes with fork_side after the gate
  // (DSHPC_MOE_SHARED_AFTER_GATE=1: the branch beside the routed experts instead).
  bool start_shared_side(Mat residual, const Mat& delta, const void* norm_weight, float eps,
                         Mat normed, const ExpertWeights& shared, bool fork = true);
  void fork_side(const Mat& normed, const ExpertWeights& shared);
  // The side stream's cuBLAS handle and workspace, made on first need; false when the device
  // has no room for the workspace.
  bool ensure_side_cublas() {
    if (side_cublas_ != nullptr) return true;
    side_cublas_workspace_ = pool_.try_allocate(kCublasWorkspaceBytes);
    if (side_cublas_workspace_ == nullptr) return false;
    memory_changed();
    side_cublas_ = make_cublas(side_stream_, side_cublas_workspace_);
    return true;
  }
  void join_side() {
    if (!side_.pending) return;
    DSHPC_CUDA_CHECK(cudaStreamWaitEvent(stream_, side_join_, 0));
    side_.pending = false;
  }
  // Ops issued in its scope go to the side stream and its cuBLAS handle.
  class OnSideStream {
   public:
    explicit OnSideStream(CudaBackend& backend) : backend_(backend) { swap(); }
    ~OnSideStream() { swap(); }
    OnSideStream(const OnSideStream&) = delete;
    OnSideStream& operator=(const OnSideStream&) = delete;

   private:
    void swap() {
      std::swap(backend_.stream_, backend_.side_stream_);
      std::swap(backend_.cublas_, backend_.side_cublas_);
    }
    CudaBackend& backend_;
  };

  // Grows `buffer` to at least `bytes` (by half again, so a slowly growing step reallocates
  // rarely); contents are not kept.
  void ensure(DeviceBuffer& buffer, size_t bytes) {
    if (buffer.bytes() >= bytes) return;
    buffer = allocate(std::max(bytes, buffer.bytes() + buffer.bytes() / 2));
  }

  // The split-key decode kernels' workspace for a plan (nullptr with one split: none needed):
  // seqs · q_heads · splits · (v_dim + 2) floats.
  float* decode_partial(const cuda::DecodeAttentionPlan& plan, int64_t seqs, int64_t q_heads,
                        int64_t v_dim) {
    if (plan.splits <= 1) return nullptr;
    ensure(decode_partial_,
           static_cast<size_t>(seqs * q_heads * plan.splits * (v_dim + 2)) * sizeof(float));
    return decode_partial_.as<float>();
  }

  // Tiles {s, 0} for s < at least `sequences`; nullptr while capturing when the list must grow.
  const cuda::AttentionTile* decode_tiles(int64_t sequences) {
    if (decode_tile_count_ < sequences) {
      if (capturing_) return nullptr;
      const int64_t count = std::max<int64_t>(sequences, 2 * decode_tile_count_);
      std::vector<cuda::AttentionTile> tiles(count);
      for (int64_t s = 0; s < count; ++s) tiles[s] = {static_cast<int32_t>(s), 0};
      DeviceBuffer buffer = allocate(count * sizeof(cuda::AttentionTile));
      // In stream order: the pool may hand out a block that queued kernels still use (its reuse
      // is stream-ordered), so a host-ordered cudaMemcpy could be overwritten by them, or
      // overwrite what they read. Pageable memory is staged before the call returns.
      DSHPC_CUDA_CHECK(cudaMemcpyAsync(buffer.data(), tiles.data(),
                                       count * sizeof(cuda::AttentionTile), cudaMemcpyHostToDevice,
                                       stream_));
      decode_tiles_ = std::move(buffer);
      decode_tile_count_ = count;
    }
    return static_cast<const cuda::AttentionTile*>(decode_tiles_.data());
  }

  // The CTA work list of this step for one tokens_per_cta, built once per step on the host and
  // uploaded; every layer's attention of the step reuses it.
  const TileList& attention_tiles(int tokens_per_cta) {
    for (TileList& list : tile_lists_) {
      if (list.generation == step_generation_ && list.tokens_per_cta == tokens_per_cta) {
        return list;
      }
    }
    // Reuse the oldest entry's buffer (at most one per distinct shape of the step).
    TileList* list = nullptr;
    for (TileList& candidate : tile_lists_) {
      if (candidate.generation != step_generation_) list = &candidate;
    }
    if (list == nullptr) list = &tile_lists_.emplace_back();
    const std::vector<cuda::AttentionTile> tiles =
        cuda::attention_tiles(host_sequences_, tokens_per_cta);
    const size_t bytes = tiles.size() * sizeof(cuda::AttentionTile);
    list->tokens_per_cta = tokens_per_cta;
    list->generation = step_generation_;
    list->count = static_cast<int64_t>(tiles.size());
    if (bytes > 0) {
      ensure(list->buffer, bytes);
      void* staging = tile_staging_.acquire(bytes, watch_.get(), timeout_s_, "a tile upload");
      std::memcpy(staging, tiles.data(), bytes);
      DSHPC_CUDA_CHECK(
          cudaMemcpyAsync(list->buffer.data(), staging, bytes, cudaMemcpyHostToDevice, stream_));
      tile_staging_.copied(stream_);
    }
    list->device = static_cast<const cuda::AttentionTile*>(list->buffer.data());
    return *list;
  }

  int device_;
  DType dtype_;
  std::string name_;
  std::shared_ptr<AsyncWatch> watch_;
  double timeout_s_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudaStream_t side_stream_ = nullptr;
  cublasHandle_t side_cublas_ = nullptr;
  cudaEvent_t side_fork_ = nullptr, side_join_ = nullptr;
  // Declared before every DeviceBuffer member: they release into it when destroyed.
  cuda::DevicePool pool_;
  void* cublas_workspace_ = nullptr;
  void* side_cublas_workspace_ = nullptr;

  cuda::HostStaging step_staging_, tile_staging_, moe_ids_staging_, moe_index_staging_;
  DeviceBuffer step_device_;
  const PagedSequence* step_sequences_ = nullptr;
  std::vector<PagedSequence> host_sequences_;  // block_table: device pointers
  std::vector<int32_t> host_block_table_lengths_;
  uint64_t step_generation_ = 0;
  std::vector<TileList> tile_lists_;
  int num_sms_ = 1;
  bool clusters_ = false;     // the device launches thread block clusters, and we have their code
  bool decode_step_ = false;  // every sequence of the step has one new token
  int64_t max_context_ = 0;
  DeviceBuffer decode_partial_;  // split-key partial results of decode attention
  DeviceBuffer gate_done_;       // moe_gate's CTA counter (zero between launches)
  DeviceBuffer argmax_partial_;  // the sliced argmax's per-slice bests
  DeviceBuffer argmax_done_;     // … and its per-row CTA counters (zero between launches)
  DeviceBuffer decode_tiles_;    // {s, 0} for s < decode_tile_count_ (decode_tiles)
  int64_t decode_tile_count_ = 0;

  // Captured decode steps, by key (step_graph_key and the caller's part).
  uint64_t graph_key_ = 0;
  CudaPathCounters counters_;
  std::unordered_map<uint64_t, cudaGraphExec_t> graphs_;
  bool capturing_ = false;
  bool capture_unusable_ = false;
  uint64_t memory_generation_ = 0, capture_generation_ = 0;
  cuda::HostStaging sampling_staging_;
  DeviceBuffer sampling_device_;

  // MoE scratch, grown to the largest step seen.
  DeviceBuffer moe_index_, moe_rows_, moe_gate_up_, moe_act_, moe_out_;
  // The shared experts' branch (start_shared_side): its products, and which inputs its result
  // side_out_ is of while it has not been joined.
  DeviceBuffer side_gate_up_, side_act_, side_out_;
  struct SideShared {
    bool pending = false;
    const void* x = nullptr;
    const void* gate_up = nullptr;
    const void* down = nullptr;
    int64_t tokens = 0, cols = 0, stride = 0;
  };
  SideShared side_;
  std::vector<int32_t> moe_counts_, moe_cursor_;

  // The small-step MoE path: per layer (keyed by its local expert array and by whether the shared
  // experts ride along, so that a layer's small steps of both kinds keep their tables and the
  // graphs captured with them), a device array of the experts' gate_up pointers followed by their
  // down pointers; nullptr when the layer's experts do not qualify (different sizes, strided or
  // unaligned weights; checked on every call, which costs a few comparisons per layer).
  // `base`, where given, is what the sum starts from (the side branch's shared experts; joined
  // before the combine) instead of out.
  bool moe_small(const Mat& x, const int32_t* expert_ids, const float* weights, int64_t top_k,
                 const ExpertWeights* local_experts, int64_t expert_begin, int64_t num_local,
                 const ExpertWeights* shared, const Mat& out, const ResidualNorm* then = nullptr,
                 const Mat* base = nullptr);
  const void* const* moe_pointer_table(const ExpertWeights* local_experts, int64_t num_local,
                                       int64_t hidden, const ExpertWeights* shared);
  struct MoeTable {
    DeviceBuffer device;
    std::vector<const void*> host;
  };
  std::map<std::pair<const ExpertWeights*, bool>, MoeTable> moe_tables_;
  DeviceBuffer moe_small_index_;
  // moe_small's index arrays in moe_small_index_ (grown to fit) for `extra` shared experts.
  cuda::MoeGateIndex moe_index_layout(int64_t tokens, int64_t top_k, int64_t expert_begin,
                                      int64_t num_local, int64_t extra);
  // moe_gate in one launch, with the add_rmsnorm before it where `norm` is given and, where
  // `next` says which experts follow, their index after it; false (nothing done) where the
  // shapes do not suit.
  bool fused_gate(const cuda::MoeGateNorm* norm, const Mat& x, const Mat& router, Mat logits,
                  const float* bias, const MoeRoutingParams& params, int32_t* expert_ids,
                  float* weights, const MoeExpertsAfterGate* next);
  // moe_gate without the join: fused where it can be, else the router product and the routing.
  void gate(const Mat& x, const Mat& router, Mat logits, const float* bias,
            const MoeRoutingParams& params, int32_t* expert_ids, float* weights,
            const MoeExpertsAfterGate* next) {
    if (fused_gate(nullptr, x, router, logits, bias, params, expert_ids, weights, next)) return;
    Backend::moe_gate(x, router, logits, bias, params, expert_ids, weights, next);
  }
  // The index the last fused gate built (ids == nullptr: none). moe_small uses it instead of
  // launching its own when the ids, the experts and the buffer match, and clears it either way;
  // anything else that writes expert ids clears it too.
  struct GateIndex {
    const int32_t* ids = nullptr;
    int64_t tokens = 0, top_k = 0, expert_begin = 0, num_local = 0, shared_tokens = 0;
    const void* buffer = nullptr;
  };
  GateIndex gate_index_;
  bool moe_small_enabled_ = env_enabled("DSHPC_MOE_SMALL");
  // DSHPC_MOE_FUSE_SHARED=0: the shared experts as a separate MLP before the routed ones.
  bool moe_fuse_shared_enabled_ = env_enabled("DSHPC_MOE_FUSE_SHARED");
  // DSHPC_MOE_MMA=0: the small path's CUDA-core kernels even where the tensor-core ones apply
  // (for comparison).
  bool moe_mma_enabled_ = env_enabled("DSHPC_MOE_MMA");
  // The fused decode launches, each with its op-by-op form for comparison:
  // DSHPC_GEMV_PAIR=0, DSHPC_MLA_PREPARE=0, DSHPC_MOE_GATE=0.
  bool gemv_pair_enabled_ = env_enabled("DSHPC_GEMV_PAIR");
  // DSHPC_GEMV_HEADS=0: matmul_heads through cuBLAS even for a few rows (MLA's W_UV at decode).
  bool gemv_heads_enabled_ = env_enabled("DSHPC_GEMV_HEADS");
  bool mla_prepare_enabled_ = env_enabled("DSHPC_MLA_PREPARE");
  bool moe_gate_enabled_ = env_enabled("DSHPC_MOE_GATE");
  // DSHPC_MOE_GATE_CLUSTER=0: small routers' gate as one CTA routing after the others (a device
  // counter) rather than as one thread block cluster (launch_moe_gate). V2-Lite batch 1, one
  // H200, same build, alternated (session 10): 407.8 and 389.3 tok/s one CTA, 415.4 and 405.8 as
  // a cluster; in the kernel timeline the gate's 19 µs after the norm became 11.7.
  bool moe_gate_cluster_enabled_ = env_enabled("DSHPC_MOE_GATE_CLUSTER");
  // DSHPC_MOE_GATE_NORM=0: the add_rmsnorm before the gate in its own launch;
  // DSHPC_MOE_GATE_INDEX=0: the experts' index in its own launch.
  bool moe_gate_norm_enabled_ = env_enabled("DSHPC_MOE_GATE_NORM");
  bool moe_gate_index_enabled_ = env_enabled("DSHPC_MOE_GATE_INDEX");
  // DSHPC_MOE_COMBINE_NORM=0: the residual add and norm after the experts in their own launch.
  bool moe_combine_norm_enabled_ = env_enabled("DSHPC_MOE_COMBINE_NORM");
  // DSHPC_MOE_GROUPED=0: the host-sorted path's products one cuBLAS call per expert instead of
  // one grouped call per product.
  bool moe_grouped_enabled_ = env_enabled("DSHPC_MOE_GROUPED");
  // DSHPC_MLA_PREFILL_SPLIT=0: the MLA prefill kernel's first form, every score computed by both
  // warps of its row group (attention_mla_prefill.cu). The split form measured 50.1 and 50.6 ms
  // for V2-Lite's 2048-token prefill against 53.6 and 53.7, and 13.9 and 14.4 ms against 14.3
  // and 14.2 at 512 (one H200, same build, session 9).
  bool mla_prefill_split_ = env_enabled("DSHPC_MLA_PREFILL_SPLIT");
  std::vector<int> moe_group_rows_;  // the grouped call's rows per expert with rows
  // DSHPC_MOE_SHARED_SIDE=0: the shared experts after the router, in the routed experts'
  // launches or as an MLP of their own, instead of beside the router (N: up to N tokens).
  int64_t moe_shared_side_max_tokens_ = moe_shared_side_max_tokens();
  // DSHPC_MOE_SHARED_AFTER_GATE=1: the branch forks after the gate, beside the routed experts
  // (for comparison: by default it runs beside the gate). Measured slower: V2-Lite batch 1 398.6
  // and 404.2 tok/s against 412.4 and 410.6, batch 64 4,417.5 against 5,773.0 (one H200, same
  // build, session 10): the lower-priority branch then waits for the routed experts' CTAs.
  bool moe_shared_after_gate_ = env_opted_in("DSHPC_MOE_SHARED_AFTER_GATE");
  // DSHPC_MOE_ROUTED_EARLY=1: the routed experts' first launch after the gate starts early
  // (programmatic dependent launch) even while the branch runs (for comparison; pdl.h's
  // NoEarlyStart says why it does not by default). With the gate as one cluster, measured on
  // V2-Lite: batch 1 413.3 and 416.0 tok/s against 412.4 and 410.6, batch 64 4,212.0 against
  // 5,773.0 (one H200, same build, session 10).
  bool moe_routed_early_ = env_opted_in("DSHPC_MOE_ROUTED_EARLY");
  // DSHPC_DECODE_WIDE=0: the decode attention reads one key per warp row even where a row is
  // narrower than 512 bytes (DecodeAttentionPlan::wide_keys).
  bool decode_wide_enabled_ = env_enabled("DSHPC_DECODE_WIDE");
  // DSHPC_DECODE_UNROLL=2 or 4: the wide form's key groups in flight per warp for every step,
  // instead of the plan's choice by grid size (DecodeAttentionPlan::unroll).
  int decode_unroll_ = decode_unroll_from_env();
  // DSHPC_MLA_VALUES=1: MLA's value projection in the attention's last launch (opt-in: its GPU
  // tests pass, but V2-Lite at batch 1 measured 356.8 tok/s with it against 368.4 without, one
  // H200, same build, session 6).
  bool mla_values_enabled_ = env_opted_in("DSHPC_MLA_VALUES");
};

const void* const* CudaBackend::moe_pointer_table(const ExpertWeights* local_experts,
                                                  int64_t num_local, int64_t hidden,
                                                  const ExpertWeights* shared) {
  // [gate_up of each local expert (then of the shared experts) | down of each, likewise]; the
  // shared experts are one more expert whose inter may differ.
  const int64_t slots = num_local + (shared != nullptr ? 1 : 0);
  auto expert = [&](int64_t e) -> const ExpertWeights& {
    return e < num_local ? local_experts[e] : *shared;
  };
  const int64_t inter = local_experts[0].down.cols;
  // A table is keyed by the address of the layer's expert array (and whether it has the shared
  // experts); it is used only while that array still holds the same weights (another model may
  // reuse the address).
  const std::pair<const ExpertWeights*, bool> key{local_experts, shared != nullptr};
  if (const auto it = moe_tables_.find(key); it != moe_tables_.end()) {
    const std::vector<const void*>& held = it->second.host;
    bool same = static_cast<int64_t>(held.size()) == 2 * slots;
    for (int64_t e = 0; same && e < slots; ++e) {
      same = held[e] == expert(e).gate_up.data && held[slots + e] == expert(e).down.data &&
             (e == num_local || expert(e).down.cols == inter);
    }
    if (same) return static_cast<const void* const*>(it->second.device.data());
    if (capturing_) return nullptr;
    moe_tables_.erase(it);
  }
  if (capturing_) return nullptr;
  std::vector<const void*> pointers(2 * slots);
  for (int64_t e = 0; e < slots; ++e) {
    const ExpertWeights& w = expert(e);
    const int64_t rows = e < num_local ? inter : w.down.cols;
    const bool fits = w.gate_up.dtype == dtype_ && w.down.dtype == dtype_ &&
                      w.gate_up.rows == 2 * rows && w.gate_up.cols == hidden &&
                      w.gate_up.contiguous() && w.down.rows == hidden && w.down.cols == rows &&
                      w.down.contiguous() &&
                      reinterpret_cast<uintptr_t>(w.gate_up.data) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(w.down.data) % 16 == 0;
    if (!fits) return nullptr;
    pointers[e] = w.gate_up.data;
    pointers[slots + e] = w.down.data;
  }
  MoeTable table{allocate(pointers.size() * sizeof(void*)), pointers};
  // In stream order (see decode_tiles): a host-ordered copy into a block the pool just handed
  // back can race with queued kernels that still write it.
  DSHPC_CUDA_CHECK(cudaMemcpyAsync(table.device.data(), table.host.data(),
                                   pointers.size() * sizeof(void*), cudaMemcpyHostToDevice,
                                   stream_));
  const void* const* device = static_cast<const void* const*>(table.device.data());
  moe_tables_.emplace(key, std::move(table));
  return device;
}

cuda::MoeGateIndex CudaBackend::moe_index_layout(int64_t tokens, int64_t top_k,
                                                 int64_t expert_begin, int64_t num_local,
                                                 int64_t extra) {
  // offsets [num_local + 1 + extra] | pair_of_row [rows] | row_of_pair [pairs] | active [slots]
  const int64_t pairs = tokens * top_k, rows = pairs + extra * tokens;
  const int64_t slots = cuda::moe_active_slots(pairs, num_local) + extra;
  ensure(moe_small_index_, (num_local + 1 + extra + rows + pairs + slots) * sizeof(int32_t));
  cuda::MoeGateIndex index;
  index.expert_begin = expert_begin;
  index.num_local = num_local;
  index.shared_tokens = extra * tokens;
  index.offsets = moe_small_index_.as<int32_t>();
  index.pair_of_row = index.offsets + num_local + 1 + extra;
  index.row_of_pair = index.pair_of_row + rows;
  index.active = index.row_of_pair + pairs;
  return index;
}

bool CudaBackend::fused_gate(const cuda::MoeGateNorm* norm, const Mat& x, const Mat& router,
                             Mat logits, const float* bias, const MoeRoutingParams& params,
                             int32_t* expert_ids, float* weights, const MoeExpertsAfterGate* next) {
  gate_index_ = {};
  if (!moe_gate_enabled_ || logits.cols != params.num_experts ||
      !cuda::moe_gate_supported(x, router, logits, params, norm)) {
    return false;
  }
  // The index moe_small would launch next, for the experts the caller names, where moe_small
  // will likely take them (it checks the match, so a wrong guess costs only its own launch).
  const int64_t tokens = x.rows, pairs = tokens * params.top_k;
  const bool plan = next != nullptr && moe_gate_index_enabled_ && moe_small_enabled_ &&
                    next->num_local > 0 && pairs <= cuda::kMoeSmallMaxPairs &&
                    next->num_local <= cuda::kMoeSmallMaxExperts;
  cuda::MoeGateIndex index;
  if (plan) {
    // moe_experts_with_shared's conditions that do not depend on the experts' shapes.
    const bool shared = next->shared != nullptr && moe_fuse_shared_enabled_ && moe_mma_enabled_ &&
                        dtype_ == DType::kBF16 && tokens <= cuda::kMoeSharedFuseMaxTokens;
    index =
        moe_index_layout(tokens, params.top_k, next->expert_begin, next->num_local, shared ? 1 : 0);
  }
  const bool with_index = plan && cuda::moe_gate_supported(x, router, logits, params, norm, &index);
  if (cuda::launch_moe_gate(
          x, router, logits, bias, params, expert_ids, weights, gate_done_.as<unsigned int>(),
          stream_, norm, with_index ? &index : nullptr, clusters_ && moe_gate_cluster_enabled_)) {
    ++counters_.moe_gate_cluster;
  }
  if (with_index) {
    gate_index_ = {expert_ids,
                   tokens,
                   params.top_k,
                   index.expert_begin,
                   index.num_local,
                   index.shared_tokens,
                   moe_small_index_.data()};
  }
  ++counters_.moe_gate;
  if (norm != nullptr) ++counters_.moe_gate_norm;
  return true;
}

bool CudaBackend::moe_small(const Mat& x, const int32_t* expert_ids, const float* weights,
                            int64_t top_k, const ExpertWeights* local_experts, int64_t expert_begin,
                            int64_t num_local, const ExpertWeights* shared, const Mat& out,
                            const ResidualNorm* then, const Mat* base) {
  const int64_t tokens = x.rows, hidden = x.cols, pairs = tokens * top_k;
  const int64_t inter = local_experts[0].down.cols;
  const int64_t shared_inter = shared != nullptr ? shared->down.cols : 0;
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(dtype_));
  if (!moe_small_enabled_ || !cuda::moe_small_supported(pairs, num_local, hidden, inter, dtype_) ||
      x.stride % vec != 0 || reinterpret_cast<uintptr_t>(x.data) % 16 != 0) {
    return false;
  }
  const bool mma = moe_mma_enabled_ && cuda::moe_small_mma_supported(hidden, inter, dtype_);
  // The shared experts ride along on the tensor-core kernels only.
  if (shared != nullptr && (!mma || !cuda::moe_small_mma_supported(hidden, shared_inter, dtype_))) {
    return false;
  }
  const void* const* table = moe_pointer_table(local_experts, num_local, hidden, shared);
  if (table == nullptr) return false;
  const size_t element = dtype_size(dtype_);
  const int64_t extra = shared != nullptr ? 1 : 0;
  const int64_t rows = pairs + extra * tokens;  // routed rows, then one per token for the shared
  const int64_t act_cols = std::max(inter, shared_inter);
  const cuda::MoeGateIndex index = moe_index_layout(tokens, top_k, expert_begin, num_local, extra);
  ensure(moe_act_, rows * act_cols * element);
  ensure(moe_out_, rows * hidden * element);
  int32_t* offsets = index.offsets;
  int32_t* pair_of_row = index.pair_of_row;
  int32_t* row_of_pair = index.row_of_pair;
  int32_t* active = index.active;
  const Mat act = Mat::of(moe_act_.data(), dtype_, rows, act_cols);
  const Mat expert_out = Mat::of(moe_out_.data(), dtype_, rows, hidden);
  // The index the gate built, where it is this step's (used once: cleared either way here; a
  // declined call above leaves it for the call that follows, e.g. moe_experts after
  // moe_experts_with_shared declined).
  const GateIndex pending = std::exchange(gate_index_, GateIndex{});
  const bool indexed = pending.ids == expert_ids && pending.tokens == tokens &&
                       pending.top_k == top_k && pending.expert_begin == expert_begin &&
                       pending.num_local == num_local && pending.shared_tokens == extra * tokens &&
                       pending.buffer == moe_small_index_.data();
  const cuda::MoeSharedExpert shared_expert{static_cast<int32_t>(num_local), shared_inter};
  {
    // With the shared experts running beside the gate, the launches after it start when it ends.
    std::optional<cuda::NoEarlyStart> after_gate;
    if (side_.pending && !moe_routed_early_) after_gate.emplace();
    if (indexed) {
      ++counters_.moe_gate_index;
    } else {
      cuda::launch_moe_index(expert_ids, pairs, expert_begin, num_local, extra * tokens, offsets,
                             pair_of_row, row_of_pair, active, stream_);
    }
    cuda::launch_moe_gate_up_small(x, table, inter, num_local, offsets, active, pair_of_row, top_k,
                                   act, mma, shared != nullptr ? &shared_expert : nullptr, stream_);
  }
  cuda::launch_moe_down_small(act, table + num_local + extra, num_local, offsets, active, inter,
                              pairs, expert_out, mma, shared != nullptr ? &shared_expert : nullptr,
                              stream_);
  // With the shared experts, out = their rows + the weighted routed rows (nothing read from out).
  // With `then`, the residual add and the next layer's norm in the combine's launch.
  const cuda::MoeCombineNorm combine_norm =
      then != nullptr ? cuda::MoeCombineNorm{then->residual, then->weight, then->eps, then->normed}
                      : cuda::MoeCombineNorm{};
  join_side();  // the combine reads the side branch's result and may write what it reads
  if (cuda::launch_moe_combine(expert_out, row_of_pair, weights, top_k,
                               shared != nullptr ? offsets + num_local : nullptr, out, stream_,
                               then != nullptr ? &combine_norm : nullptr, base)) {
    ++counters_.moe_combine_norm;
  }
  ++counters_.moe_small;
  if (mma) ++counters_.moe_mma;
  if (shared != nullptr) ++counters_.moe_shared_fused;
  return true;
}

bool CudaBackend::start_shared_side(Mat residual, const Mat& delta, const void* norm_weight,
                                    float eps, Mat normed, const ExpertWeights& shared, bool fork) {
  const int64_t tokens = normed.rows, hidden = normed.cols, inter = shared.down.cols;
  if (tokens == 0 || tokens > moe_shared_side_max_tokens_ || normed.dtype != dtype_ ||
      shared.gate_up.rows != 2 * inter || shared.gate_up.cols != hidden ||
      shared.down.rows != hidden || inter == 0) {
    return false;
  }
  // The branch's buffers before the fork (reserve_step sizes them; a larger step, or a caller
  // that reserved nothing, grows them here, zero-filled on the main stream).
  if (!ensure_side_cublas()) return false;
  const size_t element = dtype_size(dtype_);
  ensure(side_gate_up_, tokens * 2 * inter * element);
  ensure(side_act_, tokens * inter * element);
  ensure(side_out_, tokens * hidden * element);

  add_rmsnorm(residual, delta, norm_weight, eps, normed);
  if (fork) fork_side(normed, shared);
  return true;
}

void CudaBackend::fork_side(const Mat& normed, const ExpertWeights& shared) {
  const int64_t tokens = normed.rows, hidden = normed.cols, inter = shared.down.cols;
  const Mat gate_up = Mat::of(side_gate_up_.data(), dtype_, tokens, 2 * inter);
  const Mat act = Mat::of(side_act_.data(), dtype_, tokens, inter);
  const Mat out = Mat::of(side_out_.data(), dtype_, tokens, hidden);
  DSHPC_CUDA_CHECK(cudaEventRecord(side_fork_, stream_));
  DSHPC_CUDA_CHECK(cudaStreamWaitEvent(side_stream_, side_fork_, 0));
  {
    OnSideStream side(*this);
    matmul(normed, shared.gate_up, gate_up, true, false);
    swiglu(gate_up, act);
    matmul(act, shared.down, out, true, false);
  }
  DSHPC_CUDA_CHECK(cudaEventRecord(side_join_, side_stream_));
  side_ = {true, normed.data, shared.gate_up.data, shared.down.data, tokens, hidden, normed.stride};
  ++counters_.moe_shared_side;
  if (capturing_) ++counters_.moe_shared_side_captured;
}

bool CudaBackend::moe_experts_with_shared(const Mat& x, const int32_t* expert_ids,
                                          const float* weights, int64_t top_k,
                                          const ExpertWeights* local_experts, int64_t expert_begin,
                                          int64_t num_local, const ExpertWeights& shared, Mat out,
                                          const ResidualNorm* then) {
  if (side_.pending) {
    const bool started = side_.x == x.data && side_.tokens == x.rows && side_.cols == x.cols &&
                         side_.stride == x.stride && side_.gate_up == shared.gate_up.data &&
                         side_.down == shared.down.data;
    if (started) {
      return routed_after_side(x, expert_ids, weights, top_k, local_experts, expert_begin,
                               num_local, out, then);
    }
    join_side();  // the branch computed other inputs: its result goes unused
  }
  // Up to one pass of the tensor-core kernels (16 tokens): beyond, the shared experts' rows take
  // several passes over their weights, which then outlast the routed experts' CTAs. Measured on
  // V2-Lite (one H200, same call): batch 1 316.5 tok/s fused against 297.7 unfused; batch 64
  // 4,673.7 fused (four passes) against 5,463.1 with cuBLAS products for the shared MLP.
  if (!moe_fuse_shared_enabled_ || x.rows == 0 || x.rows > cuda::kMoeSharedFuseMaxTokens ||
      num_local == 0 || top_k == 0) {
    return false;
  }
  DSHPC_CHECK(x.rows == out.rows && x.cols == out.cols)
      << "moe_experts_with_shared: x [" << x.rows << ", " << x.cols << "], out [" << out.rows
      << ", " << out.cols << "]";
  if (!moe_small(x, expert_ids, weights, top_k, local_experts, expert_begin, num_local, &shared,
                 out, moe_combine_norm_enabled_ ? then : nullptr)) {
    return false;
  }
  if (then != nullptr && !moe_combine_norm_enabled_) {
    add_rmsnorm(then->residual, out, then->weight, then->eps, then->normed);
  }
  return true;
}

bool CudaBackend::routed_after_side(const Mat& x, const int32_t* expert_ids, const float* weights,
                                    int64_t top_k, const ExpertWeights* local_experts,
                                    int64_t expert_begin, int64_t num_local, Mat out,
                                    const ResidualNorm* then) {
  DSHPC_CHECK(x.rows == out.rows && x.cols == out.cols && out.dtype == dtype_)
      << "moe_experts_with_shared: x [" << x.rows << ", " << x.cols << "], out [" << out.rows
      << ", " << out.cols << "]";
  const Mat shared_out = Mat::of(side_out_.data(), dtype_, x.rows, x.cols);
  const ResidualNorm* fused_then = moe_combine_norm_enabled_ ? then : nullptr;
  const bool small = num_local > 0 && top_k > 0 &&
                     moe_small(x, expert_ids, weights, top_k, local_experts, expert_begin,
                               num_local, nullptr, out, fused_then, &shared_out);
  if (!small) {
    // out = the shared experts' rows, then the routed experts add theirs.
    join_side();
    copy(shared_out, out);
    moe_experts(x, expert_ids, weights, top_k, local_experts, expert_begin, num_local, out);
  }
  if (then != nullptr && (!small || fused_then == nullptr)) {
    add_rmsnorm(then->residual, out, then->weight, then->eps, then->normed);
  }
  return true;
}

// Routed experts. The number of rows each expert gets decides the shapes of its matrix products,
// so the expert ids come to the host once per MoE layer (a few KB; the one host wait of the
// layer) and are sorted there by expert; the permutation goes back with the rows' order:
//   index = [token_of_row (rows) | row_of_pair (tokens × top_k, −1 for other ranks' experts)]
void CudaBackend::moe_experts(const Mat& x, const int32_t* expert_ids, const float* weights,
                              int64_t top_k, const ExpertWeights* local_experts,
                              int64_t expert_begin, int64_t num_local, Mat out) {
  DSHPC_CHECK(x.contiguous() && out.contiguous() && x.rows == out.rows && x.cols == out.cols &&
              x.dtype == dtype_ && out.dtype == dtype_)
      << "moe_experts: input [" << x.rows << ", " << x.cols << "], output [" << out.rows << ", "
      << out.cols << "]";
  join_side();
  const int64_t tokens = x.rows, hidden = x.cols, pairs = tokens * top_k;
  if (tokens == 0 || num_local == 0 || top_k == 0) return;
  if (moe_small(x, expert_ids, weights, top_k, local_experts, expert_begin, num_local, nullptr,
                out)) {
    return;
  }
  if (capturing_) {  // the expert counts come to the host: not replayable
    capture_unusable_ = true;
    return;
  }
  DSHPC_CHECK(pairs <= 0x7fffffff) << "moe_experts: " << pairs << " (token, expert) pairs";

  auto* ids = static_cast<int32_t*>(moe_ids_staging_.acquire(
      pairs * sizeof(int32_t), watch_.get(), timeout_s_, "a previous expert-id download"));
  DSHPC_CUDA_CHECK(
      cudaMemcpyAsync(ids, expert_ids, pairs * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  moe_ids_staging_.copied(stream_);
  wait("the expert ids of a MoE layer");

  // Counting sort of the pairs by local expert; within an expert, pairs keep their order.
  moe_counts_.assign(num_local + 1, 0);
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t e = ids[p] - expert_begin;
    if (e >= 0 && e < num_local) ++moe_counts_[e + 1];
  }
  for (int64_t e = 0; e < num_local; ++e) moe_counts_[e + 1] += moe_counts_[e];  // → offsets
  const int64_t rows = moe_counts_[num_local];
  if (rows == 0) return;
  int64_t groups = 0;  // experts with rows
  for (int64_t e = 0; e < num_local; ++e) groups += moe_counts_[e + 1] > moe_counts_[e];
  const size_t index_bytes = moe_index_bytes(rows, pairs, groups);
  auto* index = static_cast<int32_t*>(moe_index_staging_.acquire(
      index_bytes, watch_.get(), timeout_s_, "a previous expert permutation upload"));
  int32_t* token_of_row = index;
  int32_t* row_of_pair = index + rows;
  moe_cursor_.assign(moe_counts_.begin(), moe_counts_.end() - 1);
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t e = ids[p] - expert_begin;
    if (e >= 0 && e < num_local) {
      const int32_t row = moe_cursor_[e]++;
      token_of_row[row] = static_cast<int32_t>(p / top_k);
      row_of_pair[p] = row;
    } else {
      row_of_pair[p] = -1;
    }
  }
  int64_t max_inter = 0;
  bool uniform = true;
  for (int64_t e = 0; e < num_local; ++e) {
    const ExpertWeights& w = local_experts[e];
    const int64_t inter = w.down.cols;
    DSHPC_CHECK(w.gate_up.rows == 2 * inter && w.gate_up.cols == hidden && w.down.rows == hidden)
        << "expert " << expert_begin + e << ": gate_up [" << w.gate_up.rows << ", "
        << w.gate_up.cols << "], down [" << w.down.rows << ", " << w.down.cols << "]";
    uniform = uniform && (e == 0 || inter == max_inter);
    max_inter = std::max(max_inter, inter);
  }
  const size_t element = dtype_size(dtype_);
  ensure(moe_rows_, rows * hidden * element);
  ensure(moe_gate_up_, rows * 2 * max_inter * element);
  ensure(moe_act_, rows * max_inter * element);
  ensure(moe_out_, rows * hidden * element);
  const Mat gathered = Mat::of(moe_rows_.data(), dtype_, rows, hidden);
  const Mat gate_up = Mat::of(moe_gate_up_.data(), dtype_, rows, 2 * max_inter);
  const Mat act = Mat::of(moe_act_.data(), dtype_, rows, max_inter);
  const Mat expert_out = Mat::of(moe_out_.data(), dtype_, rows, hidden);

  // Each product of every expert in one grouped cuBLAS call where the experts share their
  // shapes: in long prefills two calls per expert cost more host time than GPU time (64 experts,
  // 26 layers: a V2-Lite trace at 2048 tokens showed the GPU idle between them).
  const ExpertWeights& first = local_experts[0];
  bool grouped = moe_grouped_enabled_ && uniform && groups > 0;
  for (int64_t e = 0; e < num_local && grouped; ++e) {
    grouped = local_experts[e].gate_up.stride == first.gate_up.stride &&
              local_experts[e].down.stride == first.down.stride &&
              local_experts[e].gate_up.dtype == dtype_ && local_experts[e].down.dtype == dtype_;
  }
  const void** pointers = reinterpret_cast<const void**>(reinterpret_cast<char*>(index) +
                                                         moe_index_pointers_offset(rows, pairs));
  moe_group_rows_.clear();
  for (int64_t e = 0; e < num_local; ++e) {
    const int64_t begin = moe_counts_[e], n = moe_counts_[e + 1] - moe_counts_[e];
    if (n == 0) continue;
    const int64_t g = static_cast<int64_t>(moe_group_rows_.size());
    moe_group_rows_.push_back(static_cast<int>(n));
    const void* arrays[6] = {local_experts[e].gate_up.data,    gathered.row_slice(begin, n).data,
                             gate_up.row_slice(begin, n).data, local_experts[e].down.data,
                             act.row_slice(begin, n).data,     expert_out.row_slice(begin, n).data};
    for (int a = 0; a < 6; ++a) pointers[a * groups + g] = arrays[a];
  }
  ensure(moe_index_, index_bytes);
  DSHPC_CUDA_CHECK(
      cudaMemcpyAsync(moe_index_.data(), index, index_bytes, cudaMemcpyHostToDevice, stream_));
  moe_index_staging_.copied(stream_);
  const int32_t* device_token_of_row = moe_index_.as<int32_t>();
  const int32_t* device_row_of_pair = device_token_of_row + rows;

  const auto* device_pointers = reinterpret_cast<const void* const*>(
      static_cast<const char*>(moe_index_.data()) + moe_index_pointers_offset(rows, pairs));
  auto device_array = [&](int a) { return device_pointers + a * groups; };
  const int count = static_cast<int>(groups);

  cuda::launch_gather_rows(x, device_token_of_row, gathered, stream_);
  if (grouped &&
      cuda::gemm_grouped(cublas_, dtype_, count, moe_group_rows_.data(), 2 * max_inter, hidden,
                         device_array(0), first.gate_up.stride, device_array(1), gathered.stride,
                         const_cast<void* const*>(device_array(2)), gate_up.stride)) {
    cuda::launch_swiglu(gate_up, act, stream_);
    DSHPC_CHECK(cuda::gemm_grouped(cublas_, dtype_, count, moe_group_rows_.data(), hidden,
                                   max_inter, device_array(3), first.down.stride, device_array(4),
                                   act.stride, const_cast<void* const*>(device_array(5)),
                                   expert_out.stride))
        << "moe_experts: cuBLAS took the grouped gate_up product but not the down one";
    ++counters_.moe_grouped;
    cuda::launch_moe_combine(expert_out, device_row_of_pair, weights, top_k, nullptr, out, stream_);
    return;
  }
  for (int64_t e = 0; e < num_local; ++e) {
    const int64_t begin = moe_counts_[e], n = moe_counts_[e + 1] - moe_counts_[e];
    if (n == 0) continue;
    const int64_t inter = local_experts[e].down.cols;
    const Mat gu = gate_up.row_slice(begin, n).col_slice(0, 2 * inter);
    cuda::gemm(cublas_, gathered.row_slice(begin, n), local_experts[e].gate_up, gu, true, false);
    if (!uniform) cuda::launch_swiglu(gu, act.row_slice(begin, n).col_slice(0, inter), stream_);
  }
  if (uniform) cuda::launch_swiglu(gate_up, act, stream_);  // every row at once
  for (int64_t e = 0; e < num_local; ++e) {
    const int64_t begin = moe_counts_[e], n = moe_counts_[e + 1] - moe_counts_[e];
    if (n == 0) continue;
    const int64_t inter = local_experts[e].down.cols;
    cuda::gemm(cublas_, act.row_slice(begin, n).col_slice(0, inter), local_experts[e].down,
               expert_out.row_slice(begin, n), true, false);
  }
  cuda::launch_moe_combine(expert_out, device_row_of_pair, weights, top_k, nullptr, out, stream_);
}

CudaBackend& as_cuda(Backend& backend) {
  auto* cuda_backend = dynamic_cast<CudaBackend*>(&backend);
  DSHPC_CHECK(cuda_backend != nullptr) << "backend " << backend.name() << " is not CUDA";
  return *cuda_backend;
}

}  // namespace

bool cuda_backend_built() {
  return true;
}

StatusOr<std::unique_ptr<Backend>> make_cuda_backend(int device, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return invalid_argument(std::string("the CUDA backend runs F32 or BF16, not ") +
                            dtype_name(dtype));
  }
  const int count = cuda::visible_device_count();
  if (device < 0 || device >= count) {
    return unavailable("CUDA device " + std::to_string(device) + " requested but " +
                       std::to_string(count) + " visible");
  }
  return std::unique_ptr<Backend>(new CudaBackend(device, dtype));
}

CudaBackendHandles cuda_backend_handles(Backend& backend) {
  return as_cuda(backend).handles();
}

CudaPathCounters cuda_path_counters(Backend& backend) {
  return as_cuda(backend).path_counters();
}

CudaMemoryStats cuda_memory_stats(Backend& backend) {
  return as_cuda(backend).memory_stats();
}

}  // namespace dshpc
