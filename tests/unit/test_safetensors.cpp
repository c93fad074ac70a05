// The safetensors parser: valid files round-trip, and every malformed header we can think of is
// a Status naming the file and the tensor, never a crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/unit/safetensors_writer.h"
#include "worker/safetensors.h"

namespace dshpc {
namespace {

using test_util::raw_safetensors;
using test_util::SafetensorsWriter;
using test_util::TempDir;
using test_util::write_bytes;
using ::testing::AnyOf;
using ::testing::HasSubstr;

// Element `i` of a tensor, copied out of the map (the data may be unaligned).
template <typename T>
T element(const SafetensorsFile& file, const SafetensorsTensor& tensor, size_t i) {
  T value;
  std::memcpy(&value, file.data(tensor) + i * sizeof(T), sizeof(T));
  return value;
}

std::vector<float> to_f32(const SafetensorsFile& file, const SafetensorsTensor& tensor) {
  const size_t count = static_cast<size_t>(tensor.num_elements());
  std::vector<uint8_t> aligned(file.data(tensor), file.data(tensor) + tensor.num_bytes());
  std::vector<float> out(count);
  convert_to_f32(tensor.dtype, aligned.data(), out.data(), count);
  return out;
}

TEST(SafetensorsFile, RoundTripsEveryDtype) {
  TempDir tmp;
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt")
      .add_f32("w.f32", {2, 3}, {1.5f, -2.0f, 0.0f, 3.25f, -1e-3f, 65536.0f})
      .add_bf16("w.bf16", {4}, {1.0f, -2.5f, 0.15625f, 256.0f})
      .add_f16("w.f16", {2, 2}, {1.0f, -2.0f, 0.333251953125f, std::ldexp(1.0f, -24)})
      .add_f64("w.f64", {3}, {0.5, -4.0, 1e-30})
      .add_i64("ids", {2}, {7, -9})
      .add_f8_e4m3("w.f8", {2, 2}, {0x38, 0x7e, 0xfe, 0x01})
      .add_f32("empty", {0, 5}, {})
      .add_f32("scalar", {}, {42.0f});
  const std::string path = tmp.file("all.safetensors");
  writer.write(path);

  StatusOr<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_EQ(file->tensors().size(), 8u);
  for (size_t i = 1; i < file->tensors().size(); ++i) {
    EXPECT_LE(file->tensors()[i - 1].data_end, file->tensors()[i].data_begin);
  }
  EXPECT_EQ(file->find("missing"), nullptr);

  const SafetensorsTensor* f32 = file->find("w.f32");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(f32->dtype, DType::kF32);
  EXPECT_EQ(f32->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f32->num_elements(), 6);
  EXPECT_EQ(f32->num_bytes(), 24u);
  EXPECT_EQ(to_f32(*file, *f32), (std::vector<float>{1.5f, -2.0f, 0.0f, 3.25f, -1e-3f, 65536.0f}));

  const SafetensorsTensor* bf16 = file->find("w.bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->dtype, DType::kBF16);
  EXPECT_EQ(to_f32(*file, *bf16), (std::vector<float>{1.0f, -2.5f, 0.15625f, 256.0f}));

  const SafetensorsTensor* f16 = file->find("w.f16");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->dtype, DType::kF16);
  EXPECT_EQ(element<uint16_t>(*file, *f16, 2), 0x3555u);  // 1/3 rounded to half
  EXPECT_EQ(to_f32(*file, *f16),
            (std::vector<float>{1.0f, -2.0f, 0.333251953125f, std::ldexp(1.0f, -24)}));

  const SafetensorsTensor* f64 = file->find("w.f64");
  ASSERT_NE(f64, nullptr);
  EXPECT_EQ(to_f32(*file, *f64), (std::vector<float>{0.5f, -4.0f, 1e-30f}));

  const SafetensorsTensor* ids = file->find("ids");
  ASSERT_NE(ids, nullptr);
  EXPECT_EQ(ids->dtype, DType::kI64);
  EXPECT_EQ(element<int64_t>(*file, *ids, 1), -9);

  const SafetensorsTensor* f8 = file->find("w.f8");
  ASSERT_NE(f8, nullptr);
  EXPECT_EQ(f8->dtype, DType::kF8E4M3);
  EXPECT_EQ(to_f32(*file, *f8), (std::vector<float>{1.0f, 448.0f, -448.0f, std::ldexp(1.0f, -9)}));

  const SafetensorsTensor* empty = file->find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->num_elements(), 0);
  EXPECT_EQ(empty->num_bytes(), 0u);
  const SafetensorsTensor* scalar = file->find("scalar");
  ASSERT_NE(scalar, nullptr);
  EXPECT_EQ(scalar->num_elements(), 1);
  EXPECT_EQ(element<float>(*file, *scalar, 0), 42.0f);
}

TEST(SafetensorsFile, AcceptsGapsTrailingBytesUnknownKeysAndOddHeaderLength) {
  TempDir tmp;
  // Header length 101 (odd, unpadded), a gap [8, 12) between tensors, 4 bytes after the last
  // one, and an unknown per-entry key: all legal.
  std::string header = R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},)"
                       R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"note":"x"}})";
  const std::string path = tmp.file("gaps.safetensors");
  write_bytes(path, raw_safetensors(header, 20));
  StatusOr<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  ASSERT_EQ(file->tensors().size(), 2u);
  EXPECT_EQ(file->tensors()[0].name, "a");  // sorted by offset, not JSON order
  EXPECT_EQ(file->tensors()[1].name, "b");
  EXPECT_EQ(file->data(file->tensors()[1]) - file->data(file->tensors()[0]), 12);
  EXPECT_TRUE(file->metadata().empty());
}

TEST(SafetensorsFile, MissingFileIsNotFound) {
  TempDir tmp;
  const std::string path = tmp.file("absent.safetensors");
  StatusOr<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr(path));
}

// ---------------------------------------------------------------------------------------------
// Malformed headers, one per row: the header text, the data region size, and what the message
// must mention besides the file name.

struct MalformedCase {
  std::string label;
  std::string header;
  size_t data_bytes;
  std::vector<std::string> mentions;
};

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

// A header holding only the tensor "w".
std::string one_w(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return "{" + entry("w", dtype, shape, offsets) + "}";
}

std::vector<MalformedCase> malformed_cases() {
  const std::string ok_w = entry("w", "F32", "[2]", "[0,8]");
  const std::string tensor_w = "\"w\"";
  return {
      {"not_json", R"({"w":{"dtype":"F32",)", 8, {"invalid JSON"}},
      {"text_after_json", "{" + ok_w + "} x", 8, {"invalid JSON"}},
      {"empty_header", "", 8, {"invalid JSON"}},
      {"invalid_utf8", "{\"w\xff\":{}}", 8, {"invalid JSON"}},
      {"nested_too_deep", std::string(200, '[') + std::string(200, ']'), 0, {"invalid JSON"}},
      {"array_root", "[{" + ok_w + "}]", 8, {"array", "expected an object"}},
      {"string_root", R"("w")", 8, {"string", "expected an object"}},
      {"entry_not_object", R"({"w":[0,8]})", 8, {tensor_w, "expected an object"}},
      {"missing_dtype", R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8, {tensor_w, "dtype"}},
      {"dtype_not_string",
       R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})",
       8,
       {tensor_w, "dtype"}},
      {"unknown_dtype", one_w("F4", "[2]", "[0,8]"), 8, {tensor_w, "\"F4\""}},
      {"missing_shape", R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8, {tensor_w, "shape"}},
      {"shape_not_array", one_w("F32", "2", "[0,8]"), 8, {tensor_w, "shape"}},
      {"shape_fractional_dim",
       one_w("F32", "[2.5]", "[0,8]"),
       8,
       {tensor_w, "shape[0]", "not an integer"}},
      {"shape_float_dim", one_w("F32", "[2.0]", "[0,8]"), 8, {tensor_w, "not an integer"}},
      {"shape_string_dim", one_w("F32", "[\"2\"]", "[0,8]"), 8, {tensor_w, "not an integer"}},
      {"negative_dim", one_w("F32", "[2,-1]", "[0,8]"), 8, {tensor_w, "shape[1]", "-1"}},
      {"dim_beyond_int64",
       one_w("U8", "[18446744073709551615]", "[0,8]"),
       8,
       {tensor_w, "too large"}},
      {"element_count_overflow",
       one_w("F32", "[4294967296,4294967296]", "[0,8]"),
       8,
       {tensor_w, "overflow"}},
      {"element_count_beyond_int64",
       one_w("U8", "[4294967296,2147483648]", "[0,8]"),
       8,
       {tensor_w, "overflow"}},
      {"byte_count_overflow",
       one_w("F32", "[4611686018427387904]", "[0,0]"),
       8,
       {tensor_w, "overflow"}},
      {"missing_offsets", R"({"w":{"dtype":"F32","shape":[2]}})", 8, {tensor_w, "data_offsets"}},
      {"offsets_one_value", one_w("F32", "[2]", "[8]"), 8, {tensor_w, "data_offsets"}},
      {"offsets_three_values", one_w("F32", "[2]", "[0,8,8]"), 8, {tensor_w, "data_offsets"}},
      {"offsets_not_array", one_w("F32", "[2]", "{}"), 8, {tensor_w, "data_offsets"}},
      {"negative_offset", one_w("F32", "[2]", "[-8,0]"), 8, {tensor_w, "non-negative"}},
      {"offsets_as_strings", one_w("F32", "[2]", "[\"0\",\"8\"]"), 8, {tensor_w, "data_offsets"}},
      {"begin_after_end", one_w("F32", "[0]", "[8,0]"), 8, {tensor_w, "begin > end"}},
      {"end_past_data", one_w("F32", "[4]", "[0,16]"), 8, {tensor_w, "beyond the data region"}},
      {"offsets_near_uint64_max",
       one_w("F32", "[2]", "[18446744073709551608,18446744073709551615]"),
       8,
       {tensor_w}},
      {"byte_length_mismatch",
       one_w("F32", "[3]", "[0,8]"),
       12,
       {tensor_w, "needs 12 bytes", "span 8"}},
      {"bf16_byte_length_mismatch",
       one_w("BF16", "[4]", "[0,16]"),
       16,
       {tensor_w, "needs 8 bytes"}},
      {"overlap",
       "{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F32", "[2]", "[4,12]") + "}",
       12,
       {"\"a\"", "\"b\"", "overlaps"}},
      {"same_range",
       "{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F32", "[2]", "[0,8]") + "}",
       8,
       {"\"a\"", "\"b\"", "overlaps"}},
      {"empty_tensor_inside_another",
       "{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("z", "F32", "[0]", "[4,4]") + "}",
       8,
       {"\"a\"", "\"z\"", "overlaps"}},
      {"duplicate_name",
       "{" + ok_w + "," + entry("w", "F32", "[2]", "[8,16]") + "}",
       16,
       {tensor_w, "twice"}},
      {"duplicate_key_in_entry",
       R"({"w":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}})",
       8,
       {tensor_w, "duplicate key \"dtype\""}},
      {"metadata_not_object", R"({"__metadata__":"pt",)" + ok_w + "}", 8, {"__metadata__"}},
      {"metadata_value_not_string",
       R"({"__metadata__":{"format":1},)" + ok_w + "}",
       8,
       {"__metadata__", "\"format\""}},
      {"metadata_duplicate_key",
       R"({"__metadata__":{"k":"a","k":"b"},)" + ok_w + "}",
       8,
       {"__metadata__", "\"k\""}},
  };
}

class SafetensorsMalformedTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(SafetensorsMalformedTest, IsRejectedWithFileAndTensorNamed) {
  const MalformedCase& c = GetParam();
  TempDir tmp;
  const std::string file_name = c.label + ".safetensors";
  const std::string path = tmp.file(file_name);
  write_bytes(path, raw_safetensors(c.header, c.data_bytes));

  StatusOr<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_FALSE(file.ok()) << "accepted header: " << c.header;
  EXPECT_THAT(file.status().code(), AnyOf(StatusCode::kInvalidArgument, StatusCode::kDataLoss));
  EXPECT_THAT(file.status().message(), HasSubstr(file_name));
  for (const std::string& mention : c.mentions) {
    EXPECT_THAT(file.status().message(), HasSubstr(mention));
  }
}

INSTANTIATE_TEST_SUITE_P(SafetensorsHeaders, SafetensorsMalformedTest,
                         ::testing::ValuesIn(malformed_cases()),
                         [](const ::testing::TestParamInfo<MalformedCase>& info) {
                           return info.param.label;
                         });

// ---------------------------------------------------------------------------------------------
// Truncated files and lying header lengths.

class SafetensorsTruncationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SafetensorsWriter writer;
    writer.add_f32("first", {2, 2}, {1, 2, 3, 4}).add_bf16("last", {3}, {1, 2, 3});
    valid_ = writer.bytes();
    header_bytes_ = valid_[0] | (valid_[1] << 8);  // small enough for two bytes
  }

  // Writes the first `keep` bytes of the valid file and opens it.
  StatusOr<SafetensorsFile> open_prefix(size_t keep, const std::string& file_name) {
    path_ = tmp_.file(file_name);
    write_bytes(path_, std::vector<uint8_t>(valid_.begin(), valid_.begin() + keep));
    return SafetensorsFile::open(path_);
  }

  TempDir tmp_;
  std::vector<uint8_t> valid_;
  size_t header_bytes_ = 0;
  std::string path_;
};

TEST_F(SafetensorsTruncationTest, ValidFileOpens) {
  StatusOr<SafetensorsFile> file = open_prefix(valid_.size(), "whole.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->tensors().size(), 2u);
}

TEST_F(SafetensorsTruncationTest, EmptyFile) {
  StatusOr<SafetensorsFile> file = open_prefix(0, "empty.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr("empty.safetensors"));
  EXPECT_THAT(file.status().message(), HasSubstr("too small"));
}

TEST_F(SafetensorsTruncationTest, CutInLengthPrefix) {
  StatusOr<SafetensorsFile> file = open_prefix(5, "cut_prefix.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("cut_prefix.safetensors"));
  EXPECT_THAT(file.status().message(), HasSubstr("too small"));
}

TEST_F(SafetensorsTruncationTest, CutInHeader) {
  StatusOr<SafetensorsFile> file = open_prefix(8 + header_bytes_ / 2, "cut_header.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr("cut_header.safetensors"));
  EXPECT_THAT(file.status().message(), HasSubstr("truncated"));
}

TEST_F(SafetensorsTruncationTest, CutInData) {
  StatusOr<SafetensorsFile> file = open_prefix(valid_.size() - 3, "cut_data.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr("cut_data.safetensors"));
  EXPECT_THAT(file.status().message(), HasSubstr("\"last\""));  // the tensor that lost bytes
  EXPECT_THAT(file.status().message(), HasSubstr("truncated"));
}

TEST_F(SafetensorsTruncationTest, EveryPrefixFailsCleanly) {
  // Exact-size heap copies, so that AddressSanitizer builds catch any read past the end.
  for (size_t keep = 0; keep < valid_.size(); ++keep) {
    std::vector<uint8_t> prefix(valid_.begin(), valid_.begin() + keep);
    StatusOr<SafetensorsHeader> header =
        parse_safetensors_header(keep ? prefix.data() : nullptr, keep, "prefix.safetensors");
    EXPECT_FALSE(header.ok()) << "prefix of " << keep << " bytes accepted";
    EXPECT_THAT(header.status().message(), HasSubstr("prefix.safetensors"));
  }
}

TEST_F(SafetensorsTruncationTest, HeaderLengthOneBeyondFile) {
  const std::string header(valid_.begin() + 8, valid_.begin() + 8 + header_bytes_);
  const std::vector<uint8_t> data(valid_.begin() + 8 + header_bytes_, valid_.end());
  const std::string path = tmp_.file("long_length.safetensors");
  write_bytes(path, raw_safetensors(valid_.size() - 8 + 1, header, data));
  StatusOr<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr("long_length.safetensors"));
  EXPECT_THAT(file.status().message(), HasSubstr("header length"));
}

TEST_F(SafetensorsTruncationTest, HugeHeaderLengths) {
  const std::string header(valid_.begin() + 8, valid_.begin() + 8 + header_bytes_);
  for (uint64_t length : {uint64_t{1} << 63, ~uint64_t{0}, kMaxSafetensorsHeaderBytes + 1}) {
    const std::string path = tmp_.file("huge_length.safetensors");
    write_bytes(path, raw_safetensors(length, header, {}));
    StatusOr<SafetensorsFile> file = SafetensorsFile::open(path);
    ASSERT_FALSE(file.ok()) << length;
    EXPECT_EQ(file.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(file.status().message(), HasSubstr("huge_length.safetensors"));
    EXPECT_THAT(file.status().message(), HasSubstr(std::to_string(length)));
    EXPECT_THAT(file.status().message(), HasSubstr("exceeds the limit"));
  }
}

// Every single-byte change to the header must either be rejected or yield a header that keeps
// the parser's promises (in bounds, sizes consistent, no overlap). Run under the sanitizers
// (-DDSHPC_SANITIZE=ON) this is a small fuzzer.
TEST_F(SafetensorsTruncationTest, MutatedHeadersKeepInvariants) {
  const char replacements[] = {'{', '}', '[', ']', '"', ',',  ':',  '-',
                               '0', '9', 'e', '.', ' ', '\\', '\0', '\xff'};
  int accepted = 0;
  for (size_t pos = 8; pos < 8 + header_bytes_; ++pos) {
    for (char replacement : replacements) {
      std::vector<uint8_t> bytes = valid_;
      bytes[pos] = static_cast<uint8_t>(replacement);
      StatusOr<SafetensorsHeader> header =
          parse_safetensors_header(bytes.data(), bytes.size(), "mutated.safetensors");
      if (!header.ok()) {
        EXPECT_THAT(header.status().message(), HasSubstr("mutated.safetensors"));
        continue;
      }
      ++accepted;
      const uint64_t data_size = bytes.size() - 8 - header->header_bytes;
      for (size_t i = 0; i < header->tensors.size(); ++i) {
        const SafetensorsTensor& t = header->tensors[i];
        EXPECT_LE(t.data_begin, t.data_end);
        EXPECT_LE(t.data_end, data_size);
        EXPECT_EQ(t.num_bytes(), static_cast<uint64_t>(t.num_elements()) * dtype_size(t.dtype));
        if (i > 0) {
          EXPECT_GE(t.data_begin, header->tensors[i - 1].data_end);
        }
      }
    }
  }
  EXPECT_GT(accepted, 0);  // e.g. a changed digit in a name or a space in the padding
}

// ---------------------------------------------------------------------------------------------

TEST(SafetensorsJson, DuplicateKeysAndSyntax) {
  EXPECT_TRUE(check_json_document(R"({"a":{"b":1,"c":[{"b":2}]},"b":{"b":3}} )", "f.json").ok());
  const Status nested = check_json_document(R"({"a":{"x":[{"k":1,"k":2}]}})", "f.json");
  ASSERT_FALSE(nested.ok());
  EXPECT_THAT(nested.message(), HasSubstr("f.json"));
  EXPECT_THAT(nested.message(), HasSubstr("duplicate key \"k\" inside \"x\""));
  const Status top = check_json_document(R"({"a":1,"a":1})", "f.json");
  ASSERT_FALSE(top.ok());
  EXPECT_THAT(top.message(), HasSubstr("duplicate key \"a\" at the top level"));
  EXPECT_FALSE(check_json_document(R"({"a":1} {})", "f.json").ok());
  EXPECT_FALSE(check_json_document(R"({"a":1)", "f.json").ok());
  EXPECT_FALSE(check_json_document("", "f.json").ok());
}

// ---------------------------------------------------------------------------------------------
// The fixture checkpoints (written by the reference Python implementation).

struct FixtureModel {
  const char* name;
  size_t tensor_count;
};

TEST(SafetensorsFixtures, ParseEveryFixtureModel) {
  const FixtureModel models[] = {{"llama-mha", 39},
                                 {"llama-gqa-linear", 39},
                                 {"deepseek-v2-lite-tiny", 83},
                                 {"deepseek-v3-tiny", 139}};
  for (const FixtureModel& model : models) {
    SCOPED_TRACE(model.name);
    const std::string path =
        std::string(DSHPC_FIXTURES_DIR) + "/models/" + model.name + "/model.safetensors";
    StatusOr<SafetensorsFile> file = SafetensorsFile::open(path);
    ASSERT_TRUE(file.ok()) << file.status().to_string();
    EXPECT_EQ(file->metadata().at("format"), "pt");
    ASSERT_EQ(file->tensors().size(), model.tensor_count);

    // The reference writer packs tensors back to back up to the end of the file.
    const std::vector<uint8_t> raw = test_util::read_bytes(path);
    uint64_t header_bytes = 0;
    for (int i = 0; i < 8; ++i) header_bytes |= static_cast<uint64_t>(raw[i]) << (8 * i);
    uint64_t expected_begin = 0;
    for (const SafetensorsTensor& tensor : file->tensors()) {
      EXPECT_EQ(tensor.dtype, DType::kF32) << tensor.name;
      EXPECT_EQ(tensor.data_begin, expected_begin) << tensor.name;
      expected_begin = tensor.data_end;
      // data() points at the same bytes as the raw file at 8 + N + begin.
      ASSERT_EQ(std::memcmp(file->data(tensor), raw.data() + 8 + header_bytes + tensor.data_begin,
                            tensor.num_bytes()),
                0)
          << tensor.name;
    }
    EXPECT_EQ(8 + header_bytes + expected_begin, raw.size());

    const SafetensorsTensor* embed = file->find("model.embed_tokens.weight");
    ASSERT_NE(embed, nullptr);
    EXPECT_EQ(embed->shape, (std::vector<int64_t>{1024, 128}));
    EXPECT_EQ(embed->num_bytes(), 1024u * 128u * 4u);
  }

  StatusOr<SafetensorsFile> v3 = SafetensorsFile::open(
      std::string(DSHPC_FIXTURES_DIR) + "/models/deepseek-v3-tiny/model.safetensors");
  ASSERT_TRUE(v3.ok());
  const SafetensorsTensor* bias = v3->find("model.layers.1.mlp.gate.e_score_correction_bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->shape, (std::vector<int64_t>{16}));
  EXPECT_EQ(v3->find("model.layers.0.mlp.gate.e_score_correction_bias"), nullptr);  // layer 0 dense
}

}  // namespace
}  // namespace dshpc
