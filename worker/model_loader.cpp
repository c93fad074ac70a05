// The weight table of each family (checkpoint name → local slice) and per-rank loading: every
// rank reads only its tensor-parallel slice of its pipeline stage's layers.
#include <algorithm>
#include <string>

#include "worker/model.h"

namespace dshpc {
namespace {

using Shapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

std::string layer_prefix(int64_t layer) {
  return "model.layers." + std::to_string(layer) + ".";
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Reads slices of checkpoint tensors into backend memory after checking full shapes.
class Loader {
 public:
  // plan_only: shapes are checked and bytes_ counts what would be loaded; nothing is read or
  // allocated (the weights returned are empty). Otherwise `progress` runs after each weight.
  Loader(const WeightSource& source, Backend& backend,
         const std::map<std::string, std::vector<int64_t>>& expected, int64_t& bytes,
         bool plan_only, const Model::LoadProgress& progress, int64_t planned_bytes)
      : source_(source),
        backend_(backend),
        expected_(expected),
        bytes_(bytes),
        plan_only_(plan_only),
        progress_(progress),
        planned_bytes_(planned_bytes) {}

  struct Part {
    std::string name;
    Range rows;
  };

  // Stacks the given row ranges of several [*, cols] tensors (same column range) into one weight.
  StatusOr<Weight> rows(const std::vector<Part>& parts, Range cols) {
    int64_t total_rows = 0;
    int64_t num_cols = -1;
    std::vector<int64_t> part_rows;
    std::vector<bool> two_d;
    for (const Part& part : parts) {
      ASSIGN_OR_RETURN(std::vector<int64_t> full, checked_shape(part.name));
      int64_t full_cols = full.size() > 1 ? full[1] : 1;
      int64_t nc = full.size() > 1 ? (cols.count < 0 ? full_cols - cols.begin : cols.count) : 1;
      if (num_cols >= 0 && nc != num_cols) return internal_error("fused weights differ in width");
      num_cols = nc;
      part_rows.push_back(part.rows.count < 0 ? full[0] - part.rows.begin : part.rows.count);
      two_d.push_back(full.size() > 1);
      total_rows += part_rows.back();
    }
    if (plan_only_) {
      bytes_ += total_rows * num_cols * static_cast<int64_t>(dtype_size(backend_.weight_dtype()));
      return Weight{};
    }
    host_.resize(static_cast<size_t>(total_rows * num_cols));
    int64_t row = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      RETURN_IF_ERROR(source_.read_f32(parts[i].name, parts[i].rows, two_d[i] ? cols : Range::all(),
                                       host_.data() + row * num_cols));
      row += part_rows[i];
    }
    Weight w;
    w.name = parts.front().name;
    const size_t count = host_.size();
    w.buffer = backend_.allocate(count * dtype_size(backend_.weight_dtype()));
    backend_.upload_weights(w.buffer.data(), host_.data(), count);
    w.mat = Mat::of(w.buffer.data(), backend_.weight_dtype(), total_rows, num_cols);
    bytes_ += static_cast<int64_t>(w.buffer.bytes());
    report();
    return w;
  }

  StatusOr<Weight> whole(const std::string& name) {
    return rows({{name, Range::all()}}, Range::all());
  }

  // A whole tensor kept in float32 whatever the backend's weight type (router biases: expert
  // choice compares scores that differ in their last bits).
  StatusOr<Weight> whole_f32(const std::string& name) {
    ASSIGN_OR_RETURN(std::vector<int64_t> full, checked_shape(name));
    int64_t count = 1;
    for (int64_t d : full) count *= d;
    if (plan_only_) {
      bytes_ += count * static_cast<int64_t>(sizeof(float));
      return Weight{};
    }
    host_.resize(static_cast<size_t>(count));
    RETURN_IF_ERROR(source_.read_f32(name, Range::all(), Range::all(), host_.data()));
    Weight w;
    w.name = name;
    w.buffer = backend_.allocate(host_.size() * sizeof(float));
    backend_.upload(w.buffer.data(), host_.data(), host_.size() * sizeof(float));
    w.mat = Mat::of(w.buffer.data(), DType::kF32, full.empty() ? 1 : full[0],
                    full.size() > 1 ? full[1] : 1);
    bytes_ += static_cast<int64_t>(w.buffer.bytes());
    report();
    return w;
  }

 private:
  void report() {
    // Allocation may round up: the total never falls below what is done.
    if (progress_) progress_(bytes_, std::max(planned_bytes_, bytes_));
  }

  StatusOr<std::vector<int64_t>> checked_shape(const std::string& name) {
    auto shape = source_.shape(name);
    if (!shape.ok()) {
      return not_found(source_.describe() + ": missing tensor " + name + " (" +
                       shape.status().message() + ")");
    }
    auto it = expected_.find(name);
    if (it != expected_.end() && *shape != it->second) {
      return invalid_argument(source_.describe() + ": tensor " + name + " has shape " +
                              shape_text(*shape) + " but the config needs " +
                              shape_text(it->second));
    }
    return *shape;
  }

  const WeightSource& source_;
  Backend& backend_;
  const std::map<std::string, std::vector<int64_t>>& expected_;
  int64_t& bytes_;
  const bool plan_only_;
  const Model::LoadProgress& progress_;
  const int64_t planned_bytes_;
  std::vector<float> host_;
};

}  // namespace

const char* tensor_split_name(TensorSplit split) {
  switch (split) {
    case TensorSplit::kReplicated:
      return "replicated";
    case TensorSplit::kRows:
      return "rows";
    case TensorSplit::kCols:
      return "cols";
    case TensorSplit::kExpert:
      return "expert";
  }
  return "?";
}

std::vector<TensorSpec> weight_table(const ModelConfig& c) {
  std::vector<TensorSpec> out;
  int64_t layer = -1;
  auto replicated = [&](std::string name, std::vector<int64_t> shape) {
    out.push_back({std::move(name), std::move(shape), TensorSplit::kReplicated, 1, -1, layer});
  };
  auto rows = [&](std::string name, std::vector<int64_t> shape, int64_t units) {
    out.push_back({std::move(name), std::move(shape), TensorSplit::kRows, units, -1, layer});
  };
  auto cols = [&](std::string name, std::vector<int64_t> shape, int64_t units) {
    out.push_back({std::move(name), std::move(shape), TensorSplit::kCols, units, -1, layer});
  };
  // A SwiGLU MLP split Megatron-style: gate/up by output rows, down by input columns.
  auto mlp = [&](const std::string& prefix, int64_t hidden, int64_t inter) {
    rows(prefix + "gate_proj.weight", {inter, hidden}, inter);
    rows(prefix + "up_proj.weight", {inter, hidden}, inter);
    cols(prefix + "down_proj.weight", {hidden, inter}, inter);
  };

  const int64_t h = c.hidden_size;
  rows("model.embed_tokens.weight", {c.vocab_size, h}, c.vocab_size);  // vocabulary-parallel
  replicated("model.norm.weight", {h});
  if (!c.tie_word_embeddings) rows("lm_head.weight", {c.vocab_size, h}, c.vocab_size);
  for (layer = 0; layer < c.num_layers; ++layer) {
    const std::string p = layer_prefix(layer);
    replicated(p + "input_layernorm.weight", {h});
    replicated(p + "post_attention_layernorm.weight", {h});
    const std::string a = p + "self_attn.";
    if (!c.is_mla()) {
      rows(a + "q_proj.weight", {c.num_heads * c.head_dim, h}, c.num_heads);
      rows(a + "k_proj.weight", {c.num_kv_heads * c.head_dim, h}, c.num_kv_heads);
      rows(a + "v_proj.weight", {c.num_kv_heads * c.head_dim, h}, c.num_kv_heads);
      cols(a + "o_proj.weight", {h, c.num_heads * c.head_dim}, c.num_heads);
    } else {
      if (c.q_lora_rank > 0) {
        replicated(a + "q_a_proj.weight", {c.q_lora_rank, h});
        replicated(a + "q_a_layernorm.weight", {c.q_lora_rank});
        rows(a + "q_b_proj.weight", {c.num_heads * c.qk_head_dim(), c.q_lora_rank}, c.num_heads);
      } else {
        rows(a + "q_proj.weight", {c.num_heads * c.qk_head_dim(), h}, c.num_heads);
      }
      replicated(a + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, h});
      replicated(a + "kv_a_layernorm.weight", {c.kv_lora_rank});
      rows(a + "kv_b_proj.weight",
           {c.num_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}, c.num_heads);
      cols(a + "o_proj.weight", {h, c.num_heads * c.v_head_dim}, c.num_heads);
    }
    if (c.is_moe_layer(layer)) {
      const std::string m = p + "mlp.";
      replicated(m + "gate.weight", {c.num_routed_experts, h});
      if (c.routing.method == MoeTopkMethod::kNoauxTc) {
        replicated(m + "gate.e_score_correction_bias", {c.num_routed_experts});
      }
      for (int64_t e = 0; e < c.num_routed_experts; ++e) {
        const std::string x = m + "experts." + std::to_string(e) + ".";
        const int64_t inter = c.moe_intermediate_size;
        for (auto [name, shape] : {std::pair{"gate_proj.weight", std::vector<int64_t>{inter, h}},
                                   std::pair{"up_proj.weight", std::vector<int64_t>{inter, h}},
                                   std::pair{"down_proj.weight", std::vector<int64_t>{h, inter}}}) {
          out.push_back({x + name, shape, TensorSplit::kExpert, c.num_routed_experts, e, layer});
        }
      }
      if (c.num_shared_experts > 0) {
        mlp(m + "shared_experts.", h, c.moe_intermediate_size * c.num_shared_experts);
      }
    } else {
      mlp(p + "mlp.", h, c.intermediate_size);
    }
  }
  return out;
}

Shapes Model::expected_tensors(const ModelConfig& c) {
  Shapes out;
  for (TensorSpec& spec : weight_table(c)) out.push_back({std::move(spec.name), spec.shape});
  return out;
}

std::optional<TensorSlice> owned_slice(const TensorSpec& spec, const ModelConfig& c,
                                       const ModelShard& shard) {
  const int64_t layer_end = shard.layer_end < 0 ? c.num_layers : shard.layer_end;
  bool on_stage;
  if (spec.layer >= 0) {
    on_stage = spec.layer >= shard.layer_begin && spec.layer < layer_end;
  } else if (spec.name == "model.embed_tokens.weight") {
    // The input embedding on the first stage; tied weights are the output head on the last too.
    on_stage = shard.first_stage() || (c.tie_word_embeddings && layer_end == c.num_layers);
  } else {
    on_stage = layer_end == c.num_layers;  // final norm and output head
  }
  if (!on_stage) return std::nullopt;

  const int64_t tp = shard.tp_size;
  const int64_t r = shard.tp_rank;
  const TensorSlice whole{Range::all(), Range::all()};
  switch (spec.split) {
    case TensorSplit::kReplicated:
      return whole;
    case TensorSplit::kExpert: {
      const int64_t per_rank = spec.units / tp;
      if (per_rank <= 0 || spec.expert / per_rank != r) return std::nullopt;
      return whole;
    }
    case TensorSplit::kRows:
    case TensorSplit::kCols: {
      const size_t dim = spec.split == TensorSplit::kRows ? 0 : 1;
      const int64_t unit_size = spec.shape[dim] / spec.units;
      // Enough units: each rank takes units / tp of them. Fewer units than ranks (kv heads):
      // consecutive groups of tp / units ranks share one.
      const Range part =
          spec.units >= tp ? Range{r * (spec.units / tp) * unit_size, (spec.units / tp) * unit_size}
                           : Range{(r / (tp / spec.units)) * unit_size, unit_size};
      return dim == 0 ? TensorSlice{part, Range::all()} : TensorSlice{Range::all(), part};
    }
  }
  return std::nullopt;
}

std::vector<SplitRequirement> split_requirements(const ModelConfig& c) {
  std::vector<SplitRequirement> out = {
      {"attention heads (num_attention_heads)", c.num_heads, SplitRule::kDivisibleByTp},
      {"vocabulary entries (vocab_size)", c.vocab_size, SplitRule::kDivisibleByTp},
      {"layers (num_hidden_layers)", c.num_layers, SplitRule::kAtLeastPp},
  };
  if (!c.is_mla()) {
    out.push_back({"key-value heads (num_key_value_heads)", c.num_kv_heads,
                   SplitRule::kDivisibleByTpOrReplicated});
  }
  bool any_dense = false, any_moe = false;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    (c.is_moe_layer(layer) ? any_moe : any_dense) = true;
  }
  if (any_dense) {
    out.push_back(
        {"MLP channels (intermediate_size)", c.intermediate_size, SplitRule::kDivisibleByTp});
  }
  if (any_moe) {
    out.push_back(
        {"routed experts (n_routed_experts)", c.num_routed_experts, SplitRule::kDivisibleByTp});
    if (c.num_shared_experts > 0) {
      out.push_back({"shared-expert channels (n_shared_experts × moe_intermediate_size)",
                     c.num_shared_experts * c.moe_intermediate_size, SplitRule::kDivisibleByTp});
    }
  }
  return out;
}

Status Model::check_shard(const ModelConfig& c, const ModelShard& shard) {
  if (shard.tp_size < 1 || shard.tp_rank < 0 || shard.tp_rank >= shard.tp_size) {
    return invalid_argument("tensor-parallel rank " + std::to_string(shard.tp_rank) +
                            " outside size " + std::to_string(shard.tp_size));
  }
  const int64_t end = shard.layer_end < 0 ? c.num_layers : shard.layer_end;
  if (shard.layer_begin < 0 || shard.layer_begin >= end || end > c.num_layers) {
    return invalid_argument("layer range [" + std::to_string(shard.layer_begin) + ", " +
                            std::to_string(end) + ") does not fit the model's " +
                            std::to_string(c.num_layers) + " layers");
  }
  ASSIGN_OR_RETURN(RankLayout layout,
                   RankLayout::create(shard.tp_size, ParallelConfig{shard.tp_size, 1, 1}));
  return check_splits(layout, split_requirements(c));
}

Status Model::load_weights(const WeightSource& source, bool plan_only, const LoadProgress& progress,
                           int64_t planned_bytes) {
  const ModelConfig& c = config_;
  const int r = shard_.tp_rank;
  std::map<std::string, std::vector<int64_t>> expected;
  for (auto& [name, shape] : expected_tensors(c)) expected[name] = shape;
  Loader load(source, backend_, expected, weight_bytes_, plan_only, progress, planned_bytes);
  const Range all = Range::all();
  auto split = [r](int64_t total, int tp) { return Range{r * (total / tp), total / tp}; };
  const int tp = shard_.tp_size;

  if (shard_.first_stage()) {
    ASSIGN_OR_RETURN(embedding_,
                     load.rows({{"model.embed_tokens.weight", split(c.vocab_size, tp)}}, all));
  }
  if (shard_.last_stage(c)) {
    ASSIGN_OR_RETURN(final_norm_, load.whole("model.norm.weight"));
    const char* head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    ASSIGN_OR_RETURN(lm_head_, load.rows({{head, split(c.vocab_size, tp)}}, all));
  }

  for (int64_t layer = shard_.layer_begin; layer < shard_.layer_end; ++layer) {
    LayerWeights w;
    w.index = layer;
    const std::string p = layer_prefix(layer);
    const std::string a = p + "self_attn.";
    ASSIGN_OR_RETURN(w.input_norm, load.whole(p + "input_layernorm.weight"));
    ASSIGN_OR_RETURN(w.post_attention_norm, load.whole(p + "post_attention_layernorm.weight"));
    if (!c.is_mla()) {
      const int64_t d = c.head_dim;
      // kv heads: split when there are at least tp of them, else replicated in groups of ranks.
      const int64_t kv_head_begin =
          c.num_kv_heads >= tp ? r * kv_heads_local_ : r / (tp / c.num_kv_heads);
      const Range q_rows{r * heads_local_ * d, heads_local_ * d};
      const Range kv_rows{kv_head_begin * d, kv_heads_local_ * d};
      ASSIGN_OR_RETURN(w.llama.qkv, load.rows({{a + "q_proj.weight", q_rows},
                                               {a + "k_proj.weight", kv_rows},
                                               {a + "v_proj.weight", kv_rows}},
                                              all));
      ASSIGN_OR_RETURN(w.llama.o, load.rows({{a + "o_proj.weight", all}}, q_rows));
    } else {
      const int64_t qk = c.qk_head_dim();
      const Range q_rows{r * heads_local_ * qk, heads_local_ * qk};
      if (c.q_lora_rank > 0) {
        ASSIGN_OR_RETURN(w.mla.q_a, load.whole(a + "q_a_proj.weight"));
        ASSIGN_OR_RETURN(w.mla.q_a_norm, load.whole(a + "q_a_layernorm.weight"));
        ASSIGN_OR_RETURN(w.mla.q_b, load.rows({{a + "q_b_proj.weight", q_rows}}, all));
      } else {
        ASSIGN_OR_RETURN(w.mla.q_b, load.rows({{a + "q_proj.weight", q_rows}}, all));
      }
      ASSIGN_OR_RETURN(w.mla.kv_a, load.whole(a + "kv_a_proj_with_mqa.weight"));
      ASSIGN_OR_RETURN(w.mla.kv_a_norm, load.whole(a + "kv_a_layernorm.weight"));
      const int64_t per_head = c.qk_nope_head_dim + c.v_head_dim;
      ASSIGN_OR_RETURN(w.mla.kv_b,
                       load.rows({{a + "kv_b_proj.weight",
                                   {r * heads_local_ * per_head, heads_local_ * per_head}}},
                                 all));
      ASSIGN_OR_RETURN(w.mla.o,
                       load.rows({{a + "o_proj.weight", all}},
                                 {r * heads_local_ * c.v_head_dim, heads_local_ * c.v_head_dim}));
    }

    auto load_mlp = [&](const std::string& prefix, int64_t inter, int parts,
                        int part) -> StatusOr<MlpWeights> {
      MlpWeights m;
      m.inter_local = inter / parts;
      const Range rows{part * m.inter_local, m.inter_local};
      ASSIGN_OR_RETURN(
          m.gate_up,
          load.rows({{prefix + "gate_proj.weight", rows}, {prefix + "up_proj.weight", rows}}, all));
      ASSIGN_OR_RETURN(m.down, load.rows({{prefix + "down_proj.weight", all}}, rows));
      return m;
    };

    if (c.is_moe_layer(layer)) {
      w.moe = true;
      MoeWeights& m = w.moe_weights;
      const std::string mp = p + "mlp.";
      ASSIGN_OR_RETURN(m.router, load.whole(mp + "gate.weight"));
      if (c.routing.method == MoeTopkMethod::kNoauxTc) {
        ASSIGN_OR_RETURN(m.bias, load.whole_f32(mp + "gate.e_score_correction_bias"));
      }
      m.expert_begin = r * experts_local_;
      for (int64_t e = m.expert_begin; e < m.expert_begin + experts_local_; ++e) {
        ASSIGN_OR_RETURN(MlpWeights expert, load_mlp(mp + "experts." + std::to_string(e) + ".",
                                                     c.moe_intermediate_size, 1, 0));
        m.experts.push_back(std::move(expert));
      }
      for (const MlpWeights& expert : m.experts) {
        m.expert_views.push_back({expert.gate_up.mat, expert.down.mat});
      }
      if (c.num_shared_experts > 0) {
        m.has_shared = true;
        ASSIGN_OR_RETURN(m.shared, load_mlp(mp + "shared_experts.",
                                            c.moe_intermediate_size * c.num_shared_experts, tp, r));
      }
    } else {
      ASSIGN_OR_RETURN(w.mlp, load_mlp(p + "mlp.", c.intermediate_size, tp, r));
    }
    layers_.push_back(std::move(w));
  }
  return ok_status();
}

}  // namespace dshpc
