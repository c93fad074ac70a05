#include "worker/kv_cache.h"

#include "common/check.h"

namespace dshpc {

int64_t KvCacheSpec::bytes_per_block(int64_t element_bytes) const {
  int64_t per_token = latent ? head_dim : kv_heads * (head_dim + v_dim);
  return num_layers * block_size * per_token * element_bytes;
}

KvCache::KvCache(Backend& backend, const KvCacheSpec& spec, int64_t num_blocks)
    : spec_(spec), num_blocks_(num_blocks), dtype_(backend.activation_dtype()) {
  DSHPC_CHECK(num_blocks > 0 && spec.block_size > 0) << "empty KV cache";
  const int64_t slots = num_blocks * spec.block_size;
  const int64_t element = static_cast<int64_t>(dtype_size(dtype_));
  for (int64_t layer = 0; layer < spec.num_layers; ++layer) {
    if (spec.latent) {
      k_.push_back(backend.allocate(slots * spec.head_dim * element));
    } else {
      k_.push_back(backend.allocate(slots * spec.kv_heads * spec.head_dim * element));
      v_.push_back(backend.allocate(slots * spec.kv_heads * spec.v_dim * element));
    }
  }
}

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (const auto& b : k_) total += static_cast<int64_t>(b.bytes());
  for (const auto& b : v_) total += static_cast<int64_t>(b.bytes());
  return total;
}

PagedKvView KvCache::layer(int64_t local_layer) const {
  DSHPC_CHECK(local_layer >= 0 && local_layer < spec_.num_layers)
      << "KV cache layer " << local_layer;
  PagedKvView view;
  view.block_size = spec_.block_size;
  view.kv_heads = spec_.kv_heads;
  view.head_dim = spec_.head_dim;
  view.v_dim = spec_.v_dim;
  view.k = k_[local_layer].as<float>();
  if (spec_.latent) {
    view.v = view.k;  // V is the latent prefix of the same entry
    view.k_token_stride = spec_.head_dim;
    view.v_token_stride = spec_.head_dim;
  } else {
    view.v = v_[local_layer].as<float>();
    view.k_token_stride = spec_.kv_heads * spec_.head_dim;
    view.v_token_stride = spec_.kv_heads * spec_.v_dim;
  }
  return view;
}

}  // namespace dshpc
