// HDF5 checkpoints through the public API: conversion of a checkpoint in every float dtype (FP8
// with block scales included) under each --dtype policy, slice reads equal to the safetensors
// reader's, chunk-level byte accounting, stored files, and validation of both formats with a
// tensors.sha256 manifest. Byte-level corruption of HDF5 files is tested in tests/cli.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/sha256.h"
#include "tests/unit/safetensors_writer.h"
#include "worker/checkpoint.h"
#include "worker/checkpoint_validate.h"
#include "worker/h5_checkpoint.h"
#include "worker/h5_convert.h"
#include "worker/model.h"
#include "worker/model_config.h"

namespace dshpc {
namespace {

using test_util::SafetensorsWriter;
using test_util::TempDir;
using ::testing::HasSubstr;

constexpr int64_t kFp8Block = 16;

std::string read_file(const std::string& path) {
  const std::vector<uint8_t> bytes = test_util::read_bytes(path);
  return std::string(bytes.begin(), bytes.end());
}

// The nearest e4m3fn code to `value` (ties to the lower value), by binary search over the codes'
// values, which dshpc::f8e4m3_to_float gives.
uint8_t nearest_fp8(float value) {
  static const std::vector<std::pair<float, uint8_t>> sorted = [] {
    std::vector<std::pair<float, uint8_t>> codes;
    for (int code = 0; code < 256; ++code) {
      const float v = f8e4m3_to_float(static_cast<uint8_t>(code));
      if (!std::isnan(v)) codes.push_back({v, static_cast<uint8_t>(code)});
    }
    std::sort(codes.begin(), codes.end());
    return codes;
  }();
  auto it = std::lower_bound(sorted.begin(), sorted.end(), std::pair<float, uint8_t>{value, 0});
  if (it == sorted.end()) return sorted.back().second;
  if (it != sorted.begin() && value - std::prev(it)->first <= it->first - value) --it;
  return it->second;
}

// The deepseek-v3-tiny fixture re-encoded in every dtype: embeddings BF16, q_b_proj and the
// routed experts' up_proj FP8 with 16 × 16 block scales (as DeepSeek-V3 publishes its weights),
// o_proj F16, down_proj F64, norms and the rest F32, plus an I64 tensor the model does not use,
// and the built-in tokenizer files.
class H5CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string fixture = std::string(DSHPC_FIXTURES_DIR) + "/models/deepseek-v3-tiny";
    auto source = Checkpoint::open(fixture);
    ASSERT_TRUE(source.ok()) << source.status().message();
    SafetensorsWriter writer;
    for (const std::string& name : source->tensor_names()) {
      const std::vector<int64_t> shape = *source->shape(name);
      const int64_t rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
      std::vector<float> values(static_cast<size_t>(rows * cols));
      ASSERT_TRUE(source->read_f32(name, Range::all(), Range::all(), values.data()).ok());
      if (name.find("embed_tokens") != std::string::npos) {
        writer.add_bf16(name, shape, values);
      } else if (name.find("q_b_proj") != std::string::npos ||
                 (name.find("experts.") != std::string::npos &&
                  name.find("up_proj") != std::string::npos)) {
        add_fp8(writer, name, rows, cols, values);
      } else if (name.find("o_proj") != std::string::npos) {
        writer.add_f16(name, shape, values);
      } else if (name.find("down_proj") != std::string::npos) {
        writer.add_f64(name, shape, std::vector<double>(values.begin(), values.end()));
      } else {
        writer.add_f32(name, shape, values);
      }
    }
    writer.add_i64("extra.positions", {5}, {0, 1, 2, 3, 4});
    std::string config = read_file(fixture + "/config.json");
    config.insert(config.find('{') + 1,
                  "\"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", "
                  "\"weight_block_size\": [16, 16]},");
    test_util::write_checkpoint(hf(), config, writer);
    const std::string tokenizer = std::string(DSHPC_SOURCE_DIR) + "/configs/tokenizers/deepseek-v3";
    std::filesystem::copy_file(tokenizer + "/tokenizer.json", hf() + "/tokenizer.json");
    std::filesystem::copy_file(tokenizer + "/tokenizer_config.json",
                               hf() + "/tokenizer_config.json");
    auto checkpoint = Checkpoint::open(hf());
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().message();
    checkpoint->set_fp8_block(kFp8Block, kFp8Block);
    checkpoint_.emplace(std::move(*checkpoint));
  }

  static void add_fp8(SafetensorsWriter& writer, const std::string& name, int64_t rows,
                      int64_t cols, const std::vector<float>& values) {
    const int64_t block_rows = (rows + kFp8Block - 1) / kFp8Block;
    const int64_t block_cols = (cols + kFp8Block - 1) / kFp8Block;
    std::vector<float> scales(static_cast<size_t>(block_rows * block_cols), 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        float& s = scales[(r / kFp8Block) * block_cols + c / kFp8Block];
        s = std::max(s, std::fabs(values[r * cols + c]) / 448.0f);
      }
    }
    std::vector<uint8_t> codes;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float s = scales[(r / kFp8Block) * block_cols + c / kFp8Block];
        codes.push_back(nearest_fp8(s > 0 ? values[r * cols + c] / s : 0.0f));
      }
    }
    writer.add_f8_e4m3(name, {rows, cols}, codes);
    writer.add_f32(name + kFp8ScaleSuffix, {block_rows, block_cols}, scales);
  }

  std::string hf() const { return dir_.path() + "/hf"; }

  std::unique_ptr<H5Checkpoint> convert(ConvertDtype dtype, const std::string& file) {
    ConvertOptions options;
    options.from = hf();
    options.to = dir_.path() + "/" + file;
    options.dtype = dtype;
    options.created_by = "test";
    int64_t progress_calls = 0;
    options.progress = [&](const ConvertProgress& p) {
      EXPECT_LE(p.bytes_done, p.bytes_total);
      ++progress_calls;
    };
    auto result = convert_to_h5(options);
    EXPECT_TRUE(result.ok()) << result.status().message();
    if (!result.ok()) return nullptr;
    EXPECT_GT(progress_calls, 0);
    auto opened = H5Checkpoint::open(options.to);
    EXPECT_TRUE(opened.ok()) << opened.status().message();
    if (!opened.ok()) return nullptr;
    (*opened)->set_fp8_block(kFp8Block, kFp8Block);
    return std::move(*opened);
  }

  std::vector<float> read(const WeightSource& source, const std::string& name, Range rows,
                          Range cols, size_t count) {
    std::vector<float> out(count, NAN);
    const Status status = source.read_f32(name, rows, cols, out.data());
    EXPECT_TRUE(status.ok()) << status.message();
    return out;
  }

  TempDir dir_;
  std::optional<Checkpoint> checkpoint_;
};

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST_F(H5CheckpointTest, KeepStoresEveryTensorAsIsAndReadsTheSameSlices) {
  auto h5 = convert(ConvertDtype::kKeep, "keep.h5");
  ASSERT_NE(h5, nullptr);
  EXPECT_EQ(h5->format_version(), kH5FormatVersion);
  EXPECT_EQ(h5->config_json(), checkpoint_->config_json());
  EXPECT_EQ(*h5->read_file("tokenizer.json"), read_file(hf() + "/tokenizer.json"));
  EXPECT_EQ(h5->read_file("generation_config.json").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(h5->tensor_names(), checkpoint_->tensor_names());

  auto source = make_checkpoint_source(*checkpoint_);
  for (const std::string& name : checkpoint_->tensor_names()) {
    SCOPED_TRACE(name);
    const SafetensorsTensor& st = **checkpoint_->find(name);
    auto info = h5->tensor(name);
    ASSERT_TRUE(info.ok()) << info.status().message();
    EXPECT_EQ(info->dtype, st.dtype);
    EXPECT_EQ(info->shape, st.shape);
    EXPECT_TRUE(info->fletcher32);
    EXPECT_FALSE(info->chunk.empty());
    EXPECT_EQ(info->sha256,
              Sha256::to_hex(Sha256::of(*checkpoint_->raw_data(name), st.num_bytes())));
    if (st.dtype == DType::kI64) continue;
    const int64_t rows = st.shape[0], cols = st.shape.size() > 1 ? st.shape[1] : 1;
    const Range all = Range::all();
    EXPECT_TRUE(bitwise_equal(read(*h5, name, all, all, rows * cols),
                              read(*source, name, all, all, rows * cols)));
    // tp-like halves and an odd window that cuts chunks.
    const Range top{0, rows / 2}, odd_rows{1, rows - 2};
    EXPECT_TRUE(bitwise_equal(read(*h5, name, top, all, rows / 2 * cols),
                              read(*source, name, top, all, rows / 2 * cols)));
    if (st.shape.size() == 2 && rows >= 4 && cols >= 8) {
      const Range right{cols / 2, cols - cols / 2}, odd_cols{3, cols - 5};
      EXPECT_TRUE(bitwise_equal(read(*h5, name, all, right, rows * (cols - cols / 2)),
                                read(*source, name, all, right, rows * (cols - cols / 2))));
      EXPECT_TRUE(bitwise_equal(read(*h5, name, odd_rows, odd_cols, (rows - 2) * (cols - 5)),
                                read(*source, name, odd_rows, odd_cols, (rows - 2) * (cols - 5))));
    }
  }
  // Reading an integer tensor as float is refused with its name.
  std::vector<float> out(5);
  const Status ints = h5->read_f32("extra.positions", Range::all(), Range::all(), out.data());
  EXPECT_THAT(ints.message(), HasSubstr("extra.positions"));
  EXPECT_EQ(h5->shape("no.such.tensor").status().code(), StatusCode::kNotFound);
}

TEST_F(H5CheckpointTest, ReadsCountWholeChunksAndAlignedSlicesReadOnlyTheirBytes) {
  auto h5 = convert(ConvertDtype::kKeep, "keep.h5");
  ASSERT_NE(h5, nullptr);
  // o_proj (F16) is split by columns over heads: tp 2's right half is whole chunks.
  const std::string o = "model.layers.0.self_attn.o_proj.weight";
  const std::vector<int64_t> shape = *h5->shape(o);
  std::vector<float> out(static_cast<size_t>(shape[0] * shape[1] / 2));
  ASSERT_TRUE(h5->read_f32(o, Range::all(), Range{shape[1] / 2, shape[1] / 2}, out.data()).ok());
  EXPECT_EQ(h5->read_stats().bytes_by_tensor.at(o), shape[0] * shape[1] / 2 * 2);
  // One element costs its whole chunk.
  ASSERT_TRUE(h5->read_f32(o, Range{0, 1}, Range{0, 1}, out.data()).ok());
  const auto info = *h5->tensor(o);
  EXPECT_EQ(h5->read_stats().bytes_by_tensor.at(o),
            shape[0] * shape[1] / 2 * 2 + info.chunk[0] * info.chunk[1] * 2);
  EXPECT_EQ(h5->read_stats().reads, 2);
}

TEST_F(H5CheckpointTest, Bf16DequantisesFp8AndDropsScales) {
  auto h5 = convert(ConvertDtype::kBF16, "bf16.h5");
  ASSERT_NE(h5, nullptr);
  auto config = parse_model_config(h5->config_json(), "stored config");
  ASSERT_TRUE(config.ok()) << config.status().message();
  EXPECT_FALSE(config->fp8_weights);  // quantization_config removed with the quantisation
  auto source = make_checkpoint_source(*checkpoint_);
  for (const std::string& name : checkpoint_->tensor_names()) {
    SCOPED_TRACE(name);
    const SafetensorsTensor& st = **checkpoint_->find(name);
    auto info = h5->tensor(name);
    if (name.ends_with(kFp8ScaleSuffix)) {
      EXPECT_EQ(info.status().code(), StatusCode::kNotFound);
      continue;
    }
    ASSERT_TRUE(info.ok()) << info.status().message();
    if (st.dtype == DType::kI64 || st.shape.size() < 2) {
      EXPECT_EQ(info->dtype, st.dtype);  // vectors and integers keep their type
      continue;
    }
    EXPECT_EQ(info->dtype, DType::kBF16);
    const size_t count = static_cast<size_t>(st.shape[0] * st.shape[1]);
    std::vector<float> expected = read(*source, name, Range::all(), Range::all(), count);
    for (float& v : expected) v = bf16_to_float(float_to_bf16(v));
    EXPECT_TRUE(bitwise_equal(read(*h5, name, Range::all(), Range::all(), count), expected));
  }
  ValidationReport report = validate_checkpoint(dir_.path() + "/bf16.h5", {});
  EXPECT_TRUE(report.ok()) << report.problems.front();
}

TEST_F(H5CheckpointTest, F32StoresExactValues) {
  auto h5 = convert(ConvertDtype::kF32, "f32.h5");
  ASSERT_NE(h5, nullptr);
  auto source = make_checkpoint_source(*checkpoint_);
  const std::string q = "model.layers.2.self_attn.q_b_proj.weight";  // FP8 in the source
  EXPECT_EQ(h5->tensor(q)->dtype, DType::kF32);
  const auto shape = *checkpoint_->shape(q);
  const size_t count = static_cast<size_t>(shape[0] * shape[1]);
  EXPECT_TRUE(bitwise_equal(read(*h5, q, Range::all(), Range::all(), count),
                            read(*source, q, Range::all(), Range::all(), count)));
}

TEST_F(H5CheckpointTest, ValidateGoodFileHashesEveryTensor) {
  auto h5 = convert(ConvertDtype::kKeep, "keep.h5");
  ASSERT_NE(h5, nullptr);
  int64_t progress_calls = 0;
  ValidateOptions options;
  options.progress = [&](const ValidationProgress&) { ++progress_calls; };
  ValidationReport report = validate_checkpoint(dir_.path() + "/keep.h5", options);
  EXPECT_TRUE(report.ok()) << report.problems.front();
  EXPECT_EQ(report.format, "hdf5");
  EXPECT_EQ(report.tensors, static_cast<int64_t>(checkpoint_->tensor_names().size()));
  EXPECT_EQ(report.tensors_hashed, report.tensors);
  EXPECT_GT(report.bytes_hashed, 0);
  EXPECT_GT(progress_calls, 0);
}

TEST_F(H5CheckpointTest, SafetensorsManifestDetectsAFlippedByteAndBlocksConversion) {
  ValidationReport before = validate_checkpoint(hf(), {});
  EXPECT_TRUE(before.ok()) << before.problems.front();
  ASSERT_EQ(before.notes.size(), 1u);
  EXPECT_THAT(before.notes[0], HasSubstr("no tensors.sha256"));
  EXPECT_EQ(before.tensors_hashed, 0);

  ValidateOptions write;
  write.write_manifest = true;
  ValidationReport written = validate_checkpoint(hf(), write);
  ASSERT_TRUE(written.ok()) << written.problems.front();
  ValidationReport checked = validate_checkpoint(hf(), {});
  EXPECT_TRUE(checked.ok());
  EXPECT_EQ(checked.tensors_hashed, checked.tensors);

  // The manifest lists the digests that a keep conversion stores.
  auto h5 = convert(ConvertDtype::kKeep, "keep.h5");
  ASSERT_NE(h5, nullptr);
  const std::string manifest = read_file(hf() + "/" + kTensorManifestName);
  EXPECT_EQ(*h5->read_file(kTensorManifestName), manifest);
  h5.reset();

  // Flip one byte inside the data of one tensor.
  const std::string victim = "model.layers.0.mlp.up_proj.weight";
  const SafetensorsTensor tensor = **checkpoint_->find(victim);
  checkpoint_.reset();  // unmap before writing
  std::vector<uint8_t> bytes = test_util::read_bytes(hf() + "/model.safetensors");
  uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  bytes[8 + header + tensor.data_begin + tensor.num_bytes() / 2] ^= 0x10;
  test_util::write_bytes(hf() + "/model.safetensors", bytes);

  ValidationReport damaged = validate_checkpoint(hf(), {});
  ASSERT_EQ(damaged.problems.size(), 1u);
  EXPECT_THAT(damaged.problems[0], HasSubstr(victim));
  EXPECT_THAT(damaged.problems[0], HasSubstr("SHA-256 mismatch"));
  // --write-manifest does not paper over damage.
  ValidationReport rewrite = validate_checkpoint(hf(), write);
  EXPECT_FALSE(rewrite.ok());
  EXPECT_EQ(read_file(hf() + "/" + kTensorManifestName), manifest);

  ConvertOptions options;
  options.from = hf();
  options.to = dir_.path() + "/damaged.h5";
  auto result = convert_to_h5(options);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr(victim));
  EXPECT_FALSE(std::filesystem::exists(options.to));  // nothing half-written left behind
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    EXPECT_THAT(entry.path().string(), ::testing::Not(HasSubstr(".tmp-")));
  }
}

// A slice larger than the reader's staging buffer goes through it in several slabs of whole chunk
// rows: the values are the same, and each chunk is read (and counted) once.
TEST(H5Checkpoint, LargeSlicesAreReadInSlabs) {
  TempDir dir;
  const std::string fixture = std::string(DSHPC_FIXTURES_DIR) + "/models/llama-mha";
  auto source = Checkpoint::open(fixture);
  ASSERT_TRUE(source.ok());
  SafetensorsWriter writer;
  for (const std::string& name : source->tensor_names()) {
    const std::vector<int64_t> shape = *source->shape(name);
    std::vector<float> values(static_cast<size_t>(shape[0] * (shape.size() > 1 ? shape[1] : 1)));
    ASSERT_TRUE(source->read_f32(name, Range::all(), Range::all(), values.data()).ok());
    writer.add_f32(name, shape, values);
  }
  const int64_t rows = 4200, cols = 2100;  // 17.6 MB of BF16
  std::vector<float> big(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i % 4099) - 2048.0f;
  writer.add_bf16("extra.big", {rows, cols}, big);
  test_util::write_checkpoint(dir.path() + "/hf", read_file(fixture + "/config.json"), writer);
  ConvertOptions options;
  options.from = dir.path() + "/hf";
  options.to = dir.path() + "/big.h5";
  ASSERT_TRUE(convert_to_h5(options).ok());
  auto h5 = H5Checkpoint::open(options.to);
  ASSERT_TRUE(h5.ok()) << h5.status().message();
  auto reference = Checkpoint::open(options.from);
  ASSERT_TRUE(reference.ok());

  const Range window_rows{1, rows - 2}, window_cols{3, cols - 100};
  std::vector<float> expected(static_cast<size_t>(window_rows.count * window_cols.count));
  std::vector<float> got(expected.size(), NAN);
  ASSERT_TRUE(reference->read_f32("extra.big", window_rows, window_cols, expected.data()).ok());
  ASSERT_TRUE((*h5)->read_f32("extra.big", window_rows, window_cols, got.data()).ok());
  EXPECT_TRUE(bitwise_equal(got, expected));
  // Every chunk touched once: the window touches all of them.
  EXPECT_EQ((*h5)->read_stats().bytes_by_tensor.at("extra.big"), rows * cols * 2);
}

TEST(H5Validate, SafetensorsDirectoryListsEveryBadTensor) {
  TempDir dir;
  const std::string fixture = std::string(DSHPC_FIXTURES_DIR) + "/models/llama-mha";
  auto source = Checkpoint::open(fixture);
  ASSERT_TRUE(source.ok());
  SafetensorsWriter writer;
  for (const std::string& name : source->tensor_names()) {
    if (name == "model.layers.3.input_layernorm.weight") continue;  // missing
    std::vector<int64_t> shape = *source->shape(name);
    if (name == "model.layers.2.mlp.up_proj.weight") std::swap(shape[0], shape[1]);  // wrong
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    if (name == "model.norm.weight") {
      writer.add_i64(name, shape, std::vector<int64_t>(count, 1));  // not a weight dtype
    } else {
      writer.add_f32(name, shape, std::vector<float>(count, 0.5f));
    }
  }
  test_util::write_checkpoint(dir.path(), read_file(fixture + "/config.json"), writer);
  ValidationReport report = validate_checkpoint(dir.path(), {});
  ASSERT_EQ(report.problems.size(), 3u);
  EXPECT_THAT(report.problems[0], HasSubstr("model.norm.weight\": dtype I64"));
  EXPECT_THAT(report.problems[1], HasSubstr("model.layers.2.mlp.up_proj.weight\": shape"));
  EXPECT_THAT(report.problems[2], HasSubstr("model.layers.3.input_layernorm.weight\": missing"));
}

TEST(H5Validate, PathsThatAreNeither) {
  TempDir dir;
  test_util::write_text(dir.file("plain.txt"), "hello");
  ValidationReport text = validate_checkpoint(dir.path() + "/plain.txt", {});
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(text.problems[0], HasSubstr("neither"));
  ValidationReport missing = validate_checkpoint(dir.path() + "/nothing.h5", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.problems[0], HasSubstr("no such file"));
}

}  // namespace
}  // namespace dshpc
