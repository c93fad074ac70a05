// The Hugging Face checkpoint reader: opening single-file and sharded directories, slice reads
// converted to float32, FP8 block dequantisation, and errors that name the directory, index,
// shard and tensor.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "tests/unit/safetensors_writer.h"
#include "worker/checkpoint.h"

namespace dshpc {
namespace {

using test_util::index_json;
using test_util::SafetensorsWriter;
using test_util::TempDir;
using test_util::write_checkpoint;
using test_util::write_sharded_checkpoint;
using test_util::write_text;
using ::testing::ElementsAre;
using ::testing::EndsWith;
using ::testing::HasSubstr;

constexpr char kConfig[] = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 10})";
constexpr int64_t kRows = 6;
constexpr int64_t kCols = 10;

// Values with at most 6 significant bits, so exact in BF16 and F16 as well as F32.
float value_at(int64_t row, int64_t col) {
  return static_cast<float>(row * 10 + col) * 0.25f - 7.0f;
}

std::vector<float> matrix_values(int64_t rows, int64_t cols) {
  std::vector<float> values;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) values.push_back(value_at(r, c));
  }
  return values;
}

// The expected row-major window [row0, row0 + rows) × [col0, col0 + cols) of value_at.
std::vector<float> expected_window(int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
  std::vector<float> values;
  for (int64_t r = row0; r < row0 + rows; ++r) {
    for (int64_t c = col0; c < col0 + cols; ++c) values.push_back(value_at(r, c));
  }
  return values;
}

// Reads a slice whose size the caller states, with a guard element after it that must survive.
std::vector<float> read(const Checkpoint& checkpoint, const std::string& name, Range rows,
                        Range cols, size_t expected_count) {
  constexpr float kGuard = -12345.0f;
  std::vector<float> out(expected_count + 1, kGuard);
  const Status status = checkpoint.read_f32(name, rows, cols, out.data());
  EXPECT_TRUE(status.ok()) << status.to_string();
  EXPECT_EQ(out.back(), kGuard) << "read_f32 wrote past rows.count × cols.count";
  out.pop_back();
  return out;
}

// find() and shape() without dereferencing a failed StatusOr: a mismatch fails the test cleanly.
const SafetensorsTensor* find_or_null(const Checkpoint& checkpoint, const std::string& name) {
  StatusOr<const SafetensorsTensor*> tensor = checkpoint.find(name);
  EXPECT_TRUE(tensor.ok()) << tensor.status().to_string();
  return tensor.ok() ? *tensor : nullptr;
}

std::vector<int64_t> shape_or_empty(const Checkpoint& checkpoint, const std::string& name) {
  StatusOr<std::vector<int64_t>> shape = checkpoint.shape(name);
  EXPECT_TRUE(shape.ok()) << shape.status().to_string();
  return shape.ok() ? *shape : std::vector<int64_t>{};
}

SafetensorsWriter dense_weights() {
  SafetensorsWriter writer;
  const std::vector<float> values = matrix_values(kRows, kCols);
  writer.add_f32("w.f32", {kRows, kCols}, values)
      .add_bf16("w.bf16", {kRows, kCols}, values)
      .add_f16("w.f16", {kRows, kCols}, values)
      .add_f64("w.f64", {kRows, kCols}, std::vector<double>(values.begin(), values.end()))
      .add_f32("norm", {kCols}, expected_window(0, 1, 0, kCols))
      .add_i64("ids", {3}, {1, 2, 3})
      .add_f32("cube", {2, 2, 2}, std::vector<float>(8, 1.0f));
  return writer;
}

class CheckpointTest : public ::testing::Test {
 protected:
  Checkpoint open_dense() {
    write_checkpoint(tmp_.path(), kConfig, dense_weights());
    StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
    if (!checkpoint.ok()) {
      ADD_FAILURE() << checkpoint.status().to_string();
      return Checkpoint();  // empty: the test's own checks then fail too
    }
    return std::move(checkpoint).value();
  }

  TempDir tmp_;
};

TEST_F(CheckpointTest, OpensSingleFileDirectory) {
  const Checkpoint checkpoint = open_dense();
  EXPECT_EQ(checkpoint.dir(), tmp_.path());
  EXPECT_EQ(checkpoint.config_json(), kConfig);
  EXPECT_THAT(checkpoint.tensor_names(),
              ElementsAre("cube", "ids", "norm", "w.bf16", "w.f16", "w.f32", "w.f64"));
  EXPECT_TRUE(checkpoint.contains("w.bf16"));
  EXPECT_FALSE(checkpoint.contains("w"));
  EXPECT_THAT(checkpoint.file_of("w.f16"), EndsWith("/model.safetensors"));
  StatusOr<std::vector<int64_t>> shape = checkpoint.shape("w.f32");
  ASSERT_TRUE(shape.ok());
  EXPECT_EQ(*shape, (std::vector<int64_t>{kRows, kCols}));
  StatusOr<const SafetensorsTensor*> tensor = checkpoint.find("w.bf16");
  ASSERT_TRUE(tensor.ok());
  EXPECT_EQ((*tensor)->dtype, DType::kBF16);
  EXPECT_EQ(checkpoint.fp8_block_rows(), 128);
  EXPECT_EQ(checkpoint.fp8_block_cols(), 128);
}

TEST_F(CheckpointTest, ReadsWholeTensorsOfEveryFloatDtype) {
  const Checkpoint checkpoint = open_dense();
  for (const char* name : {"w.f32", "w.bf16", "w.f16", "w.f64"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(read(checkpoint, name, Range::all(), Range::all(), kRows * kCols),
              matrix_values(kRows, kCols));
  }
}

TEST_F(CheckpointTest, ReadsRowColumnAndBlockSlices) {
  const Checkpoint checkpoint = open_dense();
  for (const char* name : {"w.f32", "w.bf16", "w.f16", "w.f64"}) {
    SCOPED_TRACE(name);
    // Rows only (a row-split rank), columns only (a column-split rank), both, and "to the end".
    EXPECT_EQ(read(checkpoint, name, {2, 3}, Range::all(), 3 * kCols),
              expected_window(2, 3, 0, kCols));
    EXPECT_EQ(read(checkpoint, name, Range::all(), {4, 5}, kRows * 5),
              expected_window(0, kRows, 4, 5));
    EXPECT_EQ(read(checkpoint, name, {1, 4}, {3, 6}, 24), expected_window(1, 4, 3, 6));
    EXPECT_EQ(read(checkpoint, name, {4, -1}, {7, -1}, 2 * 3), expected_window(4, 2, 7, 3));
    EXPECT_EQ(read(checkpoint, name, {5, 1}, {9, 1}, 1), expected_window(5, 1, 9, 1));
    EXPECT_TRUE(read(checkpoint, name, {6, 0}, Range::all(), 0).empty());
    EXPECT_TRUE(read(checkpoint, name, {0, 2}, {10, -1}, 0).empty());
  }
}

TEST_F(CheckpointTest, ReadsOneDimensionalSlices) {
  const Checkpoint checkpoint = open_dense();
  EXPECT_EQ(read(checkpoint, "norm", Range::all(), Range::all(), kCols),
            expected_window(0, 1, 0, kCols));
  // A 1-D tensor is an [R, 1] column: rows select elements, cols may be all() or {0, 1}.
  EXPECT_EQ(read(checkpoint, "norm", {3, 4}, Range::all(), 4), expected_window(0, 1, 3, 4));
  EXPECT_EQ(read(checkpoint, "norm", {8, -1}, {0, 1}, 2), expected_window(0, 1, 8, 2));
}

TEST_F(CheckpointTest, ReadsUnalignedData) {
  // No header padding and a 3-byte tensor first: the BF16/F16/F64 bytes sit at odd addresses,
  // which the reader must not dereference as wider types (UBSan builds check this).
  SafetensorsWriter writer;
  const std::vector<float> values = matrix_values(kRows, kCols);
  writer.pad_header(false)
      .add_raw("odd", "U8", {3}, {1, 2, 3})
      .add_bf16("w.bf16", {kRows, kCols}, values)
      .add_f64("w.f64", {kRows, kCols}, std::vector<double>(values.begin(), values.end()))
      .add_f16("w.f16", {kRows, kCols}, values);
  write_checkpoint(tmp_.path(), kConfig, writer);
  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
  StatusOr<SafetensorsFile> file = SafetensorsFile::open(checkpoint->file_of("w.bf16"));
  ASSERT_TRUE(file.ok());
  const SafetensorsTensor* f64 = file->find("w.f64");
  ASSERT_NE(f64, nullptr);
  EXPECT_NE(reinterpret_cast<uintptr_t>(file->data(*f64)) % 8, 0u);
  for (const char* name : {"w.bf16", "w.f16", "w.f64"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(read(*checkpoint, name, {1, 4}, {3, 6}, 24), expected_window(1, 4, 3, 6));
  }
}

// Every error of read_f32 names the tensor and its file.
void expect_read_error(const Checkpoint& checkpoint, const std::string& name, Range rows,
                       Range cols, StatusCode code, const std::string& mention) {
  std::vector<float> out(1024);
  const Status status = checkpoint.read_f32(name, rows, cols, out.data());
  ASSERT_FALSE(status.ok()) << name;
  EXPECT_EQ(status.code(), code) << status.to_string();
  EXPECT_THAT(status.message(), HasSubstr("\"" + name + "\""));
  EXPECT_THAT(status.message(), HasSubstr("model.safetensors"));
  EXPECT_THAT(status.message(), HasSubstr(mention));
}

TEST_F(CheckpointTest, RejectsBadSlicesDtypesAndRanks) {
  const Checkpoint checkpoint = open_dense();
  const StatusCode kRange = StatusCode::kOutOfRange;
  expect_read_error(checkpoint, "w.f32", {-1, 2}, Range::all(), kRange, "rows");
  expect_read_error(checkpoint, "w.f32", {7, -1}, Range::all(), kRange, "rows");
  expect_read_error(checkpoint, "w.f32", {4, 3}, Range::all(), kRange, "rows");
  expect_read_error(checkpoint, "w.f32", {0, -2}, Range::all(), kRange, "rows");
  expect_read_error(checkpoint, "w.f32", {0, INT64_MAX}, Range::all(), kRange, "rows");
  expect_read_error(checkpoint, "w.f32", {INT64_MAX, 1}, Range::all(), kRange, "rows");
  expect_read_error(checkpoint, "w.f32", Range::all(), {9, 2}, kRange, "cols");
  expect_read_error(checkpoint, "norm", Range::all(), {0, 2}, kRange, "cols");
  expect_read_error(checkpoint, "norm", Range::all(), {1, 1}, kRange, "cols");
  expect_read_error(checkpoint, "ids", Range::all(), Range::all(), StatusCode::kInvalidArgument,
                    "I64");
  expect_read_error(checkpoint, "cube", Range::all(), Range::all(), StatusCode::kInvalidArgument,
                    "[2, 2, 2]");
  EXPECT_EQ(checkpoint.read_f32("w.f32", {0, 1}, Range::all(), nullptr).code(),
            StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, MissingTensorIsNotFoundNamingTensorAndDirectory) {
  const Checkpoint checkpoint = open_dense();
  StatusOr<const SafetensorsTensor*> tensor = checkpoint.find("model.nope.weight");
  ASSERT_FALSE(tensor.ok());
  EXPECT_EQ(tensor.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(tensor.status().message(), HasSubstr("\"model.nope.weight\""));
  EXPECT_THAT(tensor.status().message(), HasSubstr(tmp_.path()));
  EXPECT_EQ(checkpoint.shape("model.nope.weight").status().code(), StatusCode::kNotFound);
  float out = 0;
  const Status read_status = checkpoint.read_f32("model.nope.weight", {0, 1}, {0, 1}, &out);
  EXPECT_EQ(read_status.code(), StatusCode::kNotFound);
  EXPECT_THAT(read_status.message(), HasSubstr("model.nope.weight"));
  EXPECT_EQ(checkpoint.file_of("model.nope.weight"), "");
}

TEST_F(CheckpointTest, SurvivesBeingMoved) {
  Checkpoint first = open_dense();
  const SafetensorsTensor* before = find_or_null(first, "w.bf16");
  ASSERT_NE(before, nullptr);
  Checkpoint second = std::move(first);
  std::vector<Checkpoint> many;
  many.push_back(std::move(second));
  for (int i = 0; i < 8; ++i) {  // reallocations move the element again
    StatusOr<Checkpoint> other = Checkpoint::open(tmp_.path());
    ASSERT_TRUE(other.ok());
    many.push_back(std::move(other).value());
  }
  EXPECT_EQ(find_or_null(many[0], "w.bf16"), before);  // tensor descriptions did not move
  EXPECT_EQ(read(many[0], "w.bf16", {1, 2}, {2, 3}, 6), expected_window(1, 2, 2, 3));
}

// ---------------------------------------------------------------------------------------------
// Directory-level errors.

TEST_F(CheckpointTest, MissingConfigNamesDirectory) {
  SafetensorsWriter writer;
  writer.add_f32("a", {1}, {1.0f});
  writer.write(tmp_.file("model.safetensors"));
  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
  ASSERT_FALSE(checkpoint.ok());
  EXPECT_EQ(checkpoint.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(checkpoint.status().message(), HasSubstr(tmp_.path()));
  EXPECT_THAT(checkpoint.status().message(), HasSubstr("config.json"));
}

TEST_F(CheckpointTest, MissingDirectoryAndMissingWeights) {
  StatusOr<Checkpoint> absent = Checkpoint::open(tmp_.path() + "/absent");
  ASSERT_FALSE(absent.ok());
  EXPECT_THAT(absent.status().message(), HasSubstr(tmp_.path() + "/absent"));

  write_text(tmp_.file("config.json"), kConfig);
  StatusOr<Checkpoint> no_weights = Checkpoint::open(tmp_.path());
  ASSERT_FALSE(no_weights.ok());
  EXPECT_EQ(no_weights.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(no_weights.status().message(), HasSubstr(tmp_.path()));
  EXPECT_THAT(no_weights.status().message(), HasSubstr("model.safetensors"));
}

TEST_F(CheckpointTest, ConfigMustBeJsonWithAValidBlockSize) {
  SafetensorsWriter writer;
  writer.add_f32("a", {1}, {1.0f});
  for (const char* config : {R"({"architectures": )", R"([1, 2])",
                             R"({"quantization_config": {"weight_block_size": [128]}})",
                             R"({"quantization_config": {"weight_block_size": [0, 128]}})",
                             R"({"quantization_config": {"weight_block_size": [128, 1.5]}})",
                             R"({"quantization_config": {"weight_block_size": "128"}})"}) {
    SCOPED_TRACE(config);
    write_checkpoint(tmp_.path(), config, writer);
    StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
    ASSERT_FALSE(checkpoint.ok());
    EXPECT_EQ(checkpoint.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(checkpoint.status().message(), HasSubstr(tmp_.path() + "/config.json"));
  }
}

TEST_F(CheckpointTest, MalformedWeightsFileNamesFileAndTensor) {
  write_text(tmp_.file("config.json"), kConfig);
  test_util::write_bytes(
      tmp_.file("model.safetensors"),
      test_util::raw_safetensors(
          R"({"bad.weight":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1));
  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
  ASSERT_FALSE(checkpoint.ok());
  EXPECT_THAT(checkpoint.status().message(), HasSubstr(tmp_.path() + "/model.safetensors"));
  EXPECT_THAT(checkpoint.status().message(), HasSubstr("\"bad.weight\""));
}

// ---------------------------------------------------------------------------------------------
// FP8 E4M3 weights with block scales (DeepSeek-V3 layout).

// The e4m3fn value of a code from its bit fields, independent of dshpc::f8e4m3_to_float.
double e4m3_value(uint8_t code) {
  const int exponent = (code >> 3) & 0xf;
  const int mantissa = code & 0x7;
  const double magnitude = exponent == 0 ? mantissa / 8.0 * std::pow(2.0, -6)
                                         : (1.0 + mantissa / 8.0) * std::pow(2.0, exponent - 7);
  return (code & 0x80) ? -magnitude : magnitude;
}

// A quantised [rows, cols] weight, its codes cycling through every non-NaN code, and scales
// [ceil(rows / block_rows), ceil(cols / block_cols)] that are not powers of two.
struct Fp8Weight {
  int64_t rows, cols, block_rows, block_cols;
  int64_t scale_rows() const { return (rows + block_rows - 1) / block_rows; }
  int64_t scale_cols() const { return (cols + block_cols - 1) / block_cols; }

  uint8_t code(int64_t r, int64_t c) const {
    auto code = static_cast<uint8_t>(r * 31 + c * 17 + 5);
    return (code & 0x7f) == 0x7f ? code ^ 1 : code;  // 0x7f and 0xff are NaN
  }
  float scale(int64_t i, int64_t j) const { return 0.0173f * static_cast<float>(1 + i * 5 + j); }

  std::vector<uint8_t> codes() const {
    std::vector<uint8_t> out;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) out.push_back(code(r, c));
    }
    return out;
  }
  std::vector<float> scales() const {
    std::vector<float> out;
    for (int64_t i = 0; i < scale_rows(); ++i) {
      for (int64_t j = 0; j < scale_cols(); ++j) out.push_back(scale(i, j));
    }
    return out;
  }
  // w = q × scale_inv[r / block_rows][c / block_cols], one element at a time. The product of a
  // 4-bit and a 24-bit significand is exact in double, so rounding it to float once gives
  // exactly the float32 product: the reader must match bit for bit.
  std::vector<float> expected(int64_t row0, int64_t num_rows, int64_t col0,
                              int64_t num_cols) const {
    std::vector<float> out;
    for (int64_t r = row0; r < row0 + num_rows; ++r) {
      for (int64_t c = col0; c < col0 + num_cols; ++c) {
        const double s = scale(r / block_rows, c / block_cols);
        out.push_back(static_cast<float>(e4m3_value(code(r, c)) * s));
      }
    }
    return out;
  }
  void add_to(SafetensorsWriter& writer, const std::string& name) const {
    writer.add_f8_e4m3(name, {rows, cols}, codes());
    writer.add_f32(name + "_scale_inv", {scale_rows(), scale_cols()}, scales());
  }
};

constexpr char kFp8Name[] = "model.layers.0.mlp.down_proj.weight";

TEST_F(CheckpointTest, DequantisesFp8WithRaggedBlocks) {
  const Fp8Weight weight{130, 200, 128, 128};  // scales [2, 2]; last blocks 2 rows, 72 cols
  SafetensorsWriter writer;
  weight.add_to(writer, kFp8Name);
  write_checkpoint(tmp_.path(), kConfig, writer);
  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();

  EXPECT_EQ(read(*checkpoint, kFp8Name, Range::all(), Range::all(), 130 * 200),
            weight.expected(0, 130, 0, 200));
  const struct {
    int64_t row0, rows, col0, cols;
  } windows[] = {{120, 10, 100, 100}, {127, 2, 127, 2}, {129, 1, 199, 1}, {0, 128, 128, 72},
                 {128, 2, 0, 200},    {5, 1, 0, 1},     {64, 66, 50, 150}};
  for (const auto& w : windows) {
    SCOPED_TRACE(testing::Message() << w.row0 << "+" << w.rows << " x " << w.col0 << "+" << w.cols);
    EXPECT_EQ(read(*checkpoint, kFp8Name, {w.row0, w.rows}, {w.col0, w.cols}, w.rows * w.cols),
              weight.expected(w.row0, w.rows, w.col0, w.cols));
  }
}

TEST_F(CheckpointTest, TakesFp8BlockSizeFromConfig) {
  const Fp8Weight weight{130, 70, 64, 32};  // scales [3, 3]
  SafetensorsWriter writer;
  weight.add_to(writer, kFp8Name);
  write_checkpoint(tmp_.path(),
                   R"({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                        "weight_block_size": [64, 32]}})",
                   writer);
  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
  EXPECT_EQ(checkpoint->fp8_block_rows(), 64);
  EXPECT_EQ(checkpoint->fp8_block_cols(), 32);
  EXPECT_EQ(read(*checkpoint, kFp8Name, Range::all(), Range::all(), 130 * 70),
            weight.expected(0, 130, 0, 70));
  EXPECT_EQ(read(*checkpoint, kFp8Name, {60, 70}, {30, 5}, 70 * 5), weight.expected(60, 70, 30, 5));
}

TEST_F(CheckpointTest, Fp8NeedsScalesOfTheRightShape) {
  SafetensorsWriter writer;
  writer.add_f8_e4m3("no_scale.weight", {2, 2}, {0x38, 0x38, 0x38, 0x38});
  Fp8Weight{130, 200, 128, 128}.add_to(writer, kFp8Name);
  write_checkpoint(tmp_.path(), kConfig, writer);
  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();

  expect_read_error(*checkpoint, "no_scale.weight", Range::all(), Range::all(),
                    StatusCode::kNotFound, "\"no_scale.weight_scale_inv\"");
  // With 64-row blocks the [2, 2] scales of a 130-row weight are the wrong shape.
  checkpoint->set_fp8_block(64, 128);
  expect_read_error(*checkpoint, kFp8Name, Range::all(), Range::all(), StatusCode::kInvalidArgument,
                    std::string(kFp8Name) + "_scale_inv");
  expect_read_error(*checkpoint, kFp8Name, Range::all(), Range::all(), StatusCode::kInvalidArgument,
                    "[3, 2]");
  checkpoint->set_fp8_block(0, 128);
  expect_read_error(*checkpoint, kFp8Name, Range::all(), Range::all(), StatusCode::kInvalidArgument,
                    "block");
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints.

constexpr char kShard1[] = "model-00001-of-00002.safetensors";
constexpr char kShard2[] = "model-00002-of-00002.safetensors";

TEST_F(CheckpointTest, ReadsShardedDirectory) {
  const std::vector<float> values = matrix_values(kRows, kCols);
  const Fp8Weight weight{130, 200, 128, 128};
  SafetensorsWriter shard1;
  shard1.add_f32("a", {kRows, kCols}, values)
      .add_f32("q_scale_inv", {2, 2}, weight.scales());  // scales may live in another shard
  SafetensorsWriter shard2;
  shard2.add_bf16("c", {kRows, kCols}, values)
      .add_f8_e4m3("q", {130, 200}, weight.codes())
      .add_f32("extra", {1}, {9.0f});  // not in the index: ignored
  shard1.write(tmp_.file(kShard1));
  shard2.write(tmp_.file(kShard2));
  write_text(tmp_.file("config.json"), kConfig);
  write_text(
      tmp_.file("model.safetensors.index.json"),
      index_json({{"a", kShard1}, {"c", kShard2}, {"q", kShard2}, {"q_scale_inv", kShard1}}));

  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
  EXPECT_THAT(checkpoint->tensor_names(), ElementsAre("a", "c", "q", "q_scale_inv"));
  EXPECT_FALSE(checkpoint->contains("extra"));
  EXPECT_THAT(checkpoint->file_of("a"), EndsWith(kShard1));
  EXPECT_THAT(checkpoint->file_of("c"), EndsWith(kShard2));
  EXPECT_EQ(read(*checkpoint, "a", {1, 2}, {3, 4}, 8), expected_window(1, 2, 3, 4));
  EXPECT_EQ(read(*checkpoint, "c", Range::all(), Range::all(), kRows * kCols), values);
  EXPECT_EQ(read(*checkpoint, "q", {100, 30}, {120, 80}, 30 * 80),
            weight.expected(100, 30, 120, 80));
}

TEST_F(CheckpointTest, WriterHelperBuildsAnIndexThatOpens) {
  SafetensorsWriter one, two;
  one.add_f32("x", {2}, {1.0f, 2.0f});
  two.add_f16("y", {2}, {3.0f, 4.0f});
  write_sharded_checkpoint(tmp_.path(), kConfig, {{kShard1, one}, {kShard2, two}});
  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
  EXPECT_EQ(read(*checkpoint, "y", Range::all(), Range::all(), 2),
            (std::vector<float>{3.0f, 4.0f}));
}

TEST_F(CheckpointTest, SingleFileWinsOverIndex) {
  SafetensorsWriter writer;
  writer.add_f32("single", {1}, {1.0f});
  write_checkpoint(tmp_.path(), kConfig, writer);
  write_text(tmp_.file("model.safetensors.index.json"), index_json({{"gone", kShard1}}));
  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp_.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
  EXPECT_THAT(checkpoint->tensor_names(), ElementsAre("single"));
}

// Writes config.json, shard 1 holding "a", and `index`; the open must fail with `code` and a
// message naming the index and everything in `mentions`.
void expect_index_error(const TempDir& tmp, const std::string& index, StatusCode code,
                        const std::vector<std::string>& mentions) {
  SafetensorsWriter shard1;
  shard1.add_f32("a", {2}, {1.0f, 2.0f});
  shard1.write(tmp.file(kShard1));
  write_text(tmp.file("config.json"), kConfig);
  write_text(tmp.file("model.safetensors.index.json"), index);
  StatusOr<Checkpoint> checkpoint = Checkpoint::open(tmp.path());
  ASSERT_FALSE(checkpoint.ok()) << index;
  EXPECT_EQ(checkpoint.status().code(), code) << checkpoint.status().to_string();
  EXPECT_THAT(checkpoint.status().message(),
              HasSubstr(tmp.path() + "/model.safetensors.index.json"));
  for (const std::string& mention : mentions) {
    EXPECT_THAT(checkpoint.status().message(), HasSubstr(mention));
  }
}

TEST_F(CheckpointTest, IndexNamingMissingShard) {
  expect_index_error(tmp_, index_json({{"a", kShard1}, {"e", "model-00003-of-00003.safetensors"}}),
                     StatusCode::kNotFound,
                     {"\"model-00003-of-00003.safetensors\"", "\"e\"", "cannot open"});
}

TEST_F(CheckpointTest, IndexNamingTensorNotInShard) {
  expect_index_error(tmp_, index_json({{"a", kShard1}, {"zz", kShard1}}), StatusCode::kDataLoss,
                     {"\"zz\"", std::string("\"") + kShard1 + "\"", "does not hold"});
}

TEST_F(CheckpointTest, IndexWithMalformedEntries) {
  const StatusCode kInvalid = StatusCode::kInvalidArgument;
  expect_index_error(tmp_, R"({"weight_map": {"a": 1}})", kInvalid, {"\"a\"", "not a string"});
  expect_index_error(tmp_, R"({"weight_map": {"a": null}})", kInvalid, {"\"a\""});
  expect_index_error(tmp_, R"({"metadata": {}})", kInvalid, {"weight_map"});
  expect_index_error(tmp_, R"({"weight_map": ["a"]})", kInvalid, {"weight_map"});
  expect_index_error(tmp_, R"([])", kInvalid, {"weight_map"});
  expect_index_error(tmp_, R"({"weight_map": {"a": )", kInvalid, {"invalid JSON"});
  expect_index_error(tmp_, R"({"weight_map": {"a": "x", "a": "y"}})", kInvalid,
                     {"duplicate key \"a\""});
  expect_index_error(tmp_, R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})",
                     kInvalid, {"\"a\"", "../model-00001"});
  expect_index_error(tmp_, R"({"weight_map": {"a": ""}})", kInvalid, {"\"a\""});
}

TEST_F(CheckpointTest, IndexWithMalformedShard) {
  test_util::write_bytes(
      tmp_.file(kShard2),
      test_util::raw_safetensors(R"({"b":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8));
  expect_index_error(tmp_, index_json({{"a", kShard1}, {"b", kShard2}}),
                     StatusCode::kInvalidArgument,
                     {tmp_.path() + "/" + kShard2, "\"b\"", "non-negative"});
}

// ---------------------------------------------------------------------------------------------
// The fixture checkpoints: real Hugging Face directories written by the reference code.

// One float of a tensor, taken from the file's raw bytes: 8 + N + data_begin + 4 × index.
float raw_f32(const std::vector<uint8_t>& raw, const SafetensorsTensor& tensor, int64_t index) {
  uint64_t header_bytes = 0;
  for (int i = 0; i < 8; ++i) header_bytes |= static_cast<uint64_t>(raw[i]) << (8 * i);
  float value;
  std::memcpy(&value, raw.data() + 8 + header_bytes + tensor.data_begin + 4 * index, 4);
  return value;
}

TEST(CheckpointFixtures, OpenEveryFixtureModel) {
  for (const char* model :
       {"llama-mha", "llama-gqa-linear", "deepseek-v2-lite-tiny", "deepseek-v3-tiny"}) {
    SCOPED_TRACE(model);
    const std::string dir = std::string(DSHPC_FIXTURES_DIR) + "/models/" + model;
    StatusOr<Checkpoint> checkpoint = Checkpoint::open(dir);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
    EXPECT_THAT(checkpoint->config_json(), HasSubstr("\"architectures\""));
    const std::string embed = "model.embed_tokens.weight";
    ASSERT_EQ(shape_or_empty(*checkpoint, embed), (std::vector<int64_t>{1024, 128}));

    // A tensor-parallel style slice equals the same elements read straight from the file.
    std::vector<float> slice = read(*checkpoint, embed, {10, 3}, {64, 32}, 3 * 32);
    const SafetensorsTensor* tensor = find_or_null(*checkpoint, embed);
    ASSERT_NE(tensor, nullptr);
    const std::vector<uint8_t> raw = test_util::read_bytes(checkpoint->file_of(embed));
    for (int64_t r = 0; r < 3; ++r) {
      for (int64_t c = 0; c < 32; ++c) {
        ASSERT_EQ(slice[r * 32 + c], raw_f32(raw, *tensor, (10 + r) * 128 + 64 + c));
      }
    }
  }

  StatusOr<Checkpoint> v3 =
      Checkpoint::open(std::string(DSHPC_FIXTURES_DIR) + "/models/deepseek-v3-tiny");
  ASSERT_TRUE(v3.ok());
  const std::string bias = "model.layers.1.mlp.gate.e_score_correction_bias";
  EXPECT_EQ(shape_or_empty(*v3, bias), (std::vector<int64_t>{16}));
  const std::vector<float> values = read(*v3, bias, Range::all(), Range::all(), 16);
  EXPECT_EQ(read(*v3, bias, {4, 8}, Range::all(), 8),
            std::vector<float>(values.begin() + 4, values.begin() + 12));
}

}  // namespace
}  // namespace dshpc
