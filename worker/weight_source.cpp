#include "worker/weight_source.h"

#include <chrono>
#include <cmath>
#include <map>

#include "common/parallel_for.h"

namespace dshpc {
namespace {

class CheckpointSource final : public WeightSource {
 public:
  explicit CheckpointSource(const Checkpoint& checkpoint) : checkpoint_(checkpoint) {}
  std::string describe() const override { return checkpoint_.dir(); }
  StatusOr<std::vector<int64_t>> shape(const std::string& name) const override {
    return checkpoint_.shape(name);
  }
  Status read_f32(const std::string& name, Range rows, Range cols, float* dst) const override {
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(checkpoint_.read_f32(name, rows, cols, dst));
    count(name, rows, cols);
    stats_.reads += 1;
    stats_.seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return ok_status();
  }
  WeightReadStats read_stats() const override { return stats_; }

 private:
  // The slice's bytes as stored (and, for FP8, the scale blocks it touched).
  void count(const std::string& name, Range rows, Range cols) const {
    const StatusOr<const SafetensorsTensor*> tensor = checkpoint_.find(name);
    if (!tensor.ok() || (*tensor)->shape.empty()) return;
    const std::vector<int64_t>& shape = (*tensor)->shape;
    const Range r{rows.begin, rows.count < 0 ? shape[0] - rows.begin : rows.count};
    const int64_t num_cols = shape.size() > 1 ? shape[1] : 1;
    const Range c{cols.begin, cols.count < 0 ? num_cols - cols.begin : cols.count};
    const int64_t element = static_cast<int64_t>(dtype_size((*tensor)->dtype));
    stats_.add(name, r.count * c.count * element, element);
    if ((*tensor)->dtype == DType::kF8E4M3 && r.count > 0 && c.count > 0) {
      const std::string scale_name = name + kFp8ScaleSuffix;
      const StatusOr<const SafetensorsTensor*> scale = checkpoint_.find(scale_name);
      if (!scale.ok()) return;
      const Fp8ScaleBlocks blocks =
          fp8_scale_blocks(r, c, checkpoint_.fp8_block_rows(), checkpoint_.fp8_block_cols());
      const int64_t scale_element = static_cast<int64_t>(dtype_size((*scale)->dtype));
      stats_.add(scale_name, blocks.rows.count * blocks.cols.count * scale_element, scale_element);
    }
  }

  const Checkpoint& checkpoint_;
  mutable WeightReadStats stats_;
};

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t hash_name(const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class RandomSource final : public WeightSource {
 public:
  RandomSource(uint64_t seed, std::vector<std::pair<std::string, std::vector<int64_t>>> shapes)
      : seed_(seed) {
    for (auto& [name, shape] : shapes) shapes_[name] = std::move(shape);
  }
  std::string describe() const override {
    return "random weights (seed " + std::to_string(seed_) + ")";
  }

  StatusOr<std::vector<int64_t>> shape(const std::string& name) const override {
    auto it = shapes_.find(name);
    if (it == shapes_.end()) return not_found("random weights: no tensor " + name);
    return it->second;
  }

  Status read_f32(const std::string& name, Range rows, Range cols, float* dst) const override {
    ASSIGN_OR_RETURN(std::vector<int64_t> full, shape(name));
    const int64_t total_rows = full[0];
    const int64_t total_cols = full.size() > 1 ? full[1] : 1;
    const int64_t nr = rows.count < 0 ? total_rows - rows.begin : rows.count;
    const int64_t nc =
        full.size() > 1 ? (cols.count < 0 ? total_cols - cols.begin : cols.count) : 1;
    if (rows.begin < 0 || rows.begin + nr > total_rows || cols.begin < 0 ||
        cols.begin + nc > total_cols) {
      return out_of_range("random weights: slice outside " + name);
    }
    const bool ones = ends_with(name, "norm.weight");
    const bool zeros = ends_with(name, ".bias") || ends_with(name, "e_score_correction_bias");
    const float bound = 1.0f / std::sqrt(static_cast<float>(total_cols));
    const uint64_t base = splitmix64(seed_ ^ hash_name(name));
    // Each value depends only on its index, so rows are generated in parallel (a 16-B-parameter
    // model's random weights otherwise take a minute on one core). Pieces from 64 K values up,
    // so that an expert's 2.9 M values use every core (1 M-value pieces gave them three threads).
    parallel_for(nr, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(nc, 1)),
                 [&](int64_t row_begin, int64_t row_end) {
                   for (int64_t r = row_begin; r < row_end; ++r) {
                     for (int64_t c = 0; c < nc; ++c) {
                       float v;
                       if (ones) {
                         v = 1.0f;
                       } else if (zeros) {
                         v = 0.0f;
                       } else {
                         const uint64_t index =
                             static_cast<uint64_t>(rows.begin + r) * total_cols + (cols.begin + c);
                         const uint64_t bits = splitmix64(base + index);
                         const float unit =
                             static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // [0, 1)
                         v = (2.0f * unit - 1.0f) * bound;
                       }
                       dst[r * nc + c] = v;
                     }
                   }
                 });
    return ok_status();
  }

 private:
  uint64_t seed_;
  std::map<std::string, std::vector<int64_t>> shapes_;
};

}  // namespace

std::unique_ptr<WeightSource> make_checkpoint_source(const Checkpoint& checkpoint) {
  return std::make_unique<CheckpointSource>(checkpoint);
}

std::unique_ptr<WeightSource> make_random_source(
    uint64_t seed, std::vector<std::pair<std::string, std::vector<int64_t>>> expected_shapes) {
  return std::make_unique<RandomSource>(seed, std::move(expected_shapes));
}

}  // namespace dshpc
