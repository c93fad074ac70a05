// KV cache storage: per layer, a pool of fixed-size blocks of token slots (the paged layout of
// kernels/attention.h). Which blocks a sequence owns is the scheduler's bookkeeping; the worker
// only stores and reads slots.
//
//   Llama (GQA):  k [num_blocks · block_size, kv_heads · head_dim], v likewise with v_dim
//   MLA (V2/V3):  latent [num_blocks · block_size, kv_lora_rank + qk_rope_head_dim], the
//                 normalised compressed KV followed by the rotated k_pe (absorbed form)
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace dshpc {

struct KvCacheSpec {
  int64_t num_layers = 0;  // layers held by this rank (its pipeline stage)
  bool latent = false;     // MLA: one latent entry per token instead of K and V
  int64_t kv_heads = 0;    // local kv heads (1 for MLA)
  int64_t head_dim = 0;    // K width per head (MLA: kv_lora_rank + rope)
  int64_t v_dim = 0;       // V width per head (MLA: kv_lora_rank, read from the latent entry)
  int64_t block_size = 16;

  // Bytes one block takes over all layers, for elements of `element_bytes`.
  int64_t bytes_per_block(int64_t element_bytes) const;
};

class KvCache {
 public:
  KvCache() = default;
  KvCache(Backend& backend, const KvCacheSpec& spec, int64_t num_blocks);

  const KvCacheSpec& spec() const { return spec_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t bytes() const;
  // The view of one local layer (index within this stage).
  PagedKvView layer(int64_t local_layer) const;

 private:
  KvCacheSpec spec_;
  int64_t num_blocks_ = 0;
  DType dtype_ = DType::kF32;
  std::vector<DeviceBuffer> k_;  // per layer (the latent for MLA)
  std::vector<DeviceBuffer> v_;  // per layer (empty for MLA)
};

}  // namespace dshpc
