// The HDF5 checkpoint reader: format checks at open, then per-rank hyperslab reads.
#include "worker/h5_checkpoint.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "worker/checkpoint.h"
#include "worker/chunk_layout.h"
#include "worker/h5_format.h"

namespace dshpc {
namespace {

constexpr int64_t kStagingBytes = int64_t{16} << 20;

bool is_float_dtype(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16 ||
         dtype == DType::kF64 || dtype == DType::kF8E4M3;
}

class H5CheckpointImpl final : public H5Checkpoint {
 public:
  explicit H5CheckpointImpl(h5::CheckpointFile file) : file_(std::move(file)) {}

  Status init() {
    ASSIGN_OR_RETURN(version_, file_.check_format());
    file_.advise_random_access();
    auto config = file_.read_stored_file("config.json");
    if (!config.ok()) {
      if (config.status().code() == StatusCode::kNotFound) {
        return invalid_argument(path() + " holds no config.json (/" + h5::kFilesGroup +
                                "/config.json)");
      }
      return config.status();
    }
    config_json_ = std::move(*config);
    return ok_status();
  }

  const std::string& path() const override { return file_.path(); }
  const std::string& config_json() const override { return config_json_; }
  int64_t format_version() const override { return version_; }
  StatusOr<std::string> read_file(const std::string& name) const override {
    return file_.read_stored_file(name);
  }
  std::vector<std::string> tensor_names() const override {
    auto names = file_.tensor_names();
    return names.ok() ? *names : std::vector<std::string>{};
  }
  StatusOr<H5TensorInfo> tensor(const std::string& name) const override {
    const auto it = infos_.find(name);
    if (it != infos_.end()) return it->second;
    ASSIGN_OR_RETURN(H5TensorInfo info, file_.tensor_info(name));
    infos_.emplace(name, info);
    return info;
  }
  void set_fp8_block(int64_t rows, int64_t cols) override {
    fp8_block_rows_ = rows;
    fp8_block_cols_ = cols;
  }

  // WeightSource
  std::string describe() const override { return path(); }
  StatusOr<std::vector<int64_t>> shape(const std::string& name) const override {
    ASSIGN_OR_RETURN(const H5TensorInfo info, tensor(name));
    return info.shape;
  }
  Status read_f32(const std::string& name, Range rows, Range cols, float* dst) const override {
    const auto start = std::chrono::steady_clock::now();
    Status status = read_window(name, rows, cols, dst);
    stats_.reads += 1;
    stats_.seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return status;
  }
  WeightReadStats read_stats() const override { return stats_; }

 private:
  // Reads rows × cols of a 1-D or 2-D float tensor as float32; FP8 through its block scales.
  Status read_window(const std::string& name, Range rows, Range cols, float* dst) const {
    ASSIGN_OR_RETURN(const H5TensorInfo info, tensor(name));
    const std::string where = path() + ": " + h5::tensor_label(name);
    if (!is_float_dtype(info.dtype)) {
      return invalid_argument(where + ": dtype " + dtype_name(info.dtype) +
                              " cannot be read as float32");
    }
    if (info.shape.size() != 1 && info.shape.size() != 2) {
      return invalid_argument(where + ": read_f32 reads 1-D and 2-D tensors, shape is " +
                              h5::shape_text(info.shape));
    }
    const int64_t num_rows = info.shape[0];
    const int64_t num_cols = info.shape.size() == 2 ? info.shape[1] : 1;
    auto resolve = [&](Range range, int64_t dim, const char* what) -> StatusOr<Range> {
      const int64_t count = range.count == -1 ? dim - range.begin : range.count;
      if (range.begin < 0 || range.begin > dim || range.count < -1 || count > dim - range.begin) {
        return out_of_range(where + ": " + what + " [begin " + std::to_string(range.begin) +
                            ", count " + std::to_string(range.count) + "] outside shape " +
                            h5::shape_text(info.shape));
      }
      return Range{range.begin, count};
    };
    ASSIGN_OR_RETURN(const Range r, resolve(rows, num_rows, "rows"));
    ASSIGN_OR_RETURN(const Range c, resolve(cols, num_cols, "cols"));
    if (r.count == 0 || c.count == 0) return ok_status();
    if (dst == nullptr) return invalid_argument(where + ": null destination");

    std::vector<int64_t> start = {r.begin}, count = {r.count};
    if (info.shape.size() == 2) {
      start.push_back(c.begin);
      count.push_back(c.count);
    }
    const size_t elements = static_cast<size_t>(r.count * c.count);
    const size_t element_bytes = dtype_size(info.dtype);
    auto account = [&] {
      const int64_t bytes = info.chunk.empty() ? static_cast<int64_t>(elements * element_bytes)
                                               : chunk_bytes_touched(info.shape, info.chunk, start,
                                                                     count, element_bytes);
      stats_.add(name, bytes, static_cast<int64_t>(element_bytes));
    };

    switch (info.dtype) {
      case DType::kF32:
        RETURN_IF_ERROR(file_.read_box(info, start, count, H5T_NATIVE_FLOAT, dst));
        account();
        return ok_status();
      case DType::kF64:
      case DType::kBF16:
      case DType::kF16: {
        // Through a staging buffer of whole chunk rows (about kStagingBytes), converted as it
        // goes: no second copy of the slice, and every chunk is still read once.
        const hid_t memory_type = info.dtype == DType::kF64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_UINT16;
        const int64_t chunk_rows = info.chunk.empty() ? r.count : info.chunk[0];
        const int64_t row_bytes = c.count * static_cast<int64_t>(element_bytes);
        const int64_t step =
            chunk_rows *
            std::max<int64_t>(1, kStagingBytes / std::max<int64_t>(1, chunk_rows * row_bytes));
        std::vector<uint8_t> staging;
        for (int64_t row = r.begin; row < r.begin + r.count;) {
          const int64_t end = std::min(r.begin + r.count, row / chunk_rows * chunk_rows + step);
          std::vector<int64_t> slab_start = start, slab_count = count;
          slab_start[0] = row;
          slab_count[0] = end - row;
          staging.resize(static_cast<size_t>(slab_count[0] * row_bytes));
          RETURN_IF_ERROR(
              file_.read_box(info, slab_start, slab_count, memory_type, staging.data()));
          convert_to_f32(info.dtype, staging.data(), dst + (row - r.begin) * c.count,
                         static_cast<size_t>(slab_count[0] * c.count));
          row = end;
        }
        account();
        return ok_status();
      }
      case DType::kF8E4M3:
        return read_fp8(info, r, c, dst, [&] { account(); });
      default:
        return internal_error(where + ": unexpected dtype");
    }
  }

  template <typename Account>
  Status read_fp8(const H5TensorInfo& info, Range rows, Range cols, float* dst,
                  Account account) const {
    const std::string where = path() + ": " + h5::tensor_label(info.name);
    if (info.shape.size() != 2) {
      return invalid_argument(where + ": F8_E4M3 tensors must be 2-D to carry block scales");
    }
    if (fp8_block_rows_ <= 0 || fp8_block_cols_ <= 0) {
      return invalid_argument(where + ": FP8 block size is not positive");
    }
    const std::string scale_name = info.name + kFp8ScaleSuffix;
    auto scale = tensor(scale_name);
    if (!scale.ok()) {
      return not_found(where + ": F8_E4M3 weight needs its block scales \"" + scale_name +
                       "\", which " + path() + " does not hold");
    }
    const std::vector<int64_t> expected =
        fp8_scale_shape(info.shape, fp8_block_rows_, fp8_block_cols_);
    if (scale->shape != expected) {
      return invalid_argument(where + " has shape " + h5::shape_text(info.shape) + " so with " +
                              std::to_string(fp8_block_rows_) + "x" +
                              std::to_string(fp8_block_cols_) + " blocks its scales \"" +
                              scale_name + "\" should have shape " + h5::shape_text(expected) +
                              ", not " + h5::shape_text(scale->shape));
    }
    if (scale->dtype == DType::kF8E4M3 || !is_float_dtype(scale->dtype)) {
      return invalid_argument(where + ": scales must be F32/BF16/F16/F64, not " +
                              dtype_name(scale->dtype));
    }
    std::vector<uint8_t> codes(static_cast<size_t>(rows.count * cols.count));
    RETURN_IF_ERROR(file_.read_box(info, {rows.begin, cols.begin}, {rows.count, cols.count},
                                   H5T_NATIVE_UINT8, codes.data()));
    account();
    const Fp8ScaleBlocks blocks = fp8_scale_blocks(rows, cols, fp8_block_rows_, fp8_block_cols_);
    std::vector<float> scales(static_cast<size_t>(blocks.rows.count * blocks.cols.count));
    RETURN_IF_ERROR(read_window(scale_name, blocks.rows, blocks.cols, scales.data()));
    dequantize_fp8_window(codes.data(), cols.count, rows, cols, scales.data(), fp8_block_rows_,
                          fp8_block_cols_, dst);
    return ok_status();
  }

  h5::CheckpointFile file_;
  int64_t version_ = 0;
  std::string config_json_;
  mutable std::map<std::string, H5TensorInfo> infos_;
  mutable WeightReadStats stats_;
  int64_t fp8_block_rows_ = 128;
  int64_t fp8_block_cols_ = 128;
};

}  // namespace

StatusOr<std::unique_ptr<H5Checkpoint>> H5Checkpoint::open(const std::string& path) {
  ASSIGN_OR_RETURN(h5::CheckpointFile file, h5::CheckpointFile::open(path));
  auto checkpoint = std::make_unique<H5CheckpointImpl>(std::move(file));
  RETURN_IF_ERROR(checkpoint->init());
  return std::unique_ptr<H5Checkpoint>(std::move(checkpoint));
}

}  // namespace dshpc
