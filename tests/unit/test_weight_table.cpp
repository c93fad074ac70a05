// The split table (weight_table, owned_slice) against what the loader really reads, the read
// audit built on it, and the HDF5 chunk layout chosen from it (pure arithmetic, no HDF5).
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "kernels/backend.h"
#include "worker/chunk_layout.h"
#include "worker/model.h"
#include "worker/model_config.h"
#include "worker/read_audit.h"

namespace dshpc {
namespace {

ModelConfig load_config(const std::string& path) {
  auto config = load_model_config(path);
  EXPECT_TRUE(config.ok()) << config.status().message();
  return *config;
}

std::vector<std::string> fixture_models() {
  return {"llama-mha", "llama-gqa-linear", "deepseek-v2-lite-tiny", "deepseek-v3-tiny"};
}

ModelConfig fixture(const std::string& model) {
  return load_config(std::string(DSHPC_FIXTURES_DIR) + "/models/" + model + "/config.json");
}

// A tensor-parallel group of `size` for Model::load, which only checks the size: loading does
// not communicate.
class LoadOnlyGroup final : public Collectives {
 public:
  LoadOnlyGroup(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  void all_reduce_sum(float*, size_t) override { DSHPC_CHECK(false) << "not while loading"; }
  void all_gather(const float*, float*, size_t) override { DSHPC_CHECK(false); }
  void send(const void*, size_t, int, int) override { DSHPC_CHECK(false); }
  void recv(void*, size_t, int, int) override { DSHPC_CHECK(false); }

 private:
  int rank_, size_;
  std::string name_ = "tp";
};

// Random weights that remember every slice asked for.
class RecordingSource final : public WeightSource {
 public:
  explicit RecordingSource(const ModelConfig& config)
      : inner_(make_random_source(1, Model::expected_tensors(config))) {}
  std::string describe() const override { return "recording"; }
  StatusOr<std::vector<int64_t>> shape(const std::string& name) const override {
    return inner_->shape(name);
  }
  Status read_f32(const std::string& name, Range rows, Range cols, float* dst) const override {
    auto full = inner_->shape(name);
    if (!full.ok()) return full.status();
    const int64_t num_cols = full->size() > 1 ? (*full)[1] : 1;
    reads.push_back({name,
                     {rows.begin, rows.count < 0 ? (*full)[0] - rows.begin : rows.count},
                     {cols.begin, cols.count < 0 ? num_cols - cols.begin : cols.count}});
    return inner_->read_f32(name, rows, cols, dst);
  }
  struct Read {
    std::string name;
    Range rows, cols;
  };
  mutable std::vector<Read> reads;

 private:
  std::unique_ptr<WeightSource> inner_;
};

Range resolve(Range range, int64_t dim) {
  return {range.begin, range.count < 0 ? dim - range.begin : range.count};
}

bool within(Range inner, Range outer) {
  return inner.begin >= outer.begin && inner.begin + inner.count <= outer.begin + outer.count;
}

// Every read the loader makes lies in the rank's owned slice, and it reads each owned slice
// exactly once, for every fixture, tp 1/2/4 and two pipeline stages.
TEST(WeightTable, LoaderReadsExactlyTheOwnedSlices) {
  for (const std::string& model : fixture_models()) {
    const ModelConfig config = fixture(model);
    std::map<std::string, TensorSpec> table;
    for (const TensorSpec& spec : weight_table(config)) table[spec.name] = spec;
    for (int tp : {1, 2, 4}) {
      const int64_t half = config.num_layers / 2;
      for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, half}, {half, config.num_layers}}) {
        for (int r = 0; r < tp; ++r) {
          ModelShard shard{r, tp, begin, end};
          if (!Model::check_shard(config, shard).ok()) continue;
          SCOPED_TRACE(model + " tp " + std::to_string(tp) + " rank " + std::to_string(r) +
                       " layers " + std::to_string(begin) + "-" + std::to_string(end));
          RecordingSource source(config);
          auto backend = make_cpu_backend();
          LoadOnlyGroup group(r, tp);
          auto loaded = Model::load(config, shard, source, *backend, group);
          ASSERT_TRUE(loaded.ok()) << loaded.status().message();
          std::map<std::string, int64_t> elements_read;
          for (const auto& read : source.reads) {
            const auto spec = table.find(read.name);
            ASSERT_NE(spec, table.end()) << read.name << " is not in the table";
            const auto slice = owned_slice(spec->second, config, shard);
            ASSERT_TRUE(slice.has_value()) << read.name << " read by a rank that does not own it";
            const int64_t cols = spec->second.shape.size() > 1 ? spec->second.shape[1] : 1;
            EXPECT_TRUE(within(read.rows, resolve(slice->rows, spec->second.shape[0])))
                << read.name << " rows " << read.rows.begin << "+" << read.rows.count;
            EXPECT_TRUE(within(read.cols, resolve(slice->cols, cols)))
                << read.name << " cols " << read.cols.begin << "+" << read.cols.count;
            elements_read[read.name] += read.rows.count * read.cols.count;
          }
          for (const auto& [name, spec] : table) {
            const auto slice = owned_slice(spec, config, shard);
            const int64_t cols = spec.shape.size() > 1 ? spec.shape[1] : 1;
            const int64_t owned =
                slice ? resolve(slice->rows, spec.shape[0]).count * resolve(slice->cols, cols).count
                      : 0;
            // Tied output heads read the embedding twice on a one-stage pipeline.
            EXPECT_EQ(elements_read[name], owned) << name;
          }
        }
      }
    }
  }
}

TEST(WeightTable, SlicesOfATensorPartitionItAcrossTheGroup) {
  // Split tensors: the tp slices tile the split dimension; experts: exactly one owner.
  const ModelConfig config = fixture("deepseek-v3-tiny");
  for (int tp : {2, 4}) {
    for (const TensorSpec& spec : weight_table(config)) {
      int64_t covered = 0;
      int owners = 0;
      for (int r = 0; r < tp; ++r) {
        const auto slice = owned_slice(spec, config, ModelShard{r, tp, 0, -1});
        ASSERT_TRUE(slice || spec.split == TensorSplit::kExpert) << spec.name;
        if (!slice) continue;
        owners += 1;
        if (spec.split == TensorSplit::kRows) covered += slice->rows.count;
        if (spec.split == TensorSplit::kCols) covered += slice->cols.count;
      }
      if (spec.split == TensorSplit::kExpert) {
        EXPECT_EQ(owners, 1) << spec.name;
      } else if (spec.split == TensorSplit::kRows) {
        EXPECT_EQ(covered, spec.shape[0]) << spec.name;
      } else if (spec.split == TensorSplit::kCols) {
        EXPECT_EQ(covered, spec.shape[1]) << spec.name;
      }
    }
  }
}

TEST(ReadAudit, FlagsWholeReadsOfSplitTensorsOtherStagesAndMissedSlices) {
  const ModelConfig config = fixture("llama-mha");
  const ModelShard shard{0, 2, 0, 2};  // tp rank 0 of 2, layers [0, 2)
  WeightReadStats stats;
  for (const TensorSpec& spec : weight_table(config)) {
    const auto slice = owned_slice(spec, config, shard);
    if (!slice) continue;
    const int64_t rows = resolve(slice->rows, spec.shape[0]).count;
    const int64_t cols = spec.shape.size() > 1 ? resolve(slice->cols, spec.shape[1]).count : 1;
    stats.add(spec.name, rows * cols * 4, 4);
  }
  ReadAudit clean = audit_weight_reads(config, shard, stats);
  EXPECT_TRUE(clean.violations.empty()) << clean.violations.front();
  EXPECT_EQ(clean.excess_bytes, 0);
  EXPECT_EQ(clean.owned_bytes, clean.read_bytes);

  WeightReadStats whole = stats;  // rank 0 reads all of a column-split q_proj
  const int64_t q_rows = config.num_heads * config.head_dim;
  whole.bytes_by_tensor["model.layers.0.self_attn.q_proj.weight"] = q_rows * config.hidden_size * 4;
  ReadAudit audit = audit_weight_reads(config, shard, whole);
  ASSERT_EQ(audit.violations.size(), 1u);
  EXPECT_NE(audit.violations[0].find("q_proj.weight\": read whole"), std::string::npos);
  EXPECT_GT(audit.excess_bytes, 0);

  WeightReadStats other_stage = stats;  // a layer of the next stage
  other_stage.add("model.layers.3.input_layernorm.weight", config.hidden_size * 4, 4);
  audit = audit_weight_reads(config, shard, other_stage);
  ASSERT_EQ(audit.violations.size(), 1u);
  EXPECT_NE(audit.violations[0].find("does not hold"), std::string::npos);

  WeightReadStats missed = stats;
  missed.bytes_by_tensor.erase("model.layers.1.mlp.down_proj.weight");
  missed.element_bytes.erase("model.layers.1.mlp.down_proj.weight");
  audit = audit_weight_reads(config, shard, missed);
  ASSERT_EQ(audit.violations.size(), 1u);
  EXPECT_NE(audit.violations[0].find("never read"), std::string::npos);
}

// Brute force: the sum of the real extents of every chunk that intersects the box.
int64_t touched_by_enumeration(const std::vector<int64_t>& shape, const std::vector<int64_t>& chunk,
                               const std::vector<int64_t>& start,
                               const std::vector<int64_t>& count) {
  int64_t total = 0;
  for (int64_t r0 = 0; r0 < shape[0]; r0 += chunk[0]) {
    for (int64_t c0 = 0; c0 < shape[1]; c0 += chunk[1]) {
      const int64_t r1 = std::min(shape[0], r0 + chunk[0]), c1 = std::min(shape[1], c0 + chunk[1]);
      const bool hit =
          r0 < start[0] + count[0] && start[0] < r1 && c0 < start[1] + count[1] && start[1] < c1;
      if (hit) total += (r1 - r0) * (c1 - c0);
    }
  }
  return total;
}

TEST(ChunkLayout, BytesTouchedMatchesEnumeration) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 300; ++trial) {
    auto below = [&](int64_t n) { return static_cast<int64_t>(rng() % static_cast<uint64_t>(n)); };
    const std::vector<int64_t> shape = {1 + below(40), 1 + below(40)};
    const std::vector<int64_t> chunk = {1 + below(shape[0]), 1 + below(shape[1])};
    std::vector<int64_t> start(2), count(2);
    for (int d = 0; d < 2; ++d) {
      start[d] = below(shape[d]);
      count[d] = 1 + below(shape[d] - start[d]);
    }
    EXPECT_EQ(chunk_bytes_touched(shape, chunk, start, count, 2),
              2 * touched_by_enumeration(shape, chunk, start, count));
  }
}

// For every tensor of the fixtures and of the real configs (7B, 67B, V2-Lite, V3), and every tp
// that divides the split units up to 16, each rank's slice is made of whole chunks: the bytes a
// rank's read touches equal the bytes it owns. Chunks stay under the target size unless a single
// row is larger.
TEST(ChunkLayout, TensorParallelSlicesAreWholeChunks) {
  std::vector<ModelConfig> configs;
  for (const std::string& model : fixture_models()) configs.push_back(fixture(model));
  for (const char* name :
       {"deepseek-llm-7b", "deepseek-llm-67b", "deepseek-v2-lite", "deepseek-v3"}) {
    configs.push_back(
        load_config(std::string(DSHPC_SOURCE_DIR) + "/configs/models/" + name + ".json"));
  }
  for (const ModelConfig& config : configs) {
    // One layer of each kind is enough: the table repeats per layer.
    std::map<std::string, TensorSpec> kinds;
    for (const TensorSpec& spec : weight_table(config)) {
      std::string kind = spec.name;
      for (char& c : kind) c = (c >= '0' && c <= '9') ? '#' : c;
      kinds.emplace(kind, spec);
    }
    for (const auto& [kind, spec] : kinds) {
      for (size_t element : {size_t{1}, size_t{2}, size_t{4}}) {
        const std::vector<int64_t> chunk =
            choose_chunk_shape(spec.shape, spec.split, spec.units, element);
        ASSERT_EQ(chunk.size(), spec.shape.size()) << spec.name;
        int64_t chunk_elements = 1;
        for (size_t d = 0; d < chunk.size(); ++d) {
          EXPECT_GE(chunk[d], 1) << spec.name;
          EXPECT_LE(chunk[d], spec.shape[d]) << spec.name;
          chunk_elements *= chunk[d];
        }
        const int64_t row_bytes =
            static_cast<int64_t>(element) * (spec.shape.size() > 1 ? chunk[1] : 1);
        if (row_bytes <= kTargetChunkBytes) {
          EXPECT_LE(chunk_elements * static_cast<int64_t>(element), kTargetChunkBytes) << spec.name;
        }
        for (int tp : {1, 2, 4, 8, 16}) {
          const bool split = spec.split == TensorSplit::kRows || spec.split == TensorSplit::kCols;
          if (!split || spec.units % tp != 0) continue;
          for (int r = 0; r < tp; ++r) {
            const auto slice = owned_slice(spec, config, ModelShard{r, tp, 0, -1});
            ASSERT_TRUE(slice.has_value());
            const Range rows = resolve(slice->rows, spec.shape[0]);
            std::vector<int64_t> start = {rows.begin}, count = {rows.count};
            int64_t owned = rows.count;
            if (spec.shape.size() > 1) {
              const Range cols = resolve(slice->cols, spec.shape[1]);
              start.push_back(cols.begin);
              count.push_back(cols.count);
              owned *= cols.count;
            }
            EXPECT_EQ(chunk_bytes_touched(spec.shape, chunk, start, count, element),
                      owned * static_cast<int64_t>(element))
                << config.architecture << " " << spec.name << " tp " << tp << " rank " << r;
          }
        }
      }
    }
  }
}

TEST(ChunkLayout, EmptyAndScalarTensors) {
  EXPECT_TRUE(choose_chunk_shape({0, 4}, TensorSplit::kRows, 4, 4).empty());
  EXPECT_EQ(choose_chunk_shape({}, TensorSplit::kReplicated, 1, 4), std::vector<int64_t>{1});
  // A split whose units do not divide the dimension falls back to row chunks.
  const auto chunk = choose_chunk_shape({10, 3}, TensorSplit::kRows, 4, 4);
  EXPECT_EQ(chunk, (std::vector<int64_t>{10, 3}));
}

}  // namespace
}  // namespace dshpc
