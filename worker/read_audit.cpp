#include "worker/read_audit.h"

namespace dshpc {

ReadAudit audit_weight_reads(const ModelConfig& config, const ModelShard& shard,
                             const WeightReadStats& stats) {
  ReadAudit audit;
  for (const TensorSpec& spec : weight_table(config)) {
    const auto read_it = stats.bytes_by_tensor.find(spec.name);
    const int64_t read = read_it == stats.bytes_by_tensor.end() ? 0 : read_it->second;
    const std::optional<TensorSlice> slice = owned_slice(spec, config, shard);
    const std::string label = "tensor \"" + spec.name + "\"";
    if (!slice) {
      if (read > 0) {
        audit.violations.push_back(label + ": read " + std::to_string(read) +
                                   " bytes of a tensor this rank does not hold");
      }
      audit.read_bytes += read;
      audit.excess_bytes += read;
      continue;
    }
    const auto size_it = stats.element_bytes.find(spec.name);
    if (size_it == stats.element_bytes.end()) {
      audit.violations.push_back(label + ": this rank holds a slice but never read it");
      continue;
    }
    const int64_t element = size_it->second;
    int64_t full = element;
    for (int64_t d : spec.shape) full *= d;
    const int64_t rows = slice->rows.count < 0 ? spec.shape[0] : slice->rows.count;
    const int64_t cols =
        spec.shape.size() < 2 ? 1 : (slice->cols.count < 0 ? spec.shape[1] : slice->cols.count);
    const int64_t owned = rows * cols * element;
    audit.owned_bytes += owned;
    audit.read_bytes += read;
    if (read > owned) audit.excess_bytes += read - owned;
    if (owned < full && read >= full) {
      audit.violations.push_back(label + ": read whole (" + std::to_string(read) +
                                 " bytes) though this rank holds only " + std::to_string(owned) +
                                 " bytes of it");
    }
  }
  return audit;
}

}  // namespace dshpc
