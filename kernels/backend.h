// The backend interface: memory and the operations of a forward pass, on one device.
//
// The model code (worker/) is written once against this interface; the CPU backend runs every op
// with the reference kernels in this folder (float32, OpenBLAS), and the CUDA backend with its
// kernels and cuBLAS. All pointers passed to ops point into this backend's memory. Ops are
// asynchronous on a backend's stream; download() and synchronize() wait.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/attention.h"
#include "kernels/moe_routing.h"
#include "kernels/rope.h"
#include "kernels/sampling.h"

namespace dshpc {

class Backend;

// Memory owned by a backend; freed when the last owner goes away (move-only).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend* owner, void* data, size_t bytes)
      : owner_(owner), data_(data), bytes_(bytes) {}
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  Backend* owner_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A 2-D row-major view: `rows` rows of `cols` elements, consecutive rows `stride` elements apart.
struct Mat {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t stride = 0;

  static Mat of(void* data, DType dtype, int64_t rows, int64_t cols) {
    return {data, dtype, rows, cols, cols};
  }
  // Rows [begin, begin + count).
  Mat row_slice(int64_t begin, int64_t count) const;
  // Columns [begin, begin + count) of every row (same stride).
  Mat col_slice(int64_t begin, int64_t count) const;
  bool contiguous() const { return stride == cols; }
};

// Per-step metadata in backend memory (prepared once per step by Backend::upload_step).
struct StepTensors {
  const int32_t* token_ids = nullptr;  // [tokens]
  const int32_t* positions = nullptr;  // [tokens]
  const int64_t* slots = nullptr;      // [tokens] KV cache slot of each new token
  const PagedSequence* sequences =
      nullptr;  // [num_sequences], block_table pointers in backend memory
  int64_t num_tokens = 0;
  int64_t num_sequences = 0;
};

// Host-side description of a step, turned into StepTensors by upload_step.
struct StepHostData {
  const int32_t* token_ids;
  const int32_t* positions;
  const int64_t* slots;
  int64_t num_tokens;
  // Per sequence: query_begin, query_len, context_len and its block table.
  const PagedSequence* sequences;  // block_table pointers are host pointers here
  const int32_t* const* block_tables;
  const int32_t* block_table_lengths;
  int64_t num_sequences;
};

// cos / sin tables for rotary embedding [positions, rot_dim / 2].
struct RopeTables {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t positions = 0;
  int64_t rot_dim = 0;
};

// The largest step the backend's own per-step buffers must hold (Backend::reserve_step): the
// step metadata (less the block tables, which are small and grow on demand), the sampling rows
// and the MoE layers' gathered rows.
struct StepCapacity {
  int64_t tokens = 0;
  int64_t sequences = 0;
  int64_t logits_rows = 0;  // rows of logits (0 on a stage without the output head)
  int64_t moe_rows = 0;     // (token, expert) pairs a rank's experts can receive: T · top_k
  int64_t moe_hidden = 0;
  int64_t moe_inter = 0;         // the widest local expert's intermediate size
  int64_t moe_shared_inter = 0;  // the widest shared experts' intermediate size (this rank's)
};

// What a backend knows of its memory; -1 where it knows nothing (the CPU has no device).
struct BackendMemory {
  int64_t device_total_bytes = -1;  // cudaMemGetInfo
  int64_t device_free_bytes = -1;
  int64_t pool_in_use_bytes = -1;  // the caching pool: blocks handed out …
  int64_t pool_cached_bytes = -1;  // … and blocks freed and kept for reuse
  int64_t step_buffers_bytes = 0;  // the backend's own per-step buffers (reserve_step)
};

// One expert's weights: gate and up fused [2 · inter, hidden], down [hidden, inter].
struct ExpertWeights {
  Mat gate_up;
  Mat down;
};

// What follows an op that produces a layer's output delta: residual += delta; normed =
// rmsnorm(residual) · weight (Backend::add_rmsnorm with the next layer's input norm).
struct ResidualNorm {
  Mat residual;
  const void* weight = nullptr;
  float eps = 0.0f;
  Mat normed;
};

// The routed experts that follow a moe_gate on this rank (Model::moe): local experts
// [expert_begin, expert_begin + num_local), and the layer's shared experts where they go with
// them (moe_experts_with_shared; nullptr: none).
struct MoeExpertsAfterGate {
  int64_t expert_begin = 0;
  int64_t num_local = 0;
  const ExpertWeights* shared = nullptr;
};

// MLA's per-token steps between the down-projections and the latent attention
// (Backend::mla_prepare, called by worker/mla_attention.cpp): with lora = latent.cols − rope,
//   cache[slots[t]] = [rmsnorm(latent[t, :lora]) · kv_norm | rope(latent[t, lora:])]
//   q_absorbed[t, h] = [W_UK_hᵀ · q[t, h, :nope] | rope(q[t, h, nope:])]
// where W_UK_h is rows [h · (nope + v_dim), + nope) of kv_b. q and latent may be overwritten.
struct MlaPrepareArgs {
  Mat q;       // [T, heads · (nope + rope)], q_pe unrotated
  Mat latent;  // [T, lora + rope]: kv_a's output (c not normalised, k_pe unrotated)
  const void* kv_norm = nullptr;  // [lora], the weight dtype
  float eps = 0.0f;
  Mat kv_b;  // [heads · (nope + v_dim), lora]
  int64_t heads = 0, nope = 0, rope = 0, v_dim = 0;
  const int32_t* positions = nullptr;  // [T]
  const int64_t* slots = nullptr;      // [T]; a negative slot writes no cache entry
  RopeTables tables;
  RopeStyle style = RopeStyle::kHalfSplit;
  PagedKvView cache;  // the latent cache: kv_heads 1, head_dim lora + rope
  Mat q_absorbed;     // [T, heads · (lora + rope)], written
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;
  // Element type of weights and activations (F32 on the CPU).
  virtual DType weight_dtype() const = 0;
  virtual DType activation_dtype() const = 0;

  // ---- memory
  // Out of memory stops the job (the message names the sizes): for weights, the KV cache and
  // anything sized once at start-up.
  virtual DeviceBuffer allocate(size_t bytes) = 0;
  // An empty buffer (data() == nullptr) instead of stopping when the memory is not there (after
  // the backend gave back what it caches): for a step's workspace, reserved before the step runs
  // so that running out of memory shrinks the batch instead of killing the server. The default
  // cannot fail more gracefully than allocate().
  virtual DeviceBuffer try_allocate(size_t bytes) { return allocate(bytes); }
  // Grows `buffer` to at least `bytes` with try_allocate, giving the smaller block back first;
  // RESOURCE_EXHAUSTED "<what> of <bytes> bytes could not be allocated" when that fails (the
  // buffer is then empty). A buffer already large enough is left as it is.
  Status try_grow(DeviceBuffer& buffer, size_t bytes, const std::string& what);
  virtual void release(void* data, size_t bytes) = 0;  // called by DeviceBuffer
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  // Converts float32 host values to weight_dtype() into dst (count elements).
  virtual void upload_weights(void* dst, const float* src, size_t count) = 0;
  // Reads `count` activation elements as float32 into host memory.
  virtual void download_f32(float* dst, const void* src, size_t count) = 0;
  virtual void synchronize() = 0;
  // Bytes the backend could still allocate (on a GPU: the device's free memory plus the pool's
  // cached blocks), for sizing the KV cache after the weights are loaded; -1 when it has no
  // meaningful bound (the CPU backend).
  virtual int64_t free_memory_bytes() { return -1; }
  // The device's and the pool's figures, for /debug/memory (cheap: no synchronisation).
  virtual BackendMemory memory_info() { return {}; }
  // Grows the backend's own per-step buffers (step metadata, sampling rows, MoE scratch) to hold
  // a step of `capacity`, with try_allocate: RESOURCE_EXHAUSTED when the memory is not there. The
  // ops of a step within the capacity then allocate nothing. Backends whose ops allocate nothing
  // on the device (the CPU) have nothing to do.
  virtual Status reserve_step(const StepCapacity& capacity) { return ok_status(); }
  // Gives those buffers back (after a failed reservation, so that a smaller step starts clean).
  virtual void release_step_buffers() {}

  // Makes the step's host metadata available to ops; valid until the next call.
  virtual StepTensors upload_step(const StepHostData& host) = 0;
  // Copies `count` rows of sampling parameters (host memory) into backend memory for sample();
  // the returned pointer is valid until the next call. Temperatures must be finite and top_p not
  // NaN (the gateway validates requests; anything else is a broken invariant).
  virtual const SamplingRow* upload_sampling(const SamplingRow* rows, int64_t count) = 0;

  // ---- ops (shapes in comments; T = tokens of the step)
  // out[T, dim] = table rows of ids (vocabulary slice [vocab_begin, vocab_begin + table.rows)).
  virtual void embedding(const Mat& table, int64_t vocab_begin, const int32_t* ids, Mat out) = 0;
  // y = x · wᵀ (w as [n, k]) or x · w (transpose_w = false, w as [k, n]); y += … if accumulate.
  virtual void matmul(const Mat& x, const Mat& w, Mat y, bool w_transposed = true,
                      bool accumulate = false) = 0;
  // The same product for `heads` heads at once: for h < heads, y_h = x_h · w_hᵀ (or x_h · w_h),
  // where x_h, w_h and y_h are x, w and y moved by h times x_offset, w_offset and y_offset
  // elements (MLA's per-head absorption through kv_b). The default runs one matmul per head.
  virtual void matmul_heads(const Mat& x, const Mat& w, Mat y, int64_t heads, int64_t x_offset,
                            int64_t w_offset, int64_t y_offset, bool w_transposed = true);
  // y1 = x · w1ᵀ and y2 = x · w2ᵀ: two products of one input (MLA's query and latent
  // down-projections), in one launch where the backend can. The default runs two matmuls.
  virtual void matmul_pair(const Mat& x, const Mat& w1, Mat y1, const Mat& w2, Mat y2) {
    matmul(x, w1, y1);
    matmul(x, w2, y2);
  }
  // out = rmsnorm(x) · weight, row-wise; out may alias x.
  virtual void rmsnorm(const Mat& x, const void* weight, float eps, Mat out) = 0;
  // residual += delta; out = rmsnorm(residual) · weight.
  virtual void add_rmsnorm(Mat residual, const Mat& delta, const void* weight, float eps,
                           Mat out) = 0;
  // dst = src (same shape; strided).
  virtual void copy(const Mat& src, Mat dst) = 0;
  // a += b (same shape; strided).
  virtual void add(Mat a, const Mat& b) = 0;
  // m = 0.
  virtual void zero(Mat m) = 0;
  // Rotates dims [0, rot_dim) of `heads` heads per row: head h of row t starts at
  // x.data + t · x.stride + h · head_stride.
  virtual void rope(Mat x, int64_t heads, int64_t head_stride, int64_t rot_dim,
                    const int32_t* positions, const RopeTables& tables, RopeStyle style) = 0;
  // out[T, inter] = silu(gate_up[:, :inter]) · gate_up[:, inter:].
  virtual void swiglu(const Mat& gate_up, Mat out) = 0;
  virtual void kv_cache_write(const Mat& k, const Mat* v, const int64_t* slots,
                              const PagedKvView& cache) = 0;
  virtual void paged_attention(const Mat& q, Mat out, const StepTensors& step, int64_t q_heads,
                               const PagedKvView& cache, float scale) = 0;
  // MLA's steps before the attention (MlaPrepareArgs). The default runs them op by op (and
  // normalises and rotates q and latent in place on the way); a backend may fuse them.
  virtual void mla_prepare(const MlaPrepareArgs& args);
  // MLA's attention in latent space and the value projection: latent = paged_attention of the
  // absorbed query ([T, heads · lora]), then values[t, h] = W_UV_h · latent[t, h], where W_UV_h is
  // rows [h · (nope + v_dim) + nope, + v_dim) of kv_b ([T, heads · v_dim]). The default runs
  // paged_attention and matmul_heads; a backend may do the projection in the attention's last
  // launch and leave `latent` unwritten.
  virtual void mla_attention(const Mat& q_absorbed, Mat latent, const StepTensors& step,
                             int64_t heads, const PagedKvView& cache, float scale, const Mat& kv_b,
                             int64_t nope, int64_t v_dim, Mat values);
  // The router and the routing: logits[T, n_experts] = x · routerᵀ in float32, then moe_route of
  // them. The default runs matmul and moe_route; a backend may do both in one launch (logits are
  // then still written).
  // `next`, where given, names the routed experts the caller runs next on these ids (a backend
  // may build their index in the same launch; it changes no result). The caller must not change
  // the ids between the two calls other than through another gate or moe_route.
  // With next->shared, the caller's next op is moe_experts_with_shared on the same x with those
  // shared experts, and x is not written before it: a backend may start the shared experts
  // beside the gate, and that call then takes their result.
  virtual void moe_gate(const Mat& x, const Mat& router, Mat logits, const float* bias,
                        const MoeRoutingParams& params, int32_t* expert_ids, float* weights,
                        const MoeExpertsAfterGate* next = nullptr) {
    matmul(x, router, logits);
    moe_route(logits, bias, params, expert_ids, weights);
  }
  // residual += delta; normed = rmsnorm(residual) · norm_weight (add_rmsnorm), then moe_gate of
  // normed. The default runs the two; a backend may do both in one launch. With next->shared it
  // may also start the shared experts on normed (see moe_gate's `next`).
  virtual void add_rmsnorm_moe_gate(Mat residual, const Mat& delta, const void* norm_weight,
                                    float eps, Mat normed, const Mat& router, Mat logits,
                                    const float* bias, const MoeRoutingParams& params,
                                    int32_t* expert_ids, float* weights,
                                    const MoeExpertsAfterGate* next = nullptr) {
    add_rmsnorm(residual, delta, norm_weight, eps, normed);
    moe_gate(normed, router, logits, bias, params, expert_ids, weights, next);
  }
  // Routed experts: out[T, hidden] += Σ_k weights[t, k] · expert_{ids[t, k]}(x[t]) for the
  // experts this rank holds, ids in [expert_begin, expert_begin + num_local); others skipped.
  virtual void moe_route(const Mat& router_logits, const float* bias,
                         const MoeRoutingParams& params, int32_t* expert_ids, float* weights) = 0;
  virtual void moe_experts(const Mat& x, const int32_t* expert_ids, const float* weights,
                           int64_t top_k, const ExpertWeights* local_experts, int64_t expert_begin,
                           int64_t num_local, Mat out) = 0;
  // out = shared(x) + the routed experts' moe_experts sum, where `shared` is the layer's shared
  // experts (a SwiGLU MLP laid out as an expert, every token through it with weight 1): in the
  // same launches as the routed experts, or from the shared experts' result that the gate's call
  // started (next->shared); out is overwritten. Returns false, having written nothing the caller
  // sees, where the backend has no such path for these shapes: the caller then runs the shared
  // MLP and moe_experts.
  // With `then` given, a true return also means then->residual += out and then->normed =
  // rmsnorm(then->residual) · then->weight (add_rmsnorm: the next layer's input norm) are done.
  virtual bool moe_experts_with_shared(const Mat& x, const int32_t* expert_ids,
                                       const float* weights, int64_t top_k,
                                       const ExpertWeights* local_experts, int64_t expert_begin,
                                       int64_t num_local, const ExpertWeights& shared, Mat out,
                                       const ResidualNorm* then = nullptr) {
    return false;
  }
  // ids[r] = argmax of logits row r (ties to the lowest index).
  virtual void argmax(const Mat& logits, int32_t* ids) = 0;
  // ids[r] = the token sample_token_cpu draws from float32 logits row r with rows[r] (from
  // upload_sampling): greedy rows take the argmax, the others temperature → top-k → top-p and
  // Philox draw philox_uniform(seed, counter) (kernels/sampling.h).
  virtual void sample(const Mat& logits, const SamplingRow* rows, int32_t* ids) = 0;

  // ---- captured steps (CUDA graphs): a step whose launches depend only on shapes is captured
  // once and replayed, so that its hundreds of small launches cost one. The caller keys a graph
  // by everything the launches depend on (step_graph_key() gives the step's part); a backend
  // drops every graph when memory is allocated or released, since graphs hold raw pointers.
  // Backends without graphs (the CPU) return 0 / false and the caller runs the work eagerly.
  //
  // Non-zero for a step uploaded by the last upload_step whose launches a graph can replay
  // (decode steps), identifying the shapes the backend will launch for it; 0 otherwise.
  virtual uint64_t step_graph_key() const { return 0; }
  // Replays the graph captured under `key`; false when there is none (or it was dropped).
  virtual bool launch_graph(uint64_t key) { return false; }
  // Between begin_capture and end_capture ops are recorded, not run. end_capture stores the
  // graph under `key` and returns true, or returns false when the capture is unusable (memory
  // changed or an op needed the host) and the recorded work must be run eagerly.
  virtual bool begin_capture() { return false; }
  virtual bool end_capture(uint64_t key) { return false; }

  // ---- the device's limits, measured (benchmarks print every figure beside them)
  // Copy bandwidth in bytes/s counting bytes read plus written, from repeated device-to-device
  // copies of `bytes`. The default times this backend's own copy op.
  virtual double measure_copy_bandwidth(size_t bytes);
  // Matrix-product rate in FLOP/s (2·m·n·k per product) in the weight dtype, from this backend's
  // own matmul.
  virtual double measure_matmul_rate(int64_t m, int64_t n, int64_t k);
};

// The CPU backend (float32 weights and activations, OpenBLAS). Defined in cpu_backend.cpp.
// The CUDA backend: kernels/cuda_backend.h.
std::unique_ptr<Backend> make_cpu_backend();

}  // namespace dshpc
