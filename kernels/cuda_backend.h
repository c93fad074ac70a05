// The CUDA backend's entry points. This header compiles without CUDA: in a build without nvcc
// make_cuda_backend returns an error and cuda_device_count() 0, so callers need no #ifdef.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/cuda/async_watch.h"

namespace dshpc {

// True when this binary was built with the CUDA backend.
bool cuda_backend_built();

// GPUs visible to this process (0 without a driver, a device or CUDA support).
int cuda_device_count();

// The GPU of a rank: its node-local rank modulo the visible devices. Two ranks of one node on
// one GPU (more ranks on the node than visible GPUs) is an error that says so, as is a node
// without GPUs.
StatusOr<int> pick_local_gpu(int local_rank, int local_size);

// A backend on `device` with weights and activations of `dtype`: kBF16 (float32 accumulation:
// the serving mode) or kF32 (the parity mode, float32 everywhere, no TF32). One stream, one
// cuBLAS handle, a caching device memory pool. Makes `device` current on the calling thread.
StatusOr<std::unique_ptr<Backend>> make_cuda_backend(int device, DType dtype);

// What the CUDA backend exposes beyond Backend, for the NCCL collectives and tests. `backend`
// must come from make_cuda_backend (checked).
struct CudaBackendHandles {
  int device = -1;
  void* stream = nullptr;  // cudaStream_t: every op, and the NCCL collectives, run on it
  std::shared_ptr<cuda::AsyncWatch> watch;  // checked by every blocking wait of the backend
};
CudaBackendHandles cuda_backend_handles(Backend& backend);

struct CudaMemoryStats {
  int64_t device_allocations = 0;  // cudaMalloc calls so far (steady state: constant)
  int64_t in_use_bytes = 0;
  int64_t cached_bytes = 0;       // freed blocks kept for reuse
  int64_t device_free_bytes = 0;  // cudaMemGetInfo
  int64_t device_total_bytes = 0;
};
CudaMemoryStats cuda_memory_stats(Backend& backend);

// How often the decode paths ran, so that tests and benchmarks can tell that the fast path (and
// not a fallback) produced a result.
struct CudaPathCounters {
  int64_t gemv = 0;                      // matrix products through the few-row kernel (gemv.cu)
  int64_t decode_attention = 0;          // attention through the split-key decode kernel
  int64_t decode_attention_wide = 0;     // … of which in the several-keys-a-warp form
  int64_t decode_attention_unroll2 = 0;  // … of which with two key groups a warp in flight
  int64_t prefill_attention = 0;         // attention through the tensor-core prefill kernel
  int64_t mla_prefill_attention = 0;     // MLA attention of a prefill or mixed step, tensor cores
  int64_t graph_captures = 0;            // decode steps captured as CUDA graphs
  int64_t graph_launches = 0;            // decode steps replayed from a graph
  int64_t moe_small = 0;                 // MoE layers through the device-only small-step path
  int64_t moe_mma = 0;                   // … of which on the tensor-core kernels (bf16)
  int64_t moe_grouped = 0;               // host-sorted MoE layers in two grouped cuBLAS calls
  int64_t moe_shared_fused = 0;  // … of which with the shared experts in the same launches
  int64_t gemv_pairs = 0;        // two products of one input in one launch (matmul_pair)
  int64_t mla_prepare = 0;       // MLA's steps before the attention in one launch
  int64_t moe_gate = 0;          // router and routing in one launch
  int64_t mla_values = 0;        // MLA's value projection in the attention's last launch
  int64_t moe_gate_norm = 0;     // … of which with the add_rmsnorm before them, same launch
  int64_t moe_gate_index = 0;    // MoE layers whose experts' index the gate's launch built
  int64_t moe_gate_cluster = 0;  // gates run as one thread block cluster
  int64_t argmax_sliced = 0;     // argmaxes of a few rows over many CTAs each
  int64_t moe_combine_norm = 0;  // MoE layers ending in one launch with the next layer's norm
  int64_t gemv_heads = 0;        // per-head products (matmul_heads) through the few-row kernel
  int64_t moe_shared_side = 0;   // MoE layers whose shared experts ran beside the gate
  int64_t moe_shared_side_captured = 0;  // … of which recorded in a captured step
};
CudaPathCounters cuda_path_counters(Backend& backend);

}  // namespace dshpc
