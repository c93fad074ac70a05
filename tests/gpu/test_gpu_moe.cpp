// MoE routing and routed experts of the CUDA backend against the CPU backend: V2's softmax with
// greedy and group-limited choice, V3's sigmoid noaux_tc with the correction bias and −inf
// masking of dropped groups, and the experts end to end (permutation, grouped products, weighted
// scatter-add) for a rank that holds only a slice of the experts.
#include <algorithm>
#include <numeric>

#include "gpu_test_util.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/launchers.h"

namespace dshpc::gpu_test {
namespace {

using GpuMoe = BackendPair;

MoeRoutingParams v2_greedy() {
  MoeRoutingParams p;
  p.num_experts = 64;
  p.top_k = 6;
  p.scoring = MoeScoring::kSoftmax;
  p.method = MoeTopkMethod::kGreedy;
  p.norm_topk_prob = false;
  p.routed_scaling_factor = 1.0f;
  return p;
}

MoeRoutingParams v2_group_limited() {
  MoeRoutingParams p;
  p.num_experts = 160;
  p.top_k = 6;
  p.num_groups = 8;
  p.topk_groups = 3;
  p.scoring = MoeScoring::kSoftmax;
  p.method = MoeTopkMethod::kGroupLimitedGreedy;
  p.norm_topk_prob = false;
  p.routed_scaling_factor = 16.0f;
  return p;
}

MoeRoutingParams v3_noaux() {
  MoeRoutingParams p;
  p.num_experts = 256;
  p.top_k = 8;
  p.num_groups = 8;
  p.topk_groups = 4;
  p.scoring = MoeScoring::kSigmoid;
  p.method = MoeTopkMethod::kNoauxTc;
  p.norm_topk_prob = true;
  p.routed_scaling_factor = 2.5f;
  return p;
}

MoeRoutingParams v2_lite_normalised() {
  MoeRoutingParams p = v2_greedy();
  p.norm_topk_prob = true;
  return p;
}

// More experts than one warp routes from registers (256): the whole CTA routes, grouped.
MoeRoutingParams wide_group_limited() {
  MoeRoutingParams p = v2_group_limited();
  p.num_experts = 320;
  p.num_groups = 10;
  p.topk_groups = 4;
  return p;
}

TEST_P(GpuMoe, RoutingMatchesCpuExactly) {
  const int64_t tokens = 77;
  uint32_t seed = 100;
  for (const MoeRoutingParams& p :
       {v2_greedy(), v2_group_limited(), v3_noaux(), v2_lite_normalised(), wide_group_limited()}) {
    SCOPED_TRACE(testing::Message()
                 << p.num_experts << " experts, method " << static_cast<int>(p.method));
    // Router logits are float32 in the model (a float32 output of the gate product); bf16 logits
    // are accepted too and tested in the bf16 mode.
    for (DType logits_dtype : {DType::kF32, dtype()}) {
      const std::vector<float> logits =
          representable(random_values(tokens * p.num_experts, seed++, 2.0f), logits_dtype);
      // Biases of both signs, large enough to change the choice (V3's are about ±0.5 … 5).
      std::vector<float> bias = random_values(p.num_experts, seed++, 0.5f);
      Tensor cpu_l = upload_tensor(*cpu_, logits, tokens, p.num_experts, DType::kF32);
      Tensor gpu_l = upload_tensor(*gpu_, logits, tokens, p.num_experts, logits_dtype);
      DeviceBuffer cpu_bias = upload_raw(*cpu_, bias), gpu_bias = upload_raw(*gpu_, bias);
      const bool biased = p.method == MoeTopkMethod::kNoauxTc;
      DeviceBuffer cpu_ids = cpu_->allocate(tokens * p.top_k * 4);
      DeviceBuffer gpu_ids = gpu_->allocate(tokens * p.top_k * 4);
      DeviceBuffer cpu_w = cpu_->allocate(tokens * p.top_k * 4);
      DeviceBuffer gpu_w = gpu_->allocate(tokens * p.top_k * 4);
      cpu_->moe_route(cpu_l.mat, biased ? cpu_bias.as<float>() : nullptr, p, cpu_ids.as<int32_t>(),
                      cpu_w.as<float>());
      gpu_->moe_route(gpu_l.mat, biased ? gpu_bias.as<float>() : nullptr, p, gpu_ids.as<int32_t>(),
                      gpu_w.as<float>());
      const size_t n = static_cast<size_t>(tokens * p.top_k);
      // The same experts in the same order (ties are broken alike, by index).
      EXPECT_EQ(download_raw<int32_t>(*gpu_, gpu_ids.data(), n),
                download_raw<int32_t>(*cpu_, cpu_ids.data(), n));
      // Weights in float32 on both sides: only exp's and the sums' last bits differ.
      EXPECT_CLOSE(download_raw<float>(*gpu_, gpu_w.data(), n),
                   download_raw<float>(*cpu_, cpu_w.data(), n), kF32Tol);
    }
  }
}

// Backend::moe_gate: the router product and the routing, in one launch for steps of up to
// kMoeGateMaxTokens tokens. The logits it stores are checked against the CPU's product; the
// routing of those very logits must then be the CPU's exactly. Three launches per case in a row
// check that the form's state is left as found (ids are reset to −1 before each): on sm_90 the
// routers of up to 128 experts run as one cluster (GateAsOneClusterEqualsTheOneCtaForm compares
// the forms), the larger ones in the one-CTA form, whose last-CTA counter must return to zero.
TEST_P(GpuMoe, GateIsTheRouterProductAndTheRouting) {
  const int64_t hidden = 2048;
  uint32_t seed = 300;
  // 20 experts: the last CTA of the product has warps without an expert.
  MoeRoutingParams twenty = v2_greedy();
  twenty.num_experts = 20;
  twenty.top_k = 4;
  for (const MoeRoutingParams& p :
       {v2_lite_normalised(), v2_group_limited(), v3_noaux(), twenty, wide_group_limited()}) {
    for (int64_t tokens : {int64_t{1}, int64_t{3}, int64_t{8}, int64_t{9}}) {
      SCOPED_TRACE(testing::Message() << p.num_experts << " experts, method "
                                      << static_cast<int>(p.method) << ", " << tokens << " tokens");
      const std::vector<float> x = values(tokens * hidden, seed++);
      const std::vector<float> router = values(p.num_experts * hidden, seed++, 0.05f);
      const std::vector<float> bias = random_values(p.num_experts, seed++, 0.5f);
      const bool biased = p.method == MoeTopkMethod::kNoauxTc;
      Tensor cpu_x = upload_tensor(*cpu_, x, tokens, hidden, DType::kF32);
      Tensor gpu_x = upload_tensor(*gpu_, x, tokens, hidden, dtype(), hidden + 8);
      Tensor cpu_r = upload_tensor(*cpu_, router, p.num_experts, hidden, DType::kF32);
      Tensor gpu_r = upload_tensor(*gpu_, router, p.num_experts, hidden, dtype());
      const std::vector<float> zeros(tokens * p.num_experts, 0.0f);
      Tensor cpu_l = upload_tensor(*cpu_, zeros, tokens, p.num_experts, DType::kF32);
      Tensor gpu_l = upload_tensor(*gpu_, zeros, tokens, p.num_experts, DType::kF32);
      DeviceBuffer cpu_bias = upload_raw(*cpu_, bias), gpu_bias = upload_raw(*gpu_, bias);
      const size_t n = static_cast<size_t>(tokens * p.top_k);
      DeviceBuffer gpu_ids = gpu_->allocate(n * 4), gpu_w = gpu_->allocate(n * 4);
      const int64_t fused_before = cuda_path_counters(*gpu_).moe_gate;
      for (int launch = 0; launch < 3; ++launch) {
        gpu_->upload(gpu_ids.data(), std::vector<int32_t>(n, -1).data(), n * 4);
        gpu_->moe_gate(gpu_x.mat, gpu_r.mat, gpu_l.mat, biased ? gpu_bias.as<float>() : nullptr, p,
                       gpu_ids.as<int32_t>(), gpu_w.as<float>());
        gpu_->synchronize();
        // The logits: float32 sums of `hidden` products of the same stored values.
        cpu_->matmul(cpu_x.mat, cpu_r.mat, cpu_l.mat);
        const std::vector<float> logits = download_tensor(*gpu_, gpu_l.mat);
        EXPECT_CLOSE(logits, download_tensor(*cpu_, cpu_l.mat), 10 * kF32Tol)
            << "launch " << launch;
        // The CPU's routing of the GPU's logits.
        std::vector<int32_t> ref_ids(n);
        std::vector<float> ref_w(n);
        moe_route_cpu(logits.data(), biased ? bias.data() : nullptr, tokens, p, ref_ids.data(),
                      ref_w.data());
        EXPECT_EQ(download_raw<int32_t>(*gpu_, gpu_ids.data(), n), ref_ids) << "launch " << launch;
        EXPECT_CLOSE(download_raw<float>(*gpu_, gpu_w.data(), n), ref_w, kF32Tol)
            << "launch " << launch;
      }
      const bool fused = tokens <= cuda::kMoeGateMaxTokens;
      EXPECT_EQ(cuda_path_counters(*gpu_).moe_gate - fused_before, fused ? 3 : 0);
    }
  }
}

// Routers of up to kMoeGateClusterMaxExperts experts run as one thread block cluster (sm_90):
// the logits pass to the routing CTA through distributed shared memory, which also builds the
// experts' index where the experts that follow are named. Its outputs must be bit-identical to
// the one-CTA form's (DSHPC_MOE_GATE_CLUSTER=0: the routing CTA found by a device counter),
// which GateIsTheRouterProductAndTheRouting checks against the CPU, and the routing of its own
// logits must be the CPU's. The index is checked through the routed experts that read it: their
// output must equal the one-CTA form's bit for bit. Cluster sizes 1 (8 experts), 3 (20: the last
// CTA has warps without an expert), 8 (64: an expert a warp; 100: one or two; 128: two),
// softmax and sigmoid, greedy, group-limited and noaux_tc; widths 1,536 (the router rows'
// first loads only partly used), 2,048 and 7,168 (loads after the first); 1 token (its own
// instance) and 2, 5 and 8. Two launches each check that neither form leaves state behind.
TEST_P(GpuMoe, GateAsOneClusterEqualsTheOneCtaForm) {
  if (!cuda::cluster_launch_supported() || !cuda::moe_gate_cluster_compiled()) {
    GTEST_SKIP() << "no thread block clusters here (an sm_90 device and sm_90 code need both)";
  }
  std::unique_ptr<Backend> one_cta;
  {
    ScopedEnv off("DSHPC_MOE_GATE_CLUSTER", "0");
    one_cta = cuda_backend(dtype());
  }
  ASSERT_NE(one_cta, nullptr);
  uint32_t seed = 700;
  MoeRoutingParams eight = v2_greedy();
  eight.num_experts = 8;
  eight.top_k = 2;
  MoeRoutingParams twenty = v2_greedy();
  twenty.num_experts = 20;
  twenty.top_k = 4;
  MoeRoutingParams hundred = v2_lite_normalised();
  hundred.num_experts = 100;
  MoeRoutingParams grouped_128 = v2_group_limited();
  grouped_128.num_experts = 128;
  MoeRoutingParams noaux_64 = v3_noaux();
  noaux_64.num_experts = 64;
  noaux_64.top_k = 6;
  struct Case {
    MoeRoutingParams p;
    int64_t hidden;
  };
  const int64_t inter = 64;
  for (const Case& c : {Case{eight, 2048}, Case{twenty, 1536}, Case{v2_lite_normalised(), 2048},
                        Case{v2_lite_normalised(), 7168}, Case{hundred, 2048},
                        Case{grouped_128, 2048}, Case{noaux_64, 7168}}) {
    const MoeRoutingParams& p = c.p;
    const int64_t hidden = c.hidden;
    // The local experts of the index: a slice from a quarter in, so that some pairs have none.
    const int64_t begin = p.num_experts / 4, local = std::min<int64_t>(16, p.num_experts / 2);
    const std::vector<float> router = values(p.num_experts * hidden, seed++, 0.05f);
    const std::vector<float> bias = random_values(p.num_experts, seed++, 0.5f);
    std::vector<std::vector<float>> gate_up(local), down(local);
    for (int64_t e = 0; e < local; ++e) {
      gate_up[e] = values(2 * inter * hidden, seed++, 1.0f / 16);
      down[e] = values(hidden * inter, seed++, 1.0f / 8);
    }
    const bool biased = p.method == MoeTopkMethod::kNoauxTc;
    for (int64_t tokens : {int64_t{1}, int64_t{2}, int64_t{5}, int64_t{8}}) {
      SCOPED_TRACE(testing::Message()
                   << p.num_experts << " experts, method " << static_cast<int>(p.method)
                   << ", hidden " << hidden << ", " << tokens << " tokens");
      const std::vector<float> x = values(tokens * hidden, seed++);
      const size_t n = static_cast<size_t>(tokens * p.top_k);
      struct Outputs {
        std::vector<float> logits, weights, out;
        std::vector<int32_t> ids;
      };
      auto run = [&](Backend& b) {
        Tensor gx = upload_tensor(b, x, tokens, hidden, dtype(), hidden + 8);
        Tensor dense_x = upload_tensor(b, x, tokens, hidden, dtype());
        Tensor gr = upload_tensor(b, router, p.num_experts, hidden, dtype());
        Tensor gl = upload_tensor(b, std::vector<float>(tokens * p.num_experts, 0.0f), tokens,
                                  p.num_experts, DType::kF32);
        DeviceBuffer gb = upload_raw(b, bias);
        DeviceBuffer ids = b.allocate(n * 4), w = b.allocate(n * 4);
        std::vector<Tensor> gu, dn;
        std::vector<ExpertWeights> views;
        for (int64_t e = 0; e < local; ++e) {
          gu.push_back(upload_tensor(b, gate_up[e], 2 * inter, hidden, dtype()));
          dn.push_back(upload_tensor(b, down[e], hidden, inter, dtype()));
          views.push_back({gu.back().mat, dn.back().mat});
        }
        const MoeExpertsAfterGate next{begin, local, nullptr};
        std::vector<Outputs> launches;
        for (int launch = 0; launch < 2; ++launch) {
          b.upload(ids.data(), std::vector<int32_t>(n, -1).data(), n * 4);
          // The first launch names the experts (the index), the second does not.
          b.moe_gate(gx.mat, gr.mat, gl.mat, biased ? gb.as<float>() : nullptr, p,
                     ids.as<int32_t>(), w.as<float>(), launch == 0 ? &next : nullptr);
          Tensor out =
              upload_tensor(b, std::vector<float>(tokens * hidden, 0.0f), tokens, hidden, dtype());
          if (launch == 0) {  // (the experts take x whole: the same values, unpadded)
            b.moe_experts(dense_x.mat, ids.as<int32_t>(), w.as<float>(), p.top_k, views.data(),
                          begin, local, out.mat);
          }
          b.synchronize();
          launches.push_back({download_tensor(b, gl.mat), download_raw<float>(b, w.data(), n),
                              download_tensor(b, out.mat),
                              download_raw<int32_t>(b, ids.data(), n)});
        }
        EXPECT_EQ(launches[1].logits, launches[0].logits);
        EXPECT_EQ(launches[1].ids, launches[0].ids);
        EXPECT_EQ(launches[1].weights, launches[0].weights);
        return launches[0];
      };
      const CudaPathCounters before = cuda_path_counters(*gpu_);
      const CudaPathCounters one_before = cuda_path_counters(*one_cta);
      const Outputs cluster = run(*gpu_);
      const Outputs single = run(*one_cta);
      const CudaPathCounters after = cuda_path_counters(*gpu_);
      const CudaPathCounters one_after = cuda_path_counters(*one_cta);
      EXPECT_EQ(after.moe_gate_cluster - before.moe_gate_cluster, 2);
      EXPECT_EQ(after.moe_gate - before.moe_gate, 2);
      EXPECT_EQ(one_after.moe_gate_cluster - one_before.moe_gate_cluster, 0);
      EXPECT_EQ(one_after.moe_gate - one_before.moe_gate, 2);
      // The experts took the index the gate built, in both forms.
      EXPECT_EQ(after.moe_gate_index - before.moe_gate_index, 1);
      EXPECT_EQ(one_after.moe_gate_index - one_before.moe_gate_index, 1);
      EXPECT_EQ(cluster.logits, single.logits);
      EXPECT_EQ(cluster.ids, single.ids);
      EXPECT_EQ(cluster.weights, single.weights);
      EXPECT_EQ(cluster.out, single.out);
      std::vector<int32_t> ref_ids(n);
      std::vector<float> ref_w(n);
      moe_route_cpu(cluster.logits.data(), biased ? bias.data() : nullptr, tokens, p,
                    ref_ids.data(), ref_w.data());
      EXPECT_EQ(cluster.ids, ref_ids);
      EXPECT_CLOSE(cluster.weights, ref_w, kF32Tol);
    }
  }
}

// Backend::add_rmsnorm_moe_gate with the experts that follow named: on the GPU one launch does
// the residual add, the norm, the router product, the routing and (for up to kMoeGateMaxTokens
// tokens) the experts' index. Against the same backend's separate launches (add_rmsnorm,
// moe_gate, then the experts building their own index) every output must be bit-identical: the
// fused kernel repeats their arithmetic and summation order. Against the CPU, the residual and
// the norm within their roundings. V2-Lite's gate with its shared experts; V3's (7,168 wide, four
// 16-byte chunks a thread; from 4 tokens its rows no longer fit the launch's shared memory, so
// the norm runs apart and only the index is fused); 9 tokens: nothing fused. The shared experts
// stay after the router here (SharedExpertsBesideTheRouter runs them beside it).
TEST_P(GpuMoe, GateWithTheNormAndTheIndexEqualsTheSeparateLaunches) {
  {
    ScopedEnv after("DSHPC_MOE_SHARED_SIDE", "0");
    gpu_ = cuda_backend(dtype());
  }
  ASSERT_NE(gpu_, nullptr);
  struct Case {
    MoeRoutingParams p;
    int64_t hidden;
    bool shared;
    // The most tokens whose rows fit with the routing's shared memory: 2,048 wide, 8 in bf16
    // (32 KB) and 5 in float32 (40 KB); 7,168 wide, 3 in bf16 (42 KB), none in float32 (1,792
    // chunks: over the 1,024 a CTA normalises).
    int64_t norm_max_tokens_bf16, norm_max_tokens_f32;
  };
  const int64_t inter = 64, shared_inter = 128, begin = 16, local = 16;
  const float eps = 1e-6f;
  uint32_t seed = 900;
  for (const Case& c :
       {Case{v2_lite_normalised(), 2048, true, 8, 5}, Case{v3_noaux(), 7168, false, 3, 0}}) {
    const MoeRoutingParams& p = c.p;
    const int64_t hidden = c.hidden;
    const std::vector<float> router = values(p.num_experts * hidden, seed++, 0.05f);
    const std::vector<float> bias = random_values(p.num_experts, seed++, 0.5f);
    std::vector<float> norm_weight = random_values(hidden, seed++, 0.1f);
    for (float& w : norm_weight) w += 1.0f;
    norm_weight = representable(norm_weight, dtype());
    std::vector<Tensor> gate_up, down;
    std::vector<ExpertWeights> views;
    for (int64_t e = 0; e < local; ++e) {
      gate_up.push_back(upload_tensor(*gpu_, values(2 * inter * hidden, seed++, 1.0f / 16),
                                      2 * inter, hidden, dtype()));
      down.push_back(
          upload_tensor(*gpu_, values(hidden * inter, seed++, 1.0f / 8), hidden, inter, dtype()));
      views.push_back({gate_up.back().mat, down.back().mat});
    }
    const Tensor shared_gate_up =
        upload_tensor(*gpu_, values(2 * shared_inter * hidden, seed++, 1.0f / 16), 2 * shared_inter,
                      hidden, dtype());
    const Tensor shared_down = upload_tensor(*gpu_, values(hidden * shared_inter, seed++, 1.0f / 8),
                                             hidden, shared_inter, dtype());
    const Tensor gpu_r = upload_tensor(*gpu_, router, p.num_experts, hidden, dtype());
    const DeviceBuffer gpu_bias = upload_raw(*gpu_, bias);
    const DeviceBuffer gpu_norm = upload_tensor(*gpu_, norm_weight, 1, hidden, dtype()).buffer;
    const bool biased = p.method == MoeTopkMethod::kNoauxTc;
    for (int64_t tokens : {int64_t{1}, int64_t{3}, int64_t{8}, int64_t{9}}) {
      SCOPED_TRACE(testing::Message() << p.num_experts << " experts, hidden " << hidden << ", "
                                      << tokens << " tokens");
      const std::vector<float> residual = values(tokens * hidden, seed++);
      const std::vector<float> delta = values(tokens * hidden, seed++, 0.5f);
      const size_t n = static_cast<size_t>(tokens * p.top_k);
      struct Outputs {
        std::vector<float> residual, normed, logits, weights, out;
        std::vector<int32_t> ids;
      };
      const ExpertWeights shared_views{shared_gate_up.mat, shared_down.mat};
      const MoeExpertsAfterGate next{begin, local, c.shared ? &shared_views : nullptr};
      // fused: add_rmsnorm_moe_gate naming the experts; else the separate launches.
      auto run = [&](bool fused) {
        Tensor r = upload_tensor(*gpu_, residual, tokens, hidden, dtype());
        Tensor d = upload_tensor(*gpu_, delta, tokens, hidden, dtype());
        Tensor normed = upload_tensor(*gpu_, std::vector<float>(tokens * hidden, 0.0f), tokens,
                                      hidden, dtype());
        Tensor logits = upload_tensor(*gpu_, std::vector<float>(tokens * p.num_experts, 0.0f),
                                      tokens, p.num_experts, DType::kF32);
        DeviceBuffer ids = gpu_->allocate(n * 4), w = gpu_->allocate(n * 4);
        const float* b = biased ? gpu_bias.as<float>() : nullptr;
        if (fused) {
          gpu_->add_rmsnorm_moe_gate(r.mat, d.mat, gpu_norm.data(), eps, normed.mat, gpu_r.mat,
                                     logits.mat, b, p, ids.as<int32_t>(), w.as<float>(), &next);
        } else {
          gpu_->add_rmsnorm(r.mat, d.mat, gpu_norm.data(), eps, normed.mat);
          gpu_->moe_gate(normed.mat, gpu_r.mat, logits.mat, b, p, ids.as<int32_t>(), w.as<float>());
        }
        // The experts, as Model::moe runs them (into d, as the model reuses its delta).
        const bool with_shared =
            c.shared &&
            gpu_->moe_experts_with_shared(normed.mat, ids.as<int32_t>(), w.as<float>(), p.top_k,
                                          views.data(), begin, local, shared_views, d.mat);
        if (!with_shared) {
          gpu_->zero(d.mat);
          gpu_->moe_experts(normed.mat, ids.as<int32_t>(), w.as<float>(), p.top_k, views.data(),
                            begin, local, d.mat);
        }
        Outputs o;
        o.residual = download_tensor(*gpu_, r.mat);
        o.normed = download_tensor(*gpu_, normed.mat);
        o.logits = download_tensor(*gpu_, logits.mat);
        o.ids = download_raw<int32_t>(*gpu_, ids.data(), n);
        o.weights = download_raw<float>(*gpu_, w.data(), n);
        o.out = download_tensor(*gpu_, d.mat);
        return o;
      };
      const CudaPathCounters before = cuda_path_counters(*gpu_);
      const Outputs fused = run(true);
      const CudaPathCounters after = cuda_path_counters(*gpu_);
      const Outputs separate = run(false);
      EXPECT_EQ(fused.residual, separate.residual);
      EXPECT_EQ(fused.normed, separate.normed);
      EXPECT_EQ(fused.logits, separate.logits);
      EXPECT_EQ(fused.ids, separate.ids);
      EXPECT_EQ(fused.weights, separate.weights);
      EXPECT_EQ(fused.out, separate.out);

      // Which parts were fused: the index whenever the gate is; the norm where the rows fit the
      // launch's shared memory with the routing's (47 KB).
      const bool gate = tokens <= cuda::kMoeGateMaxTokens;
      const int64_t norm_max_tokens =
          dtype() == DType::kBF16 ? c.norm_max_tokens_bf16 : c.norm_max_tokens_f32;
      EXPECT_EQ(after.moe_gate_index - before.moe_gate_index, gate ? 1 : 0);
      EXPECT_EQ(after.moe_gate_norm - before.moe_gate_norm, tokens <= norm_max_tokens ? 1 : 0);

      // The residual and the norm against the CPU (float32): one rounding, then two.
      Tensor cr = upload_tensor(*cpu_, residual, tokens, hidden, DType::kF32);
      Tensor cd = upload_tensor(*cpu_, delta, tokens, hidden, DType::kF32);
      Tensor cn = upload_tensor(*cpu_, std::vector<float>(tokens * hidden, 0.0f), tokens, hidden,
                                DType::kF32);
      const DeviceBuffer cpu_norm = upload_raw(*cpu_, norm_weight);
      cpu_->add_rmsnorm(cr.mat, cd.mat, cpu_norm.data(), eps, cn.mat);
      EXPECT_CLOSE(fused.residual, download_tensor(*cpu_, cr.mat), tol(1));
      EXPECT_CLOSE(fused.normed, download_tensor(*cpu_, cn.mat), tol(2));
    }
  }
}

// The shared experts beside the router (Backend::add_rmsnorm_moe_gate naming them, then
// moe_experts_with_shared): on the GPU, steps of up to 256 tokens run them on a second stream
// while the router runs, and the routed experts' sum starts from their result. Against the same
// calls with DSHPC_MOE_SHARED_SIDE=0 the router's outputs and the normed rows must be
// bit-identical (the norm runs apart, which the test above shows changes nothing); against the
// CPU (float32, from the GPU's normed rows, ids and weights) the experts' sum, the residual and
// the next norm within their roundings: gate_up, swiglu, down and the sum, then the residual add
// and the next norm. V2-Lite's routing and width. Every run has inputs of its own, so a stale
// branch result would show. 100 tokens: 600 pairs, beyond the device-side experts, so the
// branch's result is copied and the host-sorted experts add theirs; 257: no branch.
TEST_P(GpuMoe, SharedExpertsBesideTheRouter) {
  std::unique_ptr<Backend> side, after, side_after_gate;
  {
    ScopedEnv on("DSHPC_MOE_SHARED_SIDE", "256");
    side = cuda_backend(dtype());
    ScopedEnv fork_late("DSHPC_MOE_SHARED_AFTER_GATE", "1");
    side_after_gate = cuda_backend(dtype());
  }
  {
    ScopedEnv off("DSHPC_MOE_SHARED_SIDE", "0");
    after = cuda_backend(dtype());
  }
  ASSERT_NE(side, nullptr);
  ASSERT_NE(after, nullptr);
  ASSERT_NE(side_after_gate, nullptr);
  const MoeRoutingParams p = v2_lite_normalised();
  const int64_t hidden = 2048, inter = 64, shared_inter = 128, begin = 16, local = 16;
  const float eps = 1e-6f;
  uint32_t seed = 1500;
  const std::vector<float> router = values(p.num_experts * hidden, seed++, 0.05f);
  std::vector<float> norm_weight = random_values(hidden, seed++, 0.1f);
  for (float& w : norm_weight) w += 1.0f;
  norm_weight = representable(norm_weight, dtype());
  std::vector<float> next_norm = random_values(hidden, seed++, 0.1f);
  for (float& w : next_norm) w += 1.0f;
  next_norm = representable(next_norm, dtype());
  std::vector<std::vector<float>> gate_up(local), down(local);
  for (int64_t e = 0; e < local; ++e) {
    gate_up[e] = values(2 * inter * hidden, seed++, 1.0f / 16);
    down[e] = values(hidden * inter, seed++, 1.0f / 8);
  }
  const std::vector<float> shared_gate_up = values(2 * shared_inter * hidden, seed++, 1.0f / 16);
  const std::vector<float> shared_down = values(hidden * shared_inter, seed++, 1.0f / 8);
  struct Weights {
    std::vector<Tensor> gu, dn;
    std::vector<ExpertWeights> views;
    Tensor sgu, sdn, router;
    DeviceBuffer norm, next_norm;
  };
  auto upload = [&](Backend& b, DType dtype) {
    Weights w;
    for (int64_t e = 0; e < local; ++e) {
      w.gu.push_back(upload_tensor(b, gate_up[e], 2 * inter, hidden, dtype));
      w.dn.push_back(upload_tensor(b, down[e], hidden, inter, dtype));
      w.views.push_back({w.gu.back().mat, w.dn.back().mat});
    }
    w.sgu = upload_tensor(b, shared_gate_up, 2 * shared_inter, hidden, dtype);
    w.sdn = upload_tensor(b, shared_down, hidden, shared_inter, dtype);
    w.router = upload_tensor(b, router, p.num_experts, hidden, dtype);
    w.norm = upload_tensor(b, norm_weight, 1, hidden, dtype).buffer;
    w.next_norm = upload_tensor(b, next_norm, 1, hidden, dtype).buffer;
    return w;
  };
  const Weights side_w = upload(*side, dtype()), after_w = upload(*after, dtype());
  const Weights late_w = upload(*side_after_gate, dtype());
  const Weights cpu_w = upload(*cpu_, DType::kF32);

  struct Outputs {
    std::vector<float> logits, weights, out, residual, normed;
    std::vector<int32_t> ids;
  };
  for (const int64_t tokens :
       {int64_t{1}, int64_t{3}, int64_t{17}, int64_t{41}, int64_t{100}, int64_t{257}}) {
    const size_t n = static_cast<size_t>(tokens * p.top_k);
    for (const bool with_then : {false, true}) {
      SCOPED_TRACE(testing::Message() << tokens << " tokens, " << (with_then ? "with" : "without")
                                      << " the next norm");
      const std::vector<float> residual = values(tokens * hidden, seed++);
      const std::vector<float> delta = values(tokens * hidden, seed++, 0.5f);
      // The GPU's normed rows: add_rmsnorm alone gives the gate's values bit for bit (the test
      // above), and the runs below are checked against each other.
      std::vector<float> gate_normed;
      {
        Tensor r = upload_tensor(*after, residual, tokens, hidden, dtype());
        Tensor d = upload_tensor(*after, delta, tokens, hidden, dtype());
        Tensor normed = upload_tensor(*after, std::vector<float>(tokens * hidden, 0.0f), tokens,
                                      hidden, dtype());
        after->add_rmsnorm(r.mat, d.mat, after_w.norm.data(), eps, normed.mat);
        gate_normed = download_tensor(*after, normed.mat);
      }
      // Model::moe's sequence, its fallback included.
      auto run = [&](Backend& b, const Weights& w) {
        Tensor r = upload_tensor(b, residual, tokens, hidden, dtype());
        Tensor d = upload_tensor(b, delta, tokens, hidden, dtype());
        Tensor normed =
            upload_tensor(b, std::vector<float>(tokens * hidden, 0.0f), tokens, hidden, dtype());
        Tensor logits = upload_tensor(b, std::vector<float>(tokens * p.num_experts, 0.0f), tokens,
                                      p.num_experts, DType::kF32);
        DeviceBuffer ids = b.allocate(n * 4), weights = b.allocate(n * 4);
        const ExpertWeights shared{w.sgu.mat, w.sdn.mat};
        const MoeExpertsAfterGate next{begin, local, &shared};
        b.add_rmsnorm_moe_gate(r.mat, d.mat, w.norm.data(), eps, normed.mat, w.router.mat,
                               logits.mat, nullptr, p, ids.as<int32_t>(), weights.as<float>(),
                               &next);
        const ResidualNorm then{r.mat, w.next_norm.data(), eps, normed.mat};
        if (!b.moe_experts_with_shared(normed.mat, ids.as<int32_t>(), weights.as<float>(), p.top_k,
                                       w.views.data(), begin, local, shared, d.mat,
                                       with_then ? &then : nullptr)) {
          Tensor gu = upload_tensor(b, std::vector<float>(tokens * 2 * shared_inter, 0.0f), tokens,
                                    2 * shared_inter, dtype());
          Tensor act = upload_tensor(b, std::vector<float>(tokens * shared_inter, 0.0f), tokens,
                                     shared_inter, dtype());
          b.matmul(normed.mat, w.sgu.mat, gu.mat);
          b.swiglu(gu.mat, act.mat);
          b.matmul(act.mat, w.sdn.mat, d.mat);
          b.moe_experts(normed.mat, ids.as<int32_t>(), weights.as<float>(), p.top_k, w.views.data(),
                        begin, local, d.mat);
          if (with_then) b.add_rmsnorm(r.mat, d.mat, w.next_norm.data(), eps, normed.mat);
        }
        Outputs o;
        o.logits = download_tensor(b, logits.mat);
        o.ids = download_raw<int32_t>(b, ids.data(), n);
        o.weights = download_raw<float>(b, weights.data(), n);
        o.out = download_tensor(b, d.mat);
        o.residual = download_tensor(b, r.mat);
        o.normed = download_tensor(b, normed.mat);
        return o;
      };
      const int64_t side_before = cuda_path_counters(*side).moe_shared_side;
      const int64_t after_before = cuda_path_counters(*after).moe_shared_side;
      const int64_t cluster_before = cuda_path_counters(*side).moe_gate_cluster;
      const Outputs beside = run(*side, side_w);
      const Outputs behind = run(*after, after_w);
      // Forked after the gate (DSHPC_MOE_SHARED_AFTER_GATE=1): the same launches, reordered.
      const int64_t late_before = cuda_path_counters(*side_after_gate).moe_shared_side;
      const Outputs late = run(*side_after_gate, late_w);
      EXPECT_EQ(cuda_path_counters(*side_after_gate).moe_shared_side - late_before,
                tokens <= 256 ? 1 : 0);
      EXPECT_EQ(late.logits, beside.logits);
      EXPECT_EQ(late.ids, beside.ids);
      EXPECT_EQ(late.weights, beside.weights);
      EXPECT_EQ(late.out, beside.out);
      EXPECT_EQ(late.residual, beside.residual);
      EXPECT_EQ(late.normed, beside.normed);
      EXPECT_EQ(cuda_path_counters(*side).moe_shared_side - side_before, tokens <= 256 ? 1 : 0);
      // Beside the branch the gate runs without the norm: as one cluster, building the index.
      const bool cluster = cuda::cluster_launch_supported() && tokens <= cuda::kMoeGateMaxTokens;
      EXPECT_EQ(cuda_path_counters(*side).moe_gate_cluster - cluster_before, cluster ? 1 : 0);
      EXPECT_EQ(cuda_path_counters(*after).moe_shared_side - after_before, 0);
      EXPECT_EQ(beside.logits, behind.logits);
      EXPECT_EQ(beside.ids, behind.ids);
      EXPECT_EQ(beside.weights, behind.weights);
      if (!with_then) {
        EXPECT_EQ(beside.normed, gate_normed);
        EXPECT_EQ(behind.normed, gate_normed);
      }

      // The CPU from the GPU's normed rows and routing: residual += delta, then the experts.
      Tensor cr = upload_tensor(*cpu_, residual, tokens, hidden, DType::kF32);
      Tensor cd = upload_tensor(*cpu_, delta, tokens, hidden, DType::kF32);
      Tensor cn = upload_tensor(*cpu_, gate_normed, tokens, hidden, DType::kF32);
      Tensor cgu = upload_tensor(*cpu_, std::vector<float>(tokens * 2 * shared_inter, 0.0f), tokens,
                                 2 * shared_inter, DType::kF32);
      Tensor cact = upload_tensor(*cpu_, std::vector<float>(tokens * shared_inter, 0.0f), tokens,
                                  shared_inter, DType::kF32);
      DeviceBuffer cids = upload_raw(*cpu_, beside.ids),
                   cweights = upload_raw(*cpu_, beside.weights);
      cpu_->add(cr.mat, cd.mat);
      cpu_->matmul(cn.mat, cpu_w.sgu.mat, cgu.mat);
      cpu_->swiglu(cgu.mat, cact.mat);
      cpu_->matmul(cact.mat, cpu_w.sdn.mat, cd.mat);
      cpu_->moe_experts(cn.mat, cids.as<int32_t>(), cweights.as<float>(), p.top_k,
                        cpu_w.views.data(), begin, local, cd.mat);
      if (with_then) cpu_->add_rmsnorm(cr.mat, cd.mat, cpu_w.next_norm.data(), eps, cn.mat);
      const std::vector<float> out = download_tensor(*cpu_, cd.mat);
      // Four roundings in each row's chain, and the sum gathers seven rows (the shared experts'
      // and six routed). The bound of 4 · 2^-8 = 0.0156 was exceeded on both paths alike
      // (0.0161, session 8), the path before this change included: 5 is an empirical allowance,
      // the one SharedExpertsInTheRoutedExpertsLaunches gives the same chain.
      EXPECT_CLOSE(beside.out, out, tol(5));
      EXPECT_CLOSE(behind.out, out, tol(5));
      if (with_then) {
        const std::vector<float> res = download_tensor(*cpu_, cr.mat);
        const std::vector<float> normed = download_tensor(*cpu_, cn.mat);
        EXPECT_CLOSE(beside.residual, res, tol(6));
        EXPECT_CLOSE(beside.normed, normed, tol(7));
        EXPECT_CLOSE(behind.residual, res, tol(6));
        EXPECT_CLOSE(behind.normed, normed, tol(7));
      }
    }
  }
}

TEST_P(GpuMoe, NoauxMasksDroppedGroupsWithMinusInfinity) {
  // Every biased choice value negative: a dropped group masked with 0 would win; −inf never does.
  MoeRoutingParams p = v3_noaux();
  const int64_t tokens = 9;
  const std::vector<float> logits = random_values(tokens * p.num_experts, 120, 1.0f);
  const std::vector<float> bias(p.num_experts, -3.0f);
  Tensor gpu_l = upload_tensor(*gpu_, logits, tokens, p.num_experts, DType::kF32);
  Tensor cpu_l = upload_tensor(*cpu_, logits, tokens, p.num_experts, DType::kF32);
  DeviceBuffer gpu_bias = upload_raw(*gpu_, bias), cpu_bias = upload_raw(*cpu_, bias);
  DeviceBuffer gpu_ids = gpu_->allocate(tokens * p.top_k * 4),
               gpu_w = gpu_->allocate(tokens * p.top_k * 4);
  DeviceBuffer cpu_ids = cpu_->allocate(tokens * p.top_k * 4),
               cpu_w = cpu_->allocate(tokens * p.top_k * 4);
  gpu_->moe_route(gpu_l.mat, gpu_bias.as<float>(), p, gpu_ids.as<int32_t>(), gpu_w.as<float>());
  cpu_->moe_route(cpu_l.mat, cpu_bias.as<float>(), p, cpu_ids.as<int32_t>(), cpu_w.as<float>());
  const auto ids = download_raw<int32_t>(*gpu_, gpu_ids.data(), tokens * p.top_k);
  EXPECT_EQ(ids, download_raw<int32_t>(*cpu_, cpu_ids.data(), tokens * p.top_k));
  const int64_t per_group = p.num_experts / p.num_groups;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int64_t> groups;
    for (int64_t j = 0; j < p.top_k; ++j) groups.push_back(ids[t * p.top_k + j] / per_group);
    std::sort(groups.begin(), groups.end());
    groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
    EXPECT_LE(static_cast<int64_t>(groups.size()), p.topk_groups) << "token " << t;
  }
}

// 16 experts in all, this rank holds [4, 12); top-4 routing, so some tokens have none here.
// Steps of up to kMoeSmallMaxPairs (token, expert) pairs take the device-only small-step path
// (several passes per expert once it has more than 8 rows, 16 on the tensor cores), larger ones
// the host-sorted path.
void experts_of_one_rank(Backend& cpu, Backend& gpu, DType gpu_dtype, int64_t tokens,
                         bool small_path, bool grouped = true, int32_t idle_expert = -1) {
  auto values = [gpu_dtype](size_t n, uint32_t seed, float scale = 1.0f) {
    return representable(random_values(n, seed, scale), gpu_dtype);
  };
  const int64_t hidden = 256, inter = 128, total = 16, begin = 4, local = 8, top_k = 4;
  std::vector<int32_t> ids(tokens * top_k);
  std::vector<float> weights(tokens * top_k);
  std::mt19937 rng(130);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> experts(total);
    std::iota(experts.begin(), experts.end(), 0);
    // idle_expert ≥ 0: no token picks it (moved to the end, past the top_k chosen)
    if (idle_expert >= 0) std::swap(experts[idle_expert], experts[total - 1]);
    std::shuffle(experts.begin(), experts.end() - (idle_expert >= 0 ? 1 : 0), rng);
    for (int64_t j = 0; j < top_k; ++j) {
      ids[t * top_k + j] = experts[j];
      weights[t * top_k + j] = 0.1f + 0.2f * static_cast<float>(j);
    }
  }
  const std::vector<float> x = values(tokens * hidden, 131);
  const std::vector<float> out0 = values(tokens * hidden, 132);  // e.g. the shared experts' sum
  std::vector<std::vector<float>> gate_up(local), down(local);
  for (int64_t e = 0; e < local; ++e) {
    gate_up[e] = values(2 * inter * hidden, 140 + e, 1.0f / 16);
    down[e] = values(hidden * inter, 160 + e, 1.0f / 11);
  }
  auto run = [&](Backend& b, DType dtype) {
    std::vector<Tensor> gu, dn;
    std::vector<ExpertWeights> views;
    for (int64_t e = 0; e < local; ++e) {
      gu.push_back(upload_tensor(b, gate_up[e], 2 * inter, hidden, dtype));
      dn.push_back(upload_tensor(b, down[e], hidden, inter, dtype));
      views.push_back({gu.back().mat, dn.back().mat});
    }
    Tensor xt = upload_tensor(b, x, tokens, hidden, dtype);
    Tensor out = upload_tensor(b, out0, tokens, hidden, dtype);
    DeviceBuffer id_buf = upload_raw(b, ids), w_buf = upload_raw(b, weights);
    b.moe_experts(xt.mat, id_buf.as<int32_t>(), w_buf.as<float>(), top_k, views.data(), begin,
                  local, out.mat);
    // Twice: the second call reuses every buffer of the first (and must give the same result).
    Tensor out2 = upload_tensor(b, out0, tokens, hidden, dtype);
    b.moe_experts(xt.mat, id_buf.as<int32_t>(), w_buf.as<float>(), top_k, views.data(), begin,
                  local, out2.mat);
    return std::pair{download_tensor(b, out.mat), download_tensor(b, out2.mat)};
  };
  const auto [cpu_out, cpu_again] = run(cpu, DType::kF32);
  const CudaPathCounters before = cuda_path_counters(gpu);
  const auto [gpu_out, gpu_again] = run(gpu, gpu_dtype);
  const CudaPathCounters after = cuda_path_counters(gpu);
  EXPECT_EQ(after.moe_small - before.moe_small, small_path ? 2 : 0) << tokens << " tokens";
  // bf16 small steps run on the tensor cores (hidden 256, inter 128 qualify).
  EXPECT_EQ(after.moe_mma - before.moe_mma, small_path && gpu_dtype == DType::kBF16 ? 2 : 0)
      << tokens << " tokens";
  // Larger steps: both products of every expert in one grouped cuBLAS call each.
  EXPECT_EQ(after.moe_grouped - before.moe_grouped, small_path || !grouped ? 0 : 2)
      << tokens << " tokens";
  // bf16: gate_up, swiglu, down and the scatter-add each round once.
  EXPECT_CLOSE(gpu_out, cpu_out, tolerance(gpu_dtype, 4));
  EXPECT_EQ(gpu_out, gpu_again) << "the combine is deterministic";
}

TEST_P(GpuMoe, ExpertsOfOneRankEndToEnd) {
  experts_of_one_rank(*cpu_, *gpu_, dtype(), 41, true);
}

TEST_P(GpuMoe, ExpertsOfOneTokenOnTheSmallPath) {
  experts_of_one_rank(*cpu_, *gpu_, dtype(), 1, true);
}

// About 25 rows per local expert: two passes of the tensor-core kernels (16 tokens each) and
// four of the CUDA-core ones, the last pass partial.
TEST_P(GpuMoe, ExpertsOfManyTokensPerExpertOnTheSmallPath) {
  experts_of_one_rank(*cpu_, *gpu_, dtype(), 100, true);
}

TEST_P(GpuMoe, ExpertsOfALargeStepOnTheHostSortedPath) {
  const int64_t tokens = cuda::kMoeSmallMaxPairs / 4 + 3;  // just over the small path's limit
  experts_of_one_rank(*cpu_, *gpu_, dtype(), tokens, false);
}

// A local expert no token chose (local index 2): the grouped calls skip it, so its neighbours'
// rows must still reach theirs.
TEST_P(GpuMoe, ExpertsOfALargeStepWithAnIdleExpert) {
  experts_of_one_rank(*cpu_, *gpu_, dtype(), cuda::kMoeSmallMaxPairs / 4 + 3, false, true, 6);
}

// The host-sorted path with a cuBLAS call per expert and product (DSHPC_MOE_GROUPED=0), as
// before the grouped calls: the same result.
TEST_P(GpuMoe, ExpertsOfALargeStepOneCallPerExpert) {
  {
    ScopedEnv off("DSHPC_MOE_GROUPED", "0");
    gpu_ = cuda_backend(dtype());
  }
  ASSERT_NE(gpu_, nullptr);
  experts_of_one_rank(*cpu_, *gpu_, dtype(), cuda::kMoeSmallMaxPairs / 4 + 3, false, false);
}

// The shared experts in the routed experts' launches (moe_experts_with_shared): bf16 steps of up
// to kMoeSharedFuseMaxTokens tokens run them on the tensor-core kernels, as one more expert with
// its own inter (256 here against the routed 128, as two shared experts of 128 make), and out is
// overwritten, never read. The reference is the unfused sequence on the CPU: the shared MLP, then
// moe_experts accumulating into its output. Float32 and larger steps have no fused path: the call
// must decline and leave out alone.
void shared_experts_fused(Backend& cpu, Backend& gpu, DType gpu_dtype, int64_t tokens) {
  SCOPED_TRACE(testing::Message() << tokens << " tokens");
  auto values = [gpu_dtype](size_t n, uint32_t seed, float scale = 1.0f) {
    return representable(random_values(n, seed, scale), gpu_dtype);
  };
  const int64_t hidden = 256, inter = 128, shared_inter = 256, total = 16, begin = 4, local = 8;
  const int64_t top_k = 4;
  std::vector<int32_t> ids(tokens * top_k);
  std::vector<float> weights(tokens * top_k);
  std::mt19937 rng(230);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> experts(total);
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), rng);
    for (int64_t j = 0; j < top_k; ++j) {
      ids[t * top_k + j] = experts[j];
      weights[t * top_k + j] = 0.15f + 0.1f * static_cast<float>(j);
    }
  }
  const std::vector<float> x = values(tokens * hidden, 231);
  const std::vector<float> junk = values(tokens * hidden, 232, 100.0f);  // must not leak through
  const std::vector<float> shared_gate_up = values(2 * shared_inter * hidden, 233, 1.0f / 16);
  const std::vector<float> shared_down = values(hidden * shared_inter, 234, 1.0f / 16);
  std::vector<std::vector<float>> gate_up(local), down(local);
  for (int64_t e = 0; e < local; ++e) {
    gate_up[e] = values(2 * inter * hidden, 240 + e, 1.0f / 16);
    down[e] = values(hidden * inter, 260 + e, 1.0f / 11);
  }
  struct Weights {
    std::vector<Tensor> gu, dn;
    std::vector<ExpertWeights> views;
    Tensor sgu, sdn;
  };
  auto upload = [&](Backend& b, DType dtype) {
    Weights w;
    for (int64_t e = 0; e < local; ++e) {
      w.gu.push_back(upload_tensor(b, gate_up[e], 2 * inter, hidden, dtype));
      w.dn.push_back(upload_tensor(b, down[e], hidden, inter, dtype));
      w.views.push_back({w.gu.back().mat, w.dn.back().mat});
    }
    w.sgu = upload_tensor(b, shared_gate_up, 2 * shared_inter, hidden, dtype);
    w.sdn = upload_tensor(b, shared_down, hidden, shared_inter, dtype);
    return w;
  };

  // Reference: the unfused sequence in float32 on the CPU.
  const Weights cw = upload(cpu, DType::kF32);
  Tensor cx = upload_tensor(cpu, x, tokens, hidden, DType::kF32);
  Tensor c_gu = upload_tensor(cpu, std::vector<float>(tokens * 2 * shared_inter), tokens,
                              2 * shared_inter, DType::kF32);
  Tensor c_act = upload_tensor(cpu, std::vector<float>(tokens * shared_inter), tokens, shared_inter,
                               DType::kF32);
  Tensor c_out = upload_tensor(cpu, junk, tokens, hidden, DType::kF32);
  cpu.matmul(cx.mat, cw.sgu.mat, c_gu.mat);
  cpu.swiglu(c_gu.mat, c_act.mat);
  cpu.matmul(c_act.mat, cw.sdn.mat, c_out.mat);
  DeviceBuffer c_ids = upload_raw(cpu, ids), c_w = upload_raw(cpu, weights);
  cpu.moe_experts(cx.mat, c_ids.as<int32_t>(), c_w.as<float>(), top_k, cw.views.data(), begin,
                  local, c_out.mat);
  const std::vector<float> expected = download_tensor(cpu, c_out.mat);

  const Weights gw = upload(gpu, gpu_dtype);
  Tensor gx = upload_tensor(gpu, x, tokens, hidden, gpu_dtype);
  Tensor g_out = upload_tensor(gpu, junk, tokens, hidden, gpu_dtype);
  DeviceBuffer g_ids = upload_raw(gpu, ids), g_w = upload_raw(gpu, weights);
  const CudaPathCounters before = cuda_path_counters(gpu);
  const bool fused = gpu.moe_experts_with_shared(gx.mat, g_ids.as<int32_t>(), g_w.as<float>(),
                                                 top_k, gw.views.data(), begin, local,
                                                 ExpertWeights{gw.sgu.mat, gw.sdn.mat}, g_out.mat);
  const CudaPathCounters after = cuda_path_counters(gpu);
  if (gpu_dtype != DType::kBF16 || tokens > cuda::kMoeSharedFuseMaxTokens) {
    EXPECT_FALSE(fused) << "float32 and steps over one tensor-core pass are not fused";
    const Tensor untouched = upload_tensor(gpu, junk, tokens, hidden, gpu_dtype);
    EXPECT_EQ(download_tensor(gpu, g_out.mat), download_tensor(gpu, untouched.mat))
        << "a declined call must leave out alone";
    return;
  }
  ASSERT_TRUE(fused);
  EXPECT_EQ(after.moe_shared_fused - before.moe_shared_fused, 1);
  // bf16: gate_up, swiglu, down and the sum each round once, for both the shared and the
  // routed experts.
  EXPECT_CLOSE(download_tensor(gpu, g_out.mat), expected, tolerance(gpu_dtype, 5));
}

TEST_P(GpuMoe, SharedExpertsInTheRoutedExpertsLaunches) {
  const int64_t one_pass = cuda::kMoeSharedFuseMaxTokens;
  for (const int64_t tokens : {int64_t{1}, int64_t{3}, one_pass, one_pass + 1, int64_t{41}}) {
    shared_experts_fused(*cpu_, *gpu_, dtype(), tokens);
  }
}

// moe_experts_with_shared with `then` (the residual add and the next layer's norm): on the GPU
// the experts' last launch does both, and every value (out, the residual, the normed rows) must
// equal what the call without `then` followed by add_rmsnorm gives, bit for bit (the fused
// kernel repeats both launches' arithmetic and order). 2,048 wide (V2-Lite) and 7,168 (V3: four
// chunks a thread, the last partial), 1 and 5 tokens. Float32 has no fused shared experts: the
// call must decline and leave the residual alone.
TEST_P(GpuMoe, SharedExpertsWithTheNextNormEqualTheSeparateLaunches) {
  const int64_t inter = 64, shared_inter = 128, begin = 0;
  const float eps = 1e-6f;
  uint32_t seed = 1300;
  // top_k 12: the combine's loads come in batches of 8, so the second batch runs too.
  for (const auto& [top_k, local] : {std::pair<int64_t, int64_t>{3, 8}, {12, 16}}) {
    for (const int64_t hidden : {int64_t{2048}, int64_t{7168}}) {
      std::vector<Tensor> gate_up, down;
      std::vector<ExpertWeights> views;
      for (int64_t e = 0; e < local; ++e) {
        gate_up.push_back(upload_tensor(*gpu_, values(2 * inter * hidden, seed++, 1.0f / 16),
                                        2 * inter, hidden, dtype()));
        down.push_back(
            upload_tensor(*gpu_, values(hidden * inter, seed++, 1.0f / 8), hidden, inter, dtype()));
        views.push_back({gate_up.back().mat, down.back().mat});
      }
      const Tensor sgu = upload_tensor(*gpu_, values(2 * shared_inter * hidden, seed++, 1.0f / 16),
                                       2 * shared_inter, hidden, dtype());
      const Tensor sdn = upload_tensor(*gpu_, values(hidden * shared_inter, seed++, 1.0f / 8),
                                       hidden, shared_inter, dtype());
      std::vector<float> norm_weight = random_values(hidden, seed++, 0.1f);
      for (float& w : norm_weight) w += 1.0f;
      const Tensor gnorm =
          upload_tensor(*gpu_, representable(norm_weight, dtype()), 1, hidden, dtype());
      for (const int64_t tokens : {int64_t{1}, int64_t{5}}) {
        SCOPED_TRACE(testing::Message()
                     << "top_k " << top_k << ", hidden " << hidden << ", " << tokens << " tokens");
        std::vector<int32_t> ids(tokens * top_k);
        std::vector<float> weights(tokens * top_k);
        for (int64_t p = 0; p < tokens * top_k; ++p) {
          ids[p] = static_cast<int32_t>((p * 5 + p / top_k) % local);
          weights[p] = 0.2f + 0.1f * static_cast<float>(p % top_k);
        }
        const std::vector<float> x = values(tokens * hidden, seed++);
        const std::vector<float> residual = values(tokens * hidden, seed++);
        struct Outputs {
          std::vector<float> out, residual, normed;
        };
        auto run = [&](bool fused) {
          Tensor gx = upload_tensor(*gpu_, x, tokens, hidden, dtype());
          Tensor out = upload_tensor(*gpu_, std::vector<float>(tokens * hidden, 0.0f), tokens,
                                     hidden, dtype());
          Tensor res = upload_tensor(*gpu_, residual, tokens, hidden, dtype());
          Tensor normed = upload_tensor(*gpu_, std::vector<float>(tokens * hidden, 0.0f), tokens,
                                        hidden, dtype());
          DeviceBuffer gids = upload_raw(*gpu_, ids), gw = upload_raw(*gpu_, weights);
          const ResidualNorm then{res.mat, gnorm.buffer.data(), eps, normed.mat};
          const bool done = gpu_->moe_experts_with_shared(
              gx.mat, gids.as<int32_t>(), gw.as<float>(), top_k, views.data(), begin, local,
              ExpertWeights{sgu.mat, sdn.mat}, out.mat, fused ? &then : nullptr);
          EXPECT_EQ(done, dtype() == DType::kBF16);
          if (!done) return Outputs{{}, download_tensor(*gpu_, res.mat), {}};
          if (!fused) gpu_->add_rmsnorm(res.mat, out.mat, gnorm.buffer.data(), eps, normed.mat);
          return Outputs{download_tensor(*gpu_, out.mat), download_tensor(*gpu_, res.mat),
                         download_tensor(*gpu_, normed.mat)};
        };
        const int64_t before = cuda_path_counters(*gpu_).moe_combine_norm;
        const Outputs fused = run(true);
        if (dtype() != DType::kBF16) {
          EXPECT_EQ(fused.residual, representable(residual, dtype())) << "a declined call";
          continue;
        }
        EXPECT_EQ(cuda_path_counters(*gpu_).moe_combine_norm - before, 1);
        const Outputs separate = run(false);
        EXPECT_EQ(fused.out, separate.out);
        EXPECT_EQ(fused.residual, separate.residual);
        EXPECT_EQ(fused.normed, separate.normed);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, GpuMoe, ::testing::Values(DType::kF32, DType::kBF16),
                         dtype_param_name);

}  // namespace
}  // namespace dshpc::gpu_test
