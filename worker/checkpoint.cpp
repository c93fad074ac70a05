#include "worker/checkpoint.h"

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <new>
#include <utility>

#include "common/mapped_file.h"

namespace dshpc {
namespace {

namespace json = boost::json;

constexpr char kConfigName[] = "config.json";
constexpr char kSingleFileName[] = "model.safetensors";
constexpr char kIndexName[] = "model.safetensors.index.json";

std::string in_quotes(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

std::string join(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

StatusOr<std::string> read_text(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile file, MappedFile::open(path));
  if (file.size() == 0) return std::string();
  return std::string(reinterpret_cast<const char*>(file.data()), file.size());
}

StatusOr<json::value> parse_json(const std::string& text, const std::string& path) {
  json::error_code ec;
  json::value root;
  try {
    root = json::parse(text, ec);
  } catch (const std::bad_alloc&) {
    return resource_exhausted(path + ": out of memory while parsing JSON");
  }
  if (ec) return invalid_argument(path + ": invalid JSON: " + ec.message());
  return root;
}

bool is_float_dtype(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16 ||
         dtype == DType::kF64 || dtype == DType::kF8E4M3;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return a / b + (a % b != 0 ? 1 : 0);
}

// F8_E4M3 has only 256 codes; a table keeps the dequantisation loop to a load and a multiply.
const std::array<float, 256>& fp8_e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values{};
    for (int code = 0; code < 256; ++code) {
      values[code] = f8e4m3_to_float(static_cast<uint8_t>(code));
    }
    return values;
  }();
  return table;
}

// Converts a rows × cols window of a row-major tensor whose rows hold `row_length` elements.
// Tensor bytes sit at whatever offset the header length leaves them, so a row that is not
// aligned for its element type goes through an aligned copy (convert_to_f32 reads it as
// uint16_t/double; reading a misaligned pointer that way is undefined behaviour).
void convert_window(const uint8_t* base, DType dtype, int64_t row_length, int64_t row_begin,
                    int64_t row_count, int64_t col_begin, int64_t col_count, float* dst) {
  const size_t element_bytes = dtype_size(dtype);
  const size_t window_row_bytes = static_cast<size_t>(col_count) * element_bytes;
  std::vector<uint8_t> aligned_row;
  for (int64_t i = 0; i < row_count; ++i) {
    const size_t element = static_cast<size_t>(row_begin + i) * static_cast<size_t>(row_length) +
                           static_cast<size_t>(col_begin);
    const uint8_t* src = base + element * element_bytes;
    if (reinterpret_cast<uintptr_t>(src) % element_bytes != 0) {
      aligned_row.resize(window_row_bytes);
      std::memcpy(aligned_row.data(), src, window_row_bytes);
      src = aligned_row.data();
    }
    convert_to_f32(dtype, src, dst + static_cast<size_t>(i) * static_cast<size_t>(col_count),
                   static_cast<size_t>(col_count));
  }
}

}  // namespace

std::vector<int64_t> fp8_scale_shape(const std::vector<int64_t>& weight_shape, int64_t block_rows,
                                     int64_t block_cols) {
  return {ceil_div(weight_shape.at(0), block_rows), ceil_div(weight_shape.at(1), block_cols)};
}

Fp8ScaleBlocks fp8_scale_blocks(Range rows, Range cols, int64_t block_rows, int64_t block_cols) {
  const int64_t first_row = rows.begin / block_rows;
  const int64_t first_col = cols.begin / block_cols;
  return {Range{first_row, (rows.begin + rows.count - 1) / block_rows - first_row + 1},
          Range{first_col, (cols.begin + cols.count - 1) / block_cols - first_col + 1}};
}

void dequantize_fp8_window(const uint8_t* codes, int64_t code_row_stride, Range rows, Range cols,
                           const float* scales, int64_t block_rows, int64_t block_cols,
                           float* dst) {
  const Fp8ScaleBlocks blocks = fp8_scale_blocks(rows, cols, block_rows, block_cols);
  const std::array<float, 256>& decode = fp8_e4m3_table();
  const int64_t col_end = cols.begin + cols.count;
  for (int64_t i = 0; i < rows.count; ++i) {
    const int64_t row = rows.begin + i;
    const uint8_t* q_row = codes + static_cast<size_t>(i) * static_cast<size_t>(code_row_stride);
    const float* scale_row =
        scales + static_cast<size_t>((row / block_rows - blocks.rows.begin) * blocks.cols.count);
    float* out = dst + static_cast<size_t>(i) * static_cast<size_t>(cols.count);
    // Walk the row one column block at a time so each block's scale is loaded once.
    for (int64_t col = cols.begin; col < col_end;) {
      const int64_t block = col / block_cols;
      const int64_t block_end = std::min(col_end, (block + 1) * block_cols);
      const float block_scale = scale_row[block - blocks.cols.begin];
      for (; col < block_end; ++col) *out++ = decode[q_row[col - cols.begin]] * block_scale;
    }
  }
}

StatusOr<Checkpoint> Checkpoint::open(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return not_found("checkpoint directory " + dir + " does not exist or is not a directory");
  }
  Checkpoint checkpoint;
  checkpoint.dir_ = dir;
  RETURN_IF_ERROR(checkpoint.read_config(join(dir, kConfigName)));
  const std::string single_path = join(dir, kSingleFileName);
  const std::string index_path = join(dir, kIndexName);
  if (std::filesystem::exists(single_path, ec)) {
    RETURN_IF_ERROR(checkpoint.open_single(single_path));
  } else if (std::filesystem::exists(index_path, ec)) {
    RETURN_IF_ERROR(checkpoint.open_index(index_path));
  } else {
    return not_found("checkpoint directory " + dir + " holds neither " + kSingleFileName + " nor " +
                     kIndexName);
  }
  return checkpoint;
}

Status Checkpoint::read_config(const std::string& config_path) {
  StatusOr<std::string> text = read_text(config_path);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) {
      return not_found("checkpoint directory " + dir_ + " has no " + kConfigName);
    }
    return text.status();
  }
  config_json_ = std::move(text).value();
  ASSIGN_OR_RETURN(const json::value root, parse_json(config_json_, config_path));
  if (!root.is_object()) return invalid_argument(config_path + ": expected a JSON object");

  // Only the FP8 block size matters here; the rest of the config is ModelConfig's to validate.
  const json::value* quantization = root.get_object().if_contains("quantization_config");
  if (quantization == nullptr || !quantization->is_object()) return ok_status();
  const json::value* block = quantization->get_object().if_contains("weight_block_size");
  if (block == nullptr) return ok_status();
  const Status bad_block =
      invalid_argument(config_path + ": quantization_config.weight_block_size must be " +
                       "[rows, cols] of positive integers");
  if (!block->is_array() || block->get_array().size() != 2) return bad_block;
  const json::value& rows = block->get_array()[0];
  const json::value& cols = block->get_array()[1];
  if (!rows.is_int64() || !cols.is_int64() || rows.get_int64() <= 0 || cols.get_int64() <= 0) {
    return bad_block;
  }
  fp8_block_rows_ = rows.get_int64();
  fp8_block_cols_ = cols.get_int64();
  return ok_status();
}

Status Checkpoint::open_single(const std::string& path) {
  ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(path));
  files_.push_back(std::make_unique<SafetensorsFile>(std::move(file)));
  for (const SafetensorsTensor& tensor : files_.back()->tensors()) {
    tensors_.emplace(tensor.name, std::make_pair(size_t{0}, &tensor));
  }
  return ok_status();
}

Status Checkpoint::open_index(const std::string& index_path) {
  ASSIGN_OR_RETURN(const std::string text, read_text(index_path));
  // Duplicate keys would let two shards claim one tensor with the last silently winning.
  RETURN_IF_ERROR(check_json_document(text, index_path));
  ASSIGN_OR_RETURN(const json::value root, parse_json(text, index_path));
  const json::value* weight_map =
      root.is_object() ? root.get_object().if_contains("weight_map") : nullptr;
  if (weight_map == nullptr || !weight_map->is_object()) {
    return invalid_argument(index_path + ": expected an object with a \"weight_map\" object");
  }

  // Group by shard so that each shard is mapped and validated once.
  std::map<std::string, std::vector<std::string>> tensors_by_shard;
  for (const auto& entry : weight_map->get_object()) {
    const std::string name(entry.key());
    const std::string where = index_path + ": weight_map[" + in_quotes(name) + "]";
    if (!entry.value().is_string()) {
      return invalid_argument(where + " is not a string (expected a shard file name)");
    }
    const std::string shard(entry.value().get_string());
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos) {
      return invalid_argument(where + " = " + in_quotes(shard) +
                              " is not a file name inside the checkpoint directory");
    }
    tensors_by_shard[shard].push_back(name);
  }

  for (const auto& [shard, names] : tensors_by_shard) {
    const std::string shard_path = join(dir_, shard);
    StatusOr<SafetensorsFile> file = SafetensorsFile::open(shard_path);
    if (!file.ok()) {
      const std::string more =
          names.size() > 1 ? " and " + std::to_string(names.size() - 1) + " more" : "";
      return file.status().with_context(index_path + ": shard " + in_quotes(shard) +
                                        " (listed for tensor " + in_quotes(names.front()) + more +
                                        ")");
    }
    files_.push_back(std::make_unique<SafetensorsFile>(std::move(file).value()));
    const size_t file_index = files_.size() - 1;
    for (const std::string& name : names) {
      const SafetensorsTensor* tensor = files_.back()->find(name);
      if (tensor == nullptr) {
        return data_loss(index_path + ": weight_map puts tensor " + in_quotes(name) + " in shard " +
                         in_quotes(shard) + ", but " + shard_path + " does not hold it");
      }
      tensors_.emplace(name, std::make_pair(file_index, tensor));
    }
  }
  return ok_status();
}

bool Checkpoint::contains(const std::string& name) const {
  return tensors_.count(name) != 0;
}

StatusOr<const SafetensorsTensor*> Checkpoint::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return not_found("tensor " + in_quotes(name) + " is not in checkpoint " + dir_);
  }
  return it->second.second;
}

std::string Checkpoint::file_of(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? std::string() : files_[it->second.first]->path();
}

std::vector<std::string> Checkpoint::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& entry : tensors_) names.push_back(entry.first);
  return names;
}

StatusOr<std::vector<int64_t>> Checkpoint::shape(const std::string& name) const {
  ASSIGN_OR_RETURN(const SafetensorsTensor* tensor, find(name));
  return tensor->shape;
}

StatusOr<const uint8_t*> Checkpoint::raw_data(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return find(name).status();
  return files_[it->second.first]->data(*it->second.second);
}

Status Checkpoint::read_f32(const std::string& name, Range rows, Range cols, float* dst) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return find(name).status();
  const SafetensorsFile& file = *files_[it->second.first];
  const SafetensorsTensor& tensor = *it->second.second;
  const std::string where = "tensor " + in_quotes(name) + " in " + file.path();

  if (!is_float_dtype(tensor.dtype)) {
    return invalid_argument(where + ": dtype " + dtype_name(tensor.dtype) +
                            " cannot be read as float32");
  }
  if (tensor.shape.size() != 1 && tensor.shape.size() != 2) {
    return invalid_argument(where + ": read_f32 reads 1-D and 2-D tensors, shape is " +
                            shape_string(tensor.shape));
  }
  const int64_t num_rows = tensor.shape[0];
  const int64_t num_cols = tensor.shape.size() == 2 ? tensor.shape[1] : 1;

  // Resolves a Range against a dim without overflow: begin in [0, dim], count in [0, dim - begin].
  auto resolve = [&](Range range, int64_t dim, const char* what) -> StatusOr<Span> {
    const int64_t count = range.count == -1 ? dim - range.begin : range.count;
    if (range.begin < 0 || range.begin > dim || range.count < -1 || count > dim - range.begin) {
      return out_of_range(where + ": " + what + " [begin " + std::to_string(range.begin) +
                          ", count " + std::to_string(range.count) + "] outside shape " +
                          shape_string(tensor.shape));
    }
    return Span{range.begin, count};
  };
  ASSIGN_OR_RETURN(const Span row_span, resolve(rows, num_rows, "rows"));
  ASSIGN_OR_RETURN(const Span col_span, resolve(cols, num_cols, "cols"));
  if (row_span.count == 0 || col_span.count == 0) return ok_status();
  if (dst == nullptr) return invalid_argument(where + ": null destination");

  if (tensor.dtype == DType::kF8E4M3) {
    return read_fp8(name, file, tensor, row_span, col_span, dst);
  }
  convert_window(file.data(tensor), tensor.dtype, num_cols, row_span.begin, row_span.count,
                 col_span.begin, col_span.count, dst);
  return ok_status();
}

Status Checkpoint::read_fp8(const std::string& name, const SafetensorsFile& file,
                            const SafetensorsTensor& tensor, Span rows, Span cols,
                            float* dst) const {
  const std::string where = "tensor " + in_quotes(name) + " in " + file.path();
  const std::string scale_name = name + kFp8ScaleSuffix;
  if (tensor.shape.size() != 2) {
    return invalid_argument(where + ": F8_E4M3 tensors must be 2-D to carry block scales");
  }
  if (fp8_block_rows_ <= 0 || fp8_block_cols_ <= 0) {
    return invalid_argument(where + ": FP8 block size " + std::to_string(fp8_block_rows_) + "x" +
                            std::to_string(fp8_block_cols_) + " is not positive");
  }
  const auto scale_it = tensors_.find(scale_name);
  if (scale_it == tensors_.end()) {
    return not_found(where + ": F8_E4M3 weight needs its block scales " + in_quotes(scale_name) +
                     ", which checkpoint " + dir_ + " does not hold");
  }
  const SafetensorsTensor& scale = *scale_it->second.second;
  const std::string scale_where =
      in_quotes(scale_name) + " in " + files_[scale_it->second.first]->path();
  const std::vector<int64_t> expected_scale_shape =
      fp8_scale_shape(tensor.shape, fp8_block_rows_, fp8_block_cols_);
  if (scale.shape != expected_scale_shape) {
    return invalid_argument(where + " has shape " + shape_string(tensor.shape) + " so with " +
                            std::to_string(fp8_block_rows_) + "x" +
                            std::to_string(fp8_block_cols_) + " blocks its scales " + scale_where +
                            " should have shape " + shape_string(expected_scale_shape) + ", not " +
                            shape_string(scale.shape));
  }
  if (scale.dtype == DType::kF8E4M3 || !is_float_dtype(scale.dtype)) {
    return invalid_argument(scale_where + ": scales must be F32/BF16/F16/F64, not " +
                            dtype_name(scale.dtype));
  }

  // Only the scale blocks that the slice touches.
  const Fp8ScaleBlocks blocks =
      fp8_scale_blocks(Range{rows.begin, rows.count}, Range{cols.begin, cols.count},
                       fp8_block_rows_, fp8_block_cols_);
  std::vector<float> scales(static_cast<size_t>(blocks.rows.count * blocks.cols.count));
  RETURN_IF_ERROR(read_f32(scale_name, blocks.rows, blocks.cols, scales.data()));
  const int64_t num_cols = tensor.shape[1];
  const uint8_t* window =
      file.data(tensor) + static_cast<size_t>(rows.begin) * num_cols + cols.begin;
  dequantize_fp8_window(window, num_cols, Range{rows.begin, rows.count},
                        Range{cols.begin, cols.count}, scales.data(), fp8_block_rows_,
                        fp8_block_cols_, dst);
  return ok_status();
}

}  // namespace dshpc
