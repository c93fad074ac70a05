// The naive reference model: see reference_model.h. Comments cite the transformers code each step
// mirrors.
#include "tests/unit/reference_model.h"

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <numeric>
#include <optional>
#include <stdexcept>

namespace dshpc::ref {
namespace {

namespace json = boost::json;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("reference: " + what);
}

const json::value* field(const json::object& o, const char* key) {
  auto it = o.find(key);
  return it == o.end() || it->value().is_null() ? nullptr : &it->value();
}
double num(const json::object& o, const char* key, std::optional<double> fallback = {}) {
  const json::value* v = field(o, key);
  if (v == nullptr) {
    if (!fallback) fail(std::string("config lacks ") + key);
    return *fallback;
  }
  if (v->is_int64()) return static_cast<double>(v->get_int64());
  if (v->is_uint64()) return static_cast<double>(v->get_uint64());
  if (v->is_double()) return v->get_double();
  fail(std::string("config field ") + key + " is not a number");
}
int64_t integer(const json::object& o, const char* key, std::optional<int64_t> fallback = {}) {
  std::optional<double> f;
  if (fallback) f = static_cast<double>(*fallback);
  return static_cast<int64_t>(num(o, key, f));
}
bool boolean(const json::object& o, const char* key, bool fallback) {
  const json::value* v = field(o, key);
  return v == nullptr ? fallback : v->as_bool();
}
std::string str(const json::object& o, const char* key, const std::string& fallback) {
  const json::value* v = field(o, key);
  return v == nullptr ? fallback : std::string(v->as_string());
}

// yarn_get_mscale of transformers / DeepSeek.
double get_mscale(double scale, double m) {
  return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
}

double silu(double x) {
  return x / (1.0 + std::exp(-x));
}

// Indices of the k largest values (ties are irrelevant for random continuous data); `margin`
// becomes the gap between the k-th and the (k+1)-th value.
std::vector<int64_t> top_k(const std::vector<double>& v, int64_t k, double* margin) {
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  if (k < static_cast<int64_t>(v.size())) *margin = std::min(*margin, v[idx[k - 1]] - v[idx[k]]);
  idx.resize(k);
  return idx;
}

}  // namespace

RefConfig parse_ref_config(const std::string& json_text) {
  const json::object o = json::parse(json_text).as_object();
  RefConfig c;
  const std::string arch = std::string(o.at("architectures").as_array().at(0).as_string());
  if (arch == "LlamaForCausalLM")
    c.family = Family::kLlama;
  else if (arch == "DeepseekV2ForCausalLM")
    c.family = Family::kDeepseekV2;
  else if (arch == "DeepseekV3ForCausalLM")
    c.family = Family::kDeepseekV3;
  else
    fail("unknown architecture " + arch);
  c.vocab = integer(o, "vocab_size");
  c.hidden = integer(o, "hidden_size");
  c.intermediate = integer(o, "intermediate_size");
  c.layers = integer(o, "num_hidden_layers");
  c.heads = integer(o, "num_attention_heads");
  c.kv_heads = integer(o, "num_key_value_heads", c.heads);
  c.head_dim = integer(o, "head_dim", c.hidden / c.heads);
  c.eps = num(o, "rms_norm_eps", 1e-6);
  c.tie = boolean(o, "tie_word_embeddings", false);
  c.max_pos = integer(o, "max_position_embeddings", 2048);
  c.theta = num(o, "rope_theta", 10000.0);
  const json::value* rs = field(o, "rope_scaling");
  if (rs == nullptr) rs = field(o, "rope_parameters");  // transformers 5 spelling
  if (rs != nullptr) {
    const json::object& r = rs->as_object();
    c.rope_type = str(r, "rope_type", str(r, "type", "default"));
    c.theta = num(r, "rope_theta", c.theta);
    if (c.rope_type != "default") c.factor = num(r, "factor");
    c.original_max_pos = integer(r, "original_max_position_embeddings", c.max_pos);
    c.beta_fast = num(r, "beta_fast", 32.0);
    c.beta_slow = num(r, "beta_slow", 1.0);
    c.mscale = num(r, "mscale", 0.0);
    c.mscale_all_dim = num(r, "mscale_all_dim", 0.0);
  }
  if (c.family == Family::kLlama) return c;
  c.q_lora = integer(o, "q_lora_rank", 0);
  c.kv_lora = integer(o, "kv_lora_rank");
  c.nope = integer(o, "qk_nope_head_dim");
  c.rope = integer(o, "qk_rope_head_dim");
  c.v_dim = integer(o, "v_head_dim");
  c.rope_interleave = boolean(o, "rope_interleave", true);
  c.experts = integer(o, "n_routed_experts", 0);
  if (c.experts > 0) {
    c.shared = integer(o, "n_shared_experts", 0);
    c.moe_inter = integer(o, "moe_intermediate_size");
    c.top_k = integer(o, "num_experts_per_tok");
    c.first_dense = integer(o, "first_k_dense_replace", 0);
    c.freq = integer(o, "moe_layer_freq", 1);
    c.n_group = integer(o, "n_group", 1);
    c.topk_group = integer(o, "topk_group", 1);
    c.topk_method = str(o, "topk_method", "greedy");
    c.norm_topk_prob = boolean(o, "norm_topk_prob", false);
    c.routed_scaling = num(o, "routed_scaling_factor", 1.0);
  }
  return c;
}

bool RefModel::is_moe_layer(int64_t layer) const {
  if (c_.family == Family::kLlama || c_.experts == 0 || layer < c_.first_dense) return false;
  return !opt_.honour_moe_layer_freq || layer % c_.freq == 0;
}

void RefModel::load(const WeightSource& source, const std::string& name, int64_t rows,
                    int64_t cols) {
  auto shape = source.shape(name);
  if (!shape.ok()) fail("missing tensor " + name + ": " + shape.status().message());
  const std::vector<int64_t> want =
      cols > 0 ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows};
  if (*shape != want) fail("tensor " + name + " has an unexpected shape");
  std::vector<float> buf(static_cast<size_t>(rows * std::max<int64_t>(cols, 1)));
  Status st = source.read_f32(name, Range::all(), Range::all(), buf.data());
  if (!st.ok()) fail("reading " + name + ": " + st.message());
  Tensor t;
  t.rows = rows;
  t.cols = std::max<int64_t>(cols, 1);
  t.v.assign(buf.begin(), buf.end());
  weights_[name] = std::move(t);
}

const RefModel::Tensor& RefModel::w(const std::string& name) const {
  auto it = weights_.find(name);
  if (it == weights_.end()) fail("no weight " + name);
  return it->second;
}

RefModel::RefModel(const RefConfig& config, const WeightSource& source, RefOptions options)
    : c_(config), opt_(options) {
  const int64_t h = c_.hidden;
  auto mlp_weights = [&](const std::string& p, int64_t inter) {
    load(source, p + "gate_proj.weight", inter, h);
    load(source, p + "up_proj.weight", inter, h);
    load(source, p + "down_proj.weight", h, inter);
  };
  load(source, "model.embed_tokens.weight", c_.vocab, h);
  load(source, "model.norm.weight", h, 0);
  if (!c_.tie) load(source, "lm_head.weight", c_.vocab, h);
  for (int64_t l = 0; l < c_.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string a = p + "self_attn.";
    load(source, p + "input_layernorm.weight", h, 0);
    load(source, p + "post_attention_layernorm.weight", h, 0);
    if (c_.family == Family::kLlama) {
      load(source, a + "q_proj.weight", c_.heads * c_.head_dim, h);
      load(source, a + "k_proj.weight", c_.kv_heads * c_.head_dim, h);
      load(source, a + "v_proj.weight", c_.kv_heads * c_.head_dim, h);
      load(source, a + "o_proj.weight", h, c_.heads * c_.head_dim);
    } else {
      const int64_t qk = c_.nope + c_.rope;
      if (c_.q_lora > 0) {
        load(source, a + "q_a_proj.weight", c_.q_lora, h);
        load(source, a + "q_a_layernorm.weight", c_.q_lora, 0);
        load(source, a + "q_b_proj.weight", c_.heads * qk, c_.q_lora);
      } else {
        load(source, a + "q_proj.weight", c_.heads * qk, h);
      }
      load(source, a + "kv_a_proj_with_mqa.weight", c_.kv_lora + c_.rope, h);
      load(source, a + "kv_a_layernorm.weight", c_.kv_lora, 0);
      load(source, a + "kv_b_proj.weight", c_.heads * (c_.nope + c_.v_dim), c_.kv_lora);
      load(source, a + "o_proj.weight", h, c_.heads * c_.v_dim);
    }
    if (is_moe_layer(l)) {
      load(source, p + "mlp.gate.weight", c_.experts, h);
      if (c_.family == Family::kDeepseekV3)
        load(source, p + "mlp.gate.e_score_correction_bias", c_.experts, 0);
      for (int64_t e = 0; e < c_.experts; ++e)
        mlp_weights(p + "mlp.experts." + std::to_string(e) + ".", c_.moe_inter);
      if (c_.shared > 0) mlp_weights(p + "mlp.shared_experts.", c_.moe_inter * c_.shared);
    } else {
      mlp_weights(p + "mlp.", c_.intermediate);
    }
  }
  inv_freq_ = rope_inv_freq();
  rope_mult_ = rope_attention_factor();
}

// modeling_rope_utils: _compute_default_rope_parameters, _compute_linear_scaling_rope_parameters,
// _compute_yarn_parameters (truncate = true, factor used as given).
RefModel::Vec RefModel::rope_inv_freq() const {
  const int64_t dim = c_.family == Family::kLlama ? c_.head_dim : c_.rope;
  Vec extrapolation(dim / 2), inv(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) extrapolation[i] = 1.0 / std::pow(c_.theta, 2.0 * i / dim);
  if (c_.rope_type == "default") return extrapolation;
  if (c_.rope_type == "linear") {
    for (int64_t i = 0; i < dim / 2; ++i) inv[i] = extrapolation[i] / c_.factor;
    return inv;
  }
  if (c_.rope_type != "yarn") fail("rope type " + c_.rope_type);
  auto correction_dim = [&](double rotations) {
    return dim * std::log(c_.original_max_pos / (rotations * 2 * M_PI)) / (2 * std::log(c_.theta));
  };
  double low = std::max(std::floor(correction_dim(c_.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(c_.beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double extrapolation_factor = 1.0 - ramp;
    inv[i] = extrapolation[i] / c_.factor * (1.0 - extrapolation_factor) +
             extrapolation[i] * extrapolation_factor;
  }
  return inv;
}

double RefModel::rope_attention_factor() const {
  if (c_.rope_type != "yarn") return 1.0;
  if (c_.mscale != 0.0 && c_.mscale_all_dim != 0.0) {
    return get_mscale(c_.factor, c_.mscale) / get_mscale(c_.factor, c_.mscale_all_dim);
  }
  return get_mscale(c_.factor, 1.0);
}

// Rotates v[0, dim) for position `pos`: adjacent pairs (x[2i], x[2i+1]) when interleaved (V2's
// complex multiply, V3's apply_rotary_pos_emb_interleave up to a permutation shared by q and k),
// else rotate_half pairs (x[i], x[i + dim/2]). cos and sin carry the YaRN attention factor.
void RefModel::rotate(double* v, int64_t dim, int64_t pos, bool interleaved) const {
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double cs = std::cos(pos * inv_freq_[i]) * rope_mult_;
    const double sn = std::sin(pos * inv_freq_[i]) * rope_mult_;
    const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + dim / 2;
    const double x0 = v[a], x1 = v[b];
    v[a] = x0 * cs - x1 * sn;
    v[b] = x1 * cs + x0 * sn;
  }
}

RefModel::Vec RefModel::matvec(const std::string& name, const Vec& x) const {
  const Tensor& t = w(name);
  if (static_cast<int64_t>(x.size()) != t.cols) fail("matvec width for " + name);
  Vec y(t.rows, 0.0);
  for (int64_t r = 0; r < t.rows; ++r) {
    double s = 0.0;
    for (int64_t k = 0; k < t.cols; ++k) s += t.at(r, k) * x[k];
    y[r] = s;
  }
  return y;
}

RefModel::Vec RefModel::rmsnorm(const Vec& x, const std::string& weight, double eps) const {
  double ss = 0.0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  const Tensor& g = w(weight);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g.v[i];
  return y;
}

// LlamaMLP / DeepseekV3MLP: down(silu(gate x) * up x).
RefModel::Vec RefModel::mlp(const std::string& prefix, const Vec& x) const {
  Vec g = matvec(prefix + "gate_proj.weight", x);
  const Vec u = matvec(prefix + "up_proj.weight", x);
  for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
  return matvec(prefix + "down_proj.weight", g);
}

// DeepseekV2MoEGate / DeepseekV3TopkRouter + the expert sum + shared experts.
RefModel::Vec RefModel::moe(const std::string& prefix, const Vec& x) const {
  const int64_t n = c_.experts, per_group = n / c_.n_group;
  const Vec logits = matvec(prefix + "gate.weight", x);
  Vec scores(n);
  std::vector<int64_t> chosen;
  Vec weights;
  auto group_mask = [&](const Vec& group_scores, const Vec& values, double masked) {
    const std::vector<int64_t> keep = top_k(group_scores, c_.topk_group, &min_margin_);
    Vec out(n, masked);
    for (int64_t g : keep) {
      for (int64_t e = g * per_group; e < (g + 1) * per_group; ++e) out[e] = values[e];
    }
    return out;
  };
  if (c_.family == Family::kDeepseekV2) {
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (int64_t e = 0; e < n; ++e) sum += (scores[e] = std::exp(logits[e] - mx));
    for (double& s : scores) s /= sum;
    Vec choice = scores;
    if (c_.topk_method == "group_limited_greedy") {
      Vec gs(c_.n_group, -1e300);
      for (int64_t e = 0; e < n; ++e) gs[e / per_group] = std::max(gs[e / per_group], scores[e]);
      choice = group_mask(gs, scores, 0.0);
    } else if (c_.topk_method != "greedy") {
      fail("V2 topk_method " + c_.topk_method);
    }
    chosen = top_k(choice, c_.top_k, &min_margin_);
    for (int64_t e : chosen) weights.push_back(scores[e]);
    if (opt_.v2_norm_like_deepseek && c_.top_k > 1 && c_.norm_topk_prob) {
      const double s = std::accumulate(weights.begin(), weights.end(), 0.0) + 1e-20;
      for (double& v : weights) v /= s;
    } else {
      for (double& v : weights) v *= c_.routed_scaling;
    }
  } else {
    const Tensor& bias = w(prefix + "gate.e_score_correction_bias");
    Vec choice(n);
    for (int64_t e = 0; e < n; ++e) {
      scores[e] = 1.0 / (1.0 + std::exp(-logits[e]));
      choice[e] = scores[e] + bias.v[e];
    }
    Vec gs(c_.n_group, 0.0);
    for (int64_t g = 0; g < c_.n_group; ++g) {
      Vec members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
      std::sort(members.rbegin(), members.rend());
      gs[g] = members[0] + members[1];
    }
    choice = group_mask(gs, choice, opt_.v3_mask_with_zero ? 0.0 : -INFINITY);
    chosen = top_k(choice, c_.top_k, &min_margin_);
    for (int64_t e : chosen) weights.push_back(scores[e]);
    if (c_.norm_topk_prob) {
      const double s = std::accumulate(weights.begin(), weights.end(), 0.0) + 1e-20;
      for (double& v : weights) v /= s;
    }
    for (double& v : weights) v *= c_.routed_scaling;
  }
  Vec out(x.size(), 0.0);
  for (size_t j = 0; j < chosen.size(); ++j) {
    const Vec y = mlp(prefix + "experts." + std::to_string(chosen[j]) + ".", x);
    for (size_t i = 0; i < out.size(); ++i) out[i] += weights[j] * y[i];
  }
  if (c_.shared > 0) {
    const Vec y = mlp(prefix + "shared_experts.", x);
    for (size_t i = 0; i < out.size(); ++i) out[i] += y[i];
  }
  return out;
}

// Causal softmax attention of query head rows q[t] over keys k[s], values v[s], s <= t.
static std::vector<double> attend(const std::vector<std::vector<double>>& q_heads, int64_t t,
                                  const std::vector<std::vector<double>>& keys,
                                  const std::vector<std::vector<double>>& values, int64_t head_q,
                                  int64_t head_kv, int64_t dk, int64_t dv, double scale) {
  std::vector<double> p(t + 1);
  double mx = -1e300;
  for (int64_t s = 0; s <= t; ++s) {
    double dot = 0.0;
    for (int64_t i = 0; i < dk; ++i) dot += q_heads[t][head_q * dk + i] * keys[s][head_kv * dk + i];
    p[s] = dot * scale;
    mx = std::max(mx, p[s]);
  }
  double sum = 0.0;
  for (double& v : p) sum += (v = std::exp(v - mx));
  std::vector<double> out(dv, 0.0);
  for (int64_t s = 0; s <= t; ++s) {
    for (int64_t i = 0; i < dv; ++i) out[i] += p[s] / sum * values[s][head_kv * dv + i];
  }
  return out;
}

// LlamaAttention (eager): GQA via repeat_kv (q head h reads kv head h / (heads / kv_heads)).
RefModel::Seq RefModel::attention_llama(const std::string& a, const Seq& x) const {
  const int64_t T = x.size(), d = c_.head_dim, group = c_.heads / c_.kv_heads;
  Seq q(T), k(T), v(T), out(T);
  for (int64_t t = 0; t < T; ++t) {
    q[t] = matvec(a + "q_proj.weight", x[t]);
    k[t] = matvec(a + "k_proj.weight", x[t]);
    v[t] = matvec(a + "v_proj.weight", x[t]);
    for (int64_t hq = 0; hq < c_.heads; ++hq) rotate(&q[t][hq * d], d, t, false);
    for (int64_t hk = 0; hk < c_.kv_heads; ++hk) rotate(&k[t][hk * d], d, t, false);
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  for (int64_t t = 0; t < T; ++t) {
    Vec concat;
    for (int64_t hq = 0; hq < c_.heads; ++hq) {
      const Vec o = attend(q, t, k, v, hq, hq / group, d, d, scale);
      concat.insert(concat.end(), o.begin(), o.end());
    }
    out[t] = matvec(a + "o_proj.weight", concat);
  }
  return out;
}

// DeepseekV2Attention / DeepseekV3Attention, naive: per head, key = [k_nope ; k_pe], query =
// [q_nope ; q_pe], value = v from kv_b_proj(kv_a_layernorm(c)).
RefModel::Seq RefModel::attention_mla(const std::string& a, const Seq& x) const {
  const int64_t T = x.size(), H = c_.heads, qk = c_.nope + c_.rope;
  const bool interleaved = c_.family == Family::kDeepseekV2 || c_.rope_interleave;
  const double latent_eps = opt_.latent_norm_uses_config_eps ? c_.eps : 1e-6;
  Seq q(T), k(T, Vec(H * qk)), v(T, Vec(H * c_.v_dim)), out(T);
  for (int64_t t = 0; t < T; ++t) {
    q[t] = c_.q_lora > 0
               ? matvec(a + "q_b_proj.weight", rmsnorm(matvec(a + "q_a_proj.weight", x[t]),
                                                       a + "q_a_layernorm.weight", latent_eps))
               : matvec(a + "q_proj.weight", x[t]);
    const Vec ckv = matvec(a + "kv_a_proj_with_mqa.weight", x[t]);
    const Vec latent(ckv.begin(), ckv.begin() + c_.kv_lora);
    Vec k_pe(ckv.begin() + c_.kv_lora, ckv.end());
    const Vec kv =
        matvec(a + "kv_b_proj.weight", rmsnorm(latent, a + "kv_a_layernorm.weight", latent_eps));
    rotate(k_pe.data(), c_.rope, t, interleaved);
    for (int64_t h = 0; h < H; ++h) {
      rotate(&q[t][h * qk + c_.nope], c_.rope, t, interleaved);
      const double* src = &kv[h * (c_.nope + c_.v_dim)];
      std::copy(src, src + c_.nope, &k[t][h * qk]);
      std::copy(k_pe.begin(), k_pe.end(), &k[t][h * qk + c_.nope]);
      std::copy(src + c_.nope, src + c_.nope + c_.v_dim, &v[t][h * c_.v_dim]);
    }
  }
  double scale = 1.0 / std::sqrt(static_cast<double>(qk));
  if (c_.family == Family::kDeepseekV3 && c_.rope_type != "default" && c_.mscale_all_dim != 0.0) {
    const double m = get_mscale(c_.factor, c_.mscale_all_dim);
    scale *= m * m;
  }
  for (int64_t t = 0; t < T; ++t) {
    Vec concat;
    for (int64_t h = 0; h < H; ++h) {
      const Vec o = attend(q, t, k, v, h, h, qk, c_.v_dim, scale);
      concat.insert(concat.end(), o.begin(), o.end());
    }
    out[t] = matvec(a + "o_proj.weight", concat);
  }
  return out;
}

std::vector<std::vector<double>> RefModel::forward(const std::vector<int32_t>& tokens) const {
  const int64_t T = tokens.size(), h = c_.hidden;
  const Tensor& embed = w("model.embed_tokens.weight");
  Seq x(T, Vec(h));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < h; ++i) x[t][i] = embed.at(tokens[t], i);
  }
  for (int64_t l = 0; l < c_.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Seq normed(T);
    for (int64_t t = 0; t < T; ++t) normed[t] = rmsnorm(x[t], p + "input_layernorm.weight", c_.eps);
    const Seq attn = c_.family == Family::kLlama ? attention_llama(p + "self_attn.", normed)
                                                 : attention_mla(p + "self_attn.", normed);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < h; ++i) x[t][i] += attn[t][i];
      const Vec n = rmsnorm(x[t], p + "post_attention_layernorm.weight", c_.eps);
      const Vec m = is_moe_layer(l) ? moe(p + "mlp.", n) : mlp(p + "mlp.", n);
      for (int64_t i = 0; i < h; ++i) x[t][i] += m[i];
    }
  }
  std::vector<std::vector<double>> logits(T);
  for (int64_t t = 0; t < T; ++t) {
    logits[t] = matvec(c_.tie ? "model.embed_tokens.weight" : "lm_head.weight",
                       rmsnorm(x[t], "model.norm.weight", c_.eps));
  }
  return logits;
}

}  // namespace dshpc::ref
