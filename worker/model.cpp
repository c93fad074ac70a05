// The decoder loop shared by every family: embedding, per layer attention then MLP or MoE with
// the residual stream, and the output head. Family-specific attention is in llama_attention.cpp
// and mla_attention.cpp.
#include "worker/model.h"

#include <algorithm>
#include <cstring>

#include "common/check.h"

namespace dshpc {

Model::Model(const ModelConfig& config, ModelShard shard, Backend& backend, Collectives& tp)
    : config_(config), shard_(shard), backend_(backend), tp_(tp) {
  const int t = shard_.tp_size;
  heads_local_ = config_.num_heads / t;
  kv_heads_local_ = config_.num_kv_heads >= t ? config_.num_kv_heads / t : 1;
  vocab_local_ = config_.vocab_size / t;
  vocab_begin_ = shard_.tp_rank * vocab_local_;
  experts_local_ = config_.num_routed_experts / t;
  scratch_.resize(kNumScratch);
}

StatusOr<std::unique_ptr<Model>> Model::load(const ModelConfig& config, ModelShard shard,
                                             const WeightSource& source, Backend& backend,
                                             Collectives& tp, const LoadProgress& progress) {
  if (shard.layer_end < 0) shard.layer_end = config.num_layers;
  RETURN_IF_ERROR(check_shard(config, shard));
  DSHPC_CHECK_EQ(tp.size(), shard.tp_size) << "tensor-parallel group size";
  int64_t planned_bytes = 0;
  if (progress) {
    Model plan(config, shard, backend, tp);
    RETURN_IF_ERROR(plan.load_weights(source, /*plan_only=*/true));
    planned_bytes = plan.weight_bytes_;
    progress(0, planned_bytes);
  }
  std::unique_ptr<Model> model(new Model(config, shard, backend, tp));
  RETURN_IF_ERROR(model->load_weights(source, /*plan_only=*/false, progress, planned_bytes));
  if (progress) progress(model->weight_bytes_, std::max(planned_bytes, model->weight_bytes_));

  // Rotary tables for every position the model accepts.
  const int64_t positions = config.max_position_embeddings;
  const int64_t half = config.rope.rot_dim / 2;
  std::vector<float> cos(positions * half), sin(positions * half);
  rope_tables(config.rope, positions, cos.data(), sin.data());
  model->rope_cos_ = backend.allocate(cos.size() * sizeof(float));
  model->rope_sin_ = backend.allocate(sin.size() * sizeof(float));
  backend.upload(model->rope_cos_.data(), cos.data(), cos.size() * sizeof(float));
  backend.upload(model->rope_sin_.data(), sin.data(), sin.size() * sizeof(float));
  model->rope_tables_ = {model->rope_cos_.as<float>(), model->rope_sin_.as<float>(), positions,
                         config.rope.rot_dim};
  return model;
}

KvCacheSpec Model::kv_cache_spec(int64_t block_size) const {
  KvCacheSpec spec;
  spec.num_layers = num_local_layers();
  spec.block_size = block_size;
  if (config_.is_mla()) {
    spec.latent = true;
    spec.kv_heads = 1;
    spec.head_dim = config_.kv_lora_rank + config_.qk_rope_head_dim;
    spec.v_dim = config_.kv_lora_rank;
  } else {
    spec.kv_heads = kv_heads_local_;
    spec.head_dim = config_.head_dim;
    spec.v_dim = config_.head_dim;
  }
  return spec;
}

Mat Model::scratch(ScratchSlot slot, int64_t rows, int64_t cols) {
  return scratch(slot, rows, cols, backend_.activation_dtype());
}

Mat Model::scratch(ScratchSlot slot, int64_t rows, int64_t cols, DType dtype) {
  const size_t bytes = static_cast<size_t>(rows * cols) * dtype_size(dtype);
  if (scratch_[slot].bytes() < bytes) {
    const bool logits_slot = slot == kLocalLogits || slot == kGatheredLogits;
    const int64_t step_rows = slot == kGatheredLogits ? rows / shard_.tp_size : rows;
    const int64_t reserved = logits_slot ? reserved_logits_rows_ : reserved_tokens_;
    DSHPC_CHECK(step_rows > reserved)
        << "scratch slot " << static_cast<int>(slot) << " needs " << bytes << " bytes for "
        << step_rows << " rows, within the reserved step of " << reserved
        << " rows but more than reserve_workspace gave it (" << scratch_[slot].bytes()
        << " bytes): Model::scratch_row_bytes is out of date";
    scratch_[slot] = backend_.allocate(bytes);
  }
  return Mat::of(scratch_[slot].data(), dtype, rows, cols);
}

std::vector<size_t> Model::scratch_row_bytes() const {
  const ModelConfig& c = config_;
  const size_t a = dtype_size(backend_.activation_dtype());
  const size_t f32 = sizeof(float);
  std::vector<size_t> width(kNumScratch, 0);
  width[kNormed] = width[kDelta] = c.hidden_size * a;
  if (c.is_mla()) {  // mla_attention.cpp
    const int64_t qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
    const int64_t entry = c.kv_lora_rank + c.qk_rope_head_dim;
    if (c.q_lora_rank > 0) width[kWork0] = c.q_lora_rank * a;
    width[kWork1] = heads_local_ * qk * a;
    width[kWork2] = entry * a;
    width[kWork3] = heads_local_ * entry * a;
    width[kWork4] = heads_local_ * c.kv_lora_rank * a;
    width[kWork5] = heads_local_ * c.v_head_dim * a;
  } else {  // llama_attention.cpp
    const int64_t q_width = heads_local_ * c.head_dim;
    const int64_t kv_width = kv_heads_local_ * c.head_dim;
    width[kWork0] = (q_width + 2 * kv_width) * a;
    width[kWork1] = width[kWork2] = q_width * a;
  }
  int64_t inter = 0;  // the widest dense MLP or shared expert
  for (const LayerWeights& layer : layers_) {
    if (!layer.moe) {
      inter = std::max(inter, layer.mlp.inter_local);
      continue;
    }
    if (layer.moe_weights.has_shared) inter = std::max(inter, layer.moe_weights.shared.inter_local);
    width[kRouterLogits] = c.routing.num_experts * f32;
    width[kExpertIds] = c.routing.top_k * sizeof(int32_t);
    width[kExpertWeights] = c.routing.top_k * f32;
  }
  width[kMlpGateUp] = 2 * inter * a;
  width[kMlpAct] = inter * a;
  if (shard_.last_stage(config_) && tp_.size() > 1) {  // logits(), float32 (Engine)
    width[kLocalLogits] = vocab_local_ * f32;
    width[kGatheredLogits] = tp_.size() * vocab_local_ * f32;
  }
  return width;
}

Status Model::reserve_workspace(StepCapacity capacity) {
  const bool last = shard_.last_stage(config_);
  if (!last) capacity.logits_rows = 0;
  const std::vector<size_t> width = scratch_row_bytes();
  for (int slot = 0; slot < kNumScratch; ++slot) {
    const bool logits_slot = slot == kLocalLogits || slot == kGatheredLogits;
    const size_t bytes =
        width[slot] * static_cast<size_t>(logits_slot ? capacity.logits_rows : capacity.tokens);
    RETURN_IF_ERROR(backend_.try_grow(scratch_[slot], bytes,
                                      "scratch buffer " + std::to_string(slot) + " (a step of " +
                                          std::to_string(capacity.tokens) + " tokens)"));
  }
  for (const LayerWeights& layer : layers_) {
    if (!layer.moe) continue;
    capacity.moe_rows = capacity.tokens * config_.routing.top_k;
    capacity.moe_hidden = config_.hidden_size;
    for (const MlpWeights& expert : layer.moe_weights.experts) {
      capacity.moe_inter = std::max(capacity.moe_inter, expert.inter_local);
    }
    if (layer.moe_weights.has_shared) {
      capacity.moe_shared_inter =
          std::max(capacity.moe_shared_inter, layer.moe_weights.shared.inter_local);
    }
  }
  RETURN_IF_ERROR(backend_.reserve_step(capacity));
  reserved_tokens_ = std::max(reserved_tokens_, capacity.tokens);
  reserved_logits_rows_ = std::max(reserved_logits_rows_, capacity.logits_rows);
  return ok_status();
}

void Model::release_workspace() {
  for (DeviceBuffer& buffer : scratch_) buffer = DeviceBuffer();
  backend_.release_step_buffers();
  reserved_tokens_ = 0;
  reserved_logits_rows_ = 0;
}

int64_t Model::workspace_bytes() const {
  int64_t bytes = 0;
  for (const DeviceBuffer& buffer : scratch_) bytes += static_cast<int64_t>(buffer.bytes());
  return bytes;
}

void Model::forward(const StepTensors& step, KvCache& cache, Mat hidden) {
  const int64_t tokens = step.num_tokens;
  const int64_t h = config_.hidden_size;
  DSHPC_CHECK(hidden.rows == tokens && hidden.cols == h && hidden.contiguous());
  if (tokens == 0) return;
  if (shard_.first_stage()) {
    backend_.embedding(embedding_.mat, vocab_begin_, step.token_ids, hidden);
    if (tp_.size() > 1) tp_.all_reduce_sum_typed(hidden.data, tokens * h, hidden.dtype);
  }
  Mat normed = scratch(kNormed, tokens, h);
  Mat delta = scratch(kDelta, tokens, h);
  const float eps = config_.rms_norm_eps;

  backend_.rmsnorm(hidden, layers_.front().input_norm.data(), eps, normed);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const LayerWeights& layer = layers_[i];
    const PagedKvView kv = cache.layer(static_cast<int64_t>(i));

    // Attention block: one all-reduce of the row-parallel o_proj output.
    if (config_.is_mla()) {
      attention_mla(layer, step, kv, normed, delta);
    } else {
      attention_llama(layer, step, kv, normed, delta);
    }
    if (tp_.size() > 1) tp_.all_reduce_sum_typed(delta.data, tokens * h, delta.dtype);

    // Feed-forward block: one all-reduce of the down projections (dense, shared and routed).
    // An MoE layer's gate takes the residual add and norm before it into its launch where it
    // can, and (one rank, a next layer) its experts' last launch those after it.
    bool next_normed = false;
    if (layer.moe) {
      const bool fuse_next = tp_.size() == 1 && i + 1 < layers_.size();
      const ResidualNorm next{hidden, fuse_next ? layers_[i + 1].input_norm.data() : nullptr, eps,
                              normed};
      next_normed = moe(layer.moe_weights, hidden, layer.post_attention_norm.data(), normed, delta,
                        fuse_next ? &next : nullptr);
    } else {
      backend_.add_rmsnorm(hidden, delta, layer.post_attention_norm.data(), eps, normed);
      mlp(layer.mlp, normed, delta, /*accumulate=*/false);
    }
    if (next_normed) continue;
    if (tp_.size() > 1) tp_.all_reduce_sum_typed(delta.data, tokens * h, delta.dtype);
    if (i + 1 < layers_.size()) {
      backend_.add_rmsnorm(hidden, delta, layers_[i + 1].input_norm.data(), eps, normed);
    } else {
      backend_.add(hidden, delta);
    }
  }
}

bool Model::graph_capturable() const {
  return tp_.size() == 1 || tp_.stream_ordered();
}

void Model::mlp(const MlpWeights& w, Mat normed, Mat out, bool accumulate) {
  const int64_t tokens = normed.rows;
  Mat gate_up = scratch(kMlpGateUp, tokens, 2 * w.inter_local);
  Mat act = scratch(kMlpAct, tokens, w.inter_local);
  backend_.matmul(normed, w.gate_up.mat, gate_up);          // [T, 2 · inter_local]
  backend_.swiglu(gate_up, act);                            // [T, inter_local]
  backend_.matmul(act, w.down.mat, out, true, accumulate);  // [T, hidden], partial sum over tp
}

bool Model::moe(const MoeWeights& w, Mat hidden, const void* norm_weight, Mat normed, Mat delta,
                const ResidualNorm* then) {
  const int64_t tokens = normed.rows;
  const MoeRoutingParams& routing = config_.routing;
  // Every tp rank routes every token (the router is replicated), then runs only its experts.
  // Router logits in float32 even with bf16 activations (as the reference gates in float32):
  // expert choice compares close scores.
  Mat router_logits = scratch(kRouterLogits, tokens, routing.num_experts, DType::kF32);
  Mat ids = scratch(kExpertIds, tokens, routing.top_k, DType::kI32);
  Mat weights = scratch(kExpertWeights, tokens, routing.top_k, DType::kF32);
  auto* expert_ids = static_cast<int32_t*>(ids.data);
  auto* expert_weights = static_cast<float*>(weights.data);
  // hidden += delta; normed = rmsnorm(hidden); logits [T, n_routed_experts]; ids and weights.
  const ExpertWeights shared{w.shared.gate_up.mat, w.shared.down.mat};
  const MoeExpertsAfterGate next{w.expert_begin, static_cast<int64_t>(w.experts.size()),
                                 w.has_shared ? &shared : nullptr};
  backend_.add_rmsnorm_moe_gate(
      hidden, delta, norm_weight, config_.rms_norm_eps, normed, w.router.mat, router_logits,
      static_cast<const float*>(w.bias.buffer.data()), routing, expert_ids, expert_weights, &next);
  Mat out = delta;  // the gate has read the attention's delta: the experts overwrite it
  if (w.has_shared) {
    // Shared experts: a tp-split dense MLP, in the routed experts' launches where the backend can.
    if (backend_.moe_experts_with_shared(
            normed, expert_ids, expert_weights, routing.top_k, w.expert_views.data(),
            w.expert_begin, static_cast<int64_t>(w.experts.size()), shared, out, then)) {
      return then != nullptr;
    }
    mlp(w.shared, normed, out, /*accumulate=*/false);
  } else {
    backend_.zero(out);
  }
  backend_.moe_experts(normed, expert_ids, expert_weights, routing.top_k, w.expert_views.data(),
                       w.expert_begin, static_cast<int64_t>(w.experts.size()), out);
  return false;
}

void Model::logits(Mat hidden_rows, Mat logits_out) {
  DSHPC_CHECK(shard_.last_stage(config_)) << "logits on a stage without the output head";
  const int64_t rows = hidden_rows.rows;
  DSHPC_CHECK(logits_out.rows == rows && logits_out.cols == config_.vocab_size);
  if (rows == 0) return;
  backend_.rmsnorm(hidden_rows, final_norm_.data(), config_.rms_norm_eps, hidden_rows);
  if (tp_.size() == 1) {
    backend_.matmul(hidden_rows, lm_head_.mat, logits_out);
    return;
  }
  // Vocabulary-parallel head: each rank computes its vocabulary slice, then an all-gather
  // ([tp, rows, vocab_local]) and a transpose into [rows, vocab].
  Mat local = scratch(kLocalLogits, rows, vocab_local_, logits_out.dtype);
  backend_.matmul(hidden_rows, lm_head_.mat, local);
  const int t = tp_.size();
  Mat gathered = scratch(kGatheredLogits, t * rows, vocab_local_, logits_out.dtype);
  tp_.all_gather_typed(local.data, gathered.data, rows * vocab_local_, local.dtype);
  for (int r = 0; r < t; ++r) {
    backend_.copy(gathered.row_slice(r * rows, rows),
                  logits_out.col_slice(r * vocab_local_, vocab_local_));
  }
}

}  // namespace dshpc
