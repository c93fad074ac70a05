#include "worker/weight_source.h"

#include <cmath>
#include <map>

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
    return checkpoint_.read_f32(name, rows, cols, dst);
  }

 private:
  const Checkpoint& checkpoint_;
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
    for (int64_t r = 0; r < nr; ++r) {
      for (int64_t c = 0; c < nc; ++c) {
        float v;
        if (ones) {
          v = 1.0f;
        } else if (zeros) {
          v = 0.0f;
        } else {
          uint64_t index = static_cast<uint64_t>(rows.begin + r) * total_cols + (cols.begin + c);
          uint64_t bits = splitmix64(base + index);
          float unit = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // [0, 1)
          v = (2.0f * unit - 1.0f) * bound;
        }
        dst[r * nc + c] = v;
      }
    }
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
