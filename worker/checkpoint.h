// A Hugging Face model directory: config.json plus model.safetensors, or the shards listed in
// model.safetensors.index.json ("weight_map": tensor name -> shard file). Every shard is
// memory-mapped and validated when the checkpoint is opened; tensors are read (converted to
// float32) one slice at a time, so a rank reads only what it owns.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/safetensors.h"

namespace dshpc {

// A half-open index range [begin, begin + count) along one dimension. count < 0 means "to the end".
struct Range {
  int64_t begin = 0;
  int64_t count = -1;
  static Range all() { return {0, -1}; }
};

// FP8 E4M3 weights carry block scales in "<name>_scale_inv", F32 [ceil(R / block_rows),
// ceil(C / block_cols)]: w[r][c] = code[r][c] × scale_inv[r / block_rows][c / block_cols].
inline constexpr char kFp8ScaleSuffix[] = "_scale_inv";
std::vector<int64_t> fp8_scale_shape(const std::vector<int64_t>& weight_shape, int64_t block_rows,
                                     int64_t block_cols);

// The scale blocks a window of rows [row_begin, +row_count) × cols [col_begin, +col_count)
// touches: block rows first_block_row … (+block_row_count), likewise for columns.
struct Fp8ScaleBlocks {
  Range rows;
  Range cols;
};
Fp8ScaleBlocks fp8_scale_blocks(Range rows, Range cols, int64_t block_rows, int64_t block_cols);

// Dequantises that window into `dst` (row_count × col_count float32). `codes` points at the
// window's first code, rows `code_row_stride` codes apart; `scales` holds the touched blocks of
// fp8_scale_blocks() row-major. Counts must be positive.
void dequantize_fp8_window(const uint8_t* codes, int64_t code_row_stride, Range rows, Range cols,
                           const float* scales, int64_t block_rows, int64_t block_cols, float* dst);

class Checkpoint {
 public:
  // Opens `dir`: reads config.json text, opens model.safetensors or every shard named by
  // model.safetensors.index.json (an index that names a missing shard, or a tensor the shard does
  // not hold, is an error naming both).
  //
  // - A missing config.json is NOT_FOUND naming the directory. config.json must be JSON; its
  //   quantization_config.weight_block_size, when present, sets the FP8 block (see read_f32).
  // - When both model.safetensors and the index exist, model.safetensors wins (as in transformers).
  // - The index is authoritative: the checkpoint holds exactly the tensors its weight_map names.
  //   A shard may hold more (they are ignored, not visible through find or read_f32), so that a
  //   tensor a shard holds but the index does not list can never shadow the listed one.
  // - Shard names must be plain file names inside `dir` (no '/'), as in every published index.
  static StatusOr<Checkpoint> open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const std::string& config_json() const { return config_json_; }

  bool contains(const std::string& name) const;
  // The tensor's description, or NOT_FOUND naming the tensor and the directory.
  StatusOr<const SafetensorsTensor*> find(const std::string& name) const;
  // Which file holds the tensor (for messages).
  std::string file_of(const std::string& name) const;
  // All tensor names, sorted.
  std::vector<std::string> tensor_names() const;

  // Reads rows × cols of a 2-D tensor (or rows of a 1-D one; cols must then be Range::all())
  // into `dst` as row-major float32, `rows.count × cols.count` elements. F32, BF16, F16 and F64
  // are converted; F8_E4M3 tensors are dequantised with the block scales in "<name>_scale_inv"
  // (F32 [ceil(R/block), ceil(C/block)], block = `fp8_block` from the config's
  // quantization_config.weight_block_size, 128 by default): w = q × scale_inv[r/block][c/block].
  // Errors (out-of-range slice, missing scale, non-float dtype) name the tensor and file.
  //
  // Only the slice's bytes (and, for FP8, only the scale blocks it touches) are read; nothing
  // the size of the whole tensor is allocated. A 1-D tensor reads as an [R, 1] column, so `cols`
  // may be all() or {0, 1}. A slice outside the shape is OUT_OF_RANGE; a dtype or rank we cannot
  // read (integers, 3-D) or a scale tensor of the wrong shape is INVALID_ARGUMENT.
  Status read_f32(const std::string& name, Range rows, Range cols, float* dst) const;

  // The shape, or NOT_FOUND.
  StatusOr<std::vector<int64_t>> shape(const std::string& name) const;

  // The tensor's bytes as stored (num_bytes() of them, in the memory map; not aligned), or
  // NOT_FOUND. For checksums and format conversion.
  StatusOr<const uint8_t*> raw_data(const std::string& name) const;

  // Overrides the FP8 block taken from config.json; both must be positive or reads fail.
  void set_fp8_block(int64_t rows, int64_t cols) {
    fp8_block_rows_ = rows;
    fp8_block_cols_ = cols;
  }
  int64_t fp8_block_rows() const { return fp8_block_rows_; }
  int64_t fp8_block_cols() const { return fp8_block_cols_; }

 private:
  struct Span {  // a resolved Range
    int64_t begin = 0;
    int64_t count = 0;
  };

  Status read_config(const std::string& config_path);
  Status open_single(const std::string& path);
  Status open_index(const std::string& index_path);
  Status read_fp8(const std::string& name, const SafetensorsFile& file,
                  const SafetensorsTensor& tensor, Span rows, Span cols, float* dst) const;

  std::string dir_;
  std::string config_json_;
  // unique_ptr so that the tensor pointers in tensors_ survive moving the Checkpoint.
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  // name -> (index into files_, the tensor inside that file's header)
  std::map<std::string, std::pair<size_t, const SafetensorsTensor*>> tensors_;
  int64_t fp8_block_rows_ = 128;
  int64_t fp8_block_cols_ = 128;
};

}  // namespace dshpc
