// The decoder of every DeepSeek family, as this rank holds it: its pipeline stage's layers and its
// tensor-parallel slice of each. llama.cpp and deepseek.cpp hold the per-family attention; this
// file's Model runs embedding, layers, MLP / MoE and the output head.
//
// Tensor-parallel split (tp ranks; Megatron style, one all-reduce per attention and per MLP):
//   column-split (output rows): q/k/v, q_b (or q), kv_b, gate/up, shared-expert gate/up, lm_head
//   row-split (input columns):  o_proj, down_proj, shared-expert down
//   replicated:                 norms, q_a, kv_a_proj_with_mqa (the latent), router gate + bias
//   routed experts:             partitioned, each rank holds n_routed_experts / tp whole experts
//   embedding:                  vocabulary-parallel rows, completed by an all-reduce
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "kernels/backend.h"
#include "parallel/collectives.h"
#include "parallel/layout.h"
#include "worker/kv_cache.h"
#include "worker/model_config.h"
#include "worker/weight_source.h"

namespace dshpc {

// What part of the model this rank holds.
struct ModelShard {
  int tp_rank = 0;
  int tp_size = 1;
  int64_t layer_begin = 0;  // [layer_begin, layer_end) of the decoder layers
  int64_t layer_end = -1;   // -1: all layers
  bool first_stage() const { return layer_begin == 0; }
  bool last_stage(const ModelConfig& c) const { return layer_end == c.num_layers; }
};

// A weight in backend memory and its (local) shape.
struct Weight {
  DeviceBuffer buffer;
  Mat mat;
  std::string name;  // checkpoint name (first, for fused weights)
  const void* data() const { return mat.data; }
};

struct MlpWeights {  // SwiGLU MLP (dense layers, shared experts, routed experts)
  Weight gate_up;    // [2 · inter_local, hidden]: gate rows then up rows
  Weight down;       // [hidden, inter_local]
  int64_t inter_local = 0;
};

struct LlamaAttentionWeights {
  Weight qkv;  // [(q_heads_local + 2 · kv_heads_local) · head_dim, hidden]
  Weight o;    // [hidden, q_heads_local · head_dim]
};

struct MlaWeights {
  Weight q_a;        // [q_lora_rank, hidden]            (q LoRA only)
  Weight q_a_norm;   // [q_lora_rank]
  Weight q_b;        // [heads_local · qk_head_dim, q_lora_rank or hidden] (q_b_proj or q_proj)
  Weight kv_a;       // [kv_lora_rank + rope, hidden]    replicated
  Weight kv_a_norm;  // [kv_lora_rank]
  Weight kv_b;       // [heads_local · (nope + v), kv_lora_rank]: per head W_UK rows, W_UV rows
  Weight o;          // [hidden, heads_local · v_head_dim]
};

struct MoeWeights {
  Weight router;                    // [n_routed_experts, hidden]
  Weight bias;                      // [n_routed_experts] (noaux_tc)
  std::vector<MlpWeights> experts;  // this rank's experts
  std::vector<ExpertWeights> expert_views;
  int64_t expert_begin = 0;
  bool has_shared = false;
  MlpWeights shared;  // n_shared_experts × moe_intermediate, split like a dense MLP
};

struct LayerWeights {
  int64_t index = 0;  // global layer index
  Weight input_norm;  // [hidden]
  Weight post_attention_norm;
  LlamaAttentionWeights llama;
  MlaWeights mla;
  bool moe = false;
  MlpWeights mlp;
  MoeWeights moe_weights;
};

// The split table: how each checkpoint tensor is divided among the ranks of a tensor-parallel
// group. Model::load_weights reads exactly these slices (tests/unit/test_weight_table.cpp checks
// it); HDF5 checkpoints chunk each tensor along its split dimension (worker/h5_layout.h).
enum class TensorSplit : uint8_t {
  kReplicated,  // every rank of the group reads it whole
  kRows,        // dim 0, made of `units` equal parts (heads, channels, vocabulary entries)
  kCols,        // dim 1, likewise
  kExpert,      // a routed expert's tensor: whole on the rank that holds the expert, else unread
};
const char* tensor_split_name(TensorSplit split);  // "replicated", "rows", "cols", "expert"

struct TensorSpec {
  std::string name;  // as Hugging Face names it
  std::vector<int64_t> shape;
  TensorSplit split = TensorSplit::kReplicated;
  int64_t units = 1;    // kRows/kCols: parts of the split dim; kExpert: n_routed_experts
  int64_t expert = -1;  // kExpert: the expert's index
  int64_t layer = -1;   // decoder layer; -1: embedding, final norm, output head
};

// Where a tensor lives (rows × cols; cols is Range::all() for 1-D tensors).
struct TensorSlice {
  Range rows;
  Range cols;
};

// Every tensor the config needs, with its full shape and split.
std::vector<TensorSpec> weight_table(const ModelConfig& config);

// The part of `spec` the rank holding `shard` reads, or nullopt when it reads none of it (another
// stage's layer, another rank's expert). A split whose units are fewer than the tp ranks (Llama kv
// heads) gives each rank one unit, shared by tp / units ranks. Expects a shard that check_shard
// accepted.
std::optional<TensorSlice> owned_slice(const TensorSpec& spec, const ModelConfig& config,
                                       const ModelShard& shard);

// What each parallel dimension splits in this model, for check_splits (parallel/layout.h): heads,
// kv heads, vocabulary, MLP widths and experts must divide by tp; layers must cover pp stages.
std::vector<SplitRequirement> split_requirements(const ModelConfig& config);

class Model {
 public:
  // Checks that the shard fits the config (heads, experts, vocabulary divisible by tp; layer
  // range valid); does not read weights.
  static Status check_shard(const ModelConfig& config, const ModelShard& shard);

  // Every tensor the config needs, with its full shape, as Hugging Face names it.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(
      const ModelConfig& config);

  // Weight bytes loaded so far and the shard's total, after each weight (for progress reports).
  using LoadProgress = std::function<void(int64_t bytes_done, int64_t bytes_total)>;

  // Loads this rank's slices. Missing tensors and shapes that do not fit the config are errors
  // naming the tensor and the source. With `progress`, a first pass over the shapes alone (no
  // read, no allocation) sizes the shard, then `progress` is called after each weight.
  static StatusOr<std::unique_ptr<Model>> load(const ModelConfig& config, ModelShard shard,
                                               const WeightSource& source, Backend& backend,
                                               Collectives& tp, const LoadProgress& progress = {});

  const ModelConfig& config() const { return config_; }
  const ModelShard& shard() const { return shard_; }
  int64_t num_local_layers() const { return static_cast<int64_t>(layers_.size()); }
  // Bytes of weights this rank holds.
  int64_t weight_bytes() const { return weight_bytes_; }
  // The KV cache geometry for this rank.
  KvCacheSpec kv_cache_spec(int64_t block_size) const;

  // Runs this stage's layers on one step. `hidden` [T, hidden] holds the input activations (the
  // previous stage's output); on the first stage it is filled from the step's token ids. On
  // return it holds this stage's output (pre-final-norm residual stream).
  void forward(const StepTensors& step, KvCache& cache, Mat hidden);

  // True when forward() on a decode step may queue only stream-ordered device work that a CUDA
  // graph can replay: tensor-parallel collectives that run on the stream (NCCL). Decode attention
  // (MLA included) and the MoE layers' small-step path stay on the device; a step that needs the
  // host anyway (a MoE step too large for that path) makes the backend discard the capture and
  // the step runs eagerly.
  bool graph_capturable() const;

  // Last stage: logits[rows, vocab] (full vocabulary, gathered over tp) of the given hidden rows.
  // `hidden_rows` is overwritten with its final norm.
  void logits(Mat hidden_rows, Mat logits_out);

  // ---- Workspace: the scratch activations of a step, and the backend's per-step buffers.
  // Grows every scratch buffer to what a step of up to `capacity.tokens` tokens and
  // `capacity.logits_rows` logits rows needs (float32 logits), and the backend's own buffers
  // (Backend::reserve_step, with this model's MoE sizes), all with Backend::try_allocate, so that
  // forward() and logits() of such a step allocate nothing. RESOURCE_EXHAUSTED naming the buffer
  // when the memory is not there; nothing has run then, and what was grown stays until
  // release_workspace(). While a reservation holds, a scratch buffer that a step within it finds
  // too small is a broken invariant (the widths below are out of date), not a lazy allocation.
  Status reserve_workspace(StepCapacity capacity);
  void release_workspace();
  // Scratch bytes held now (the backend's own buffers not included).
  int64_t workspace_bytes() const;

 private:
  Model(const ModelConfig& config, ModelShard shard, Backend& backend, Collectives& tp);

  // `plan_only`: checks every shape and adds up weight_bytes_ without reading or allocating.
  Status load_weights(const WeightSource& source, bool plan_only = false,
                      const LoadProgress& progress = {}, int64_t planned_bytes = 0);
  void attention_llama(const LayerWeights& w, const StepTensors& step, const PagedKvView& cache,
                       Mat normed, Mat out);
  void attention_mla(const LayerWeights& w, const StepTensors& step, const PagedKvView& cache,
                     Mat normed, Mat out);
  void mlp(const MlpWeights& w, Mat normed, Mat out, bool accumulate);
  // hidden += delta; normed = rmsnorm(hidden) · norm_weight; then delta = the MoE layer of
  // normed (shared and routed experts, this rank's part). With `then` (one rank only), returns
  // whether the backend also did then's residual add and norm (the next layer's input).
  bool moe(const MoeWeights& w, Mat hidden, const void* norm_weight, Mat normed, Mat delta,
           const ResidualNorm* then = nullptr);
  // Scratch activation buffers, each grown to the largest step seen. kNormed and kDelta live
  // across a layer; the kWork slots are free for the block being computed.
  enum ScratchSlot : int {
    kNormed,
    kDelta,
    kWork0,
    kWork1,
    kWork2,
    kWork3,
    kWork4,
    kWork5,
    kWork6,
    kMlpGateUp,
    kMlpAct,
    kRouterLogits,
    kExpertIds,
    kExpertWeights,
    kLocalLogits,
    kGatheredLogits,
    kNumScratch,
  };
  Mat scratch(ScratchSlot slot, int64_t rows, int64_t cols);  // activation dtype
  Mat scratch(ScratchSlot slot, int64_t rows, int64_t cols, DType dtype);
  // Bytes per step row of each slot: the widest use in forward() and logits(). A step row is a
  // token, or a logits row for kLocalLogits and kGatheredLogits (which holds tp of them).
  std::vector<size_t> scratch_row_bytes() const;

  ModelConfig config_;
  ModelShard shard_;
  Backend& backend_;
  Collectives& tp_;

  int64_t heads_local_ = 0;     // query heads on this rank
  int64_t kv_heads_local_ = 0;  // Llama kv heads on this rank
  int64_t vocab_local_ = 0;
  int64_t vocab_begin_ = 0;
  int64_t experts_local_ = 0;

  Weight embedding_;   // [vocab_local, hidden] (first stage)
  Weight final_norm_;  // [hidden] (last stage)
  Weight lm_head_;     // [vocab_local, hidden] (last stage)
  std::vector<LayerWeights> layers_;
  DeviceBuffer rope_cos_, rope_sin_;
  RopeTables rope_tables_;
  int64_t weight_bytes_ = 0;

  std::vector<DeviceBuffer> scratch_;
  // The step the workspace is reserved for (0: none; scratch then grows on demand).
  int64_t reserved_tokens_ = 0;
  int64_t reserved_logits_rows_ = 0;
};

}  // namespace dshpc
