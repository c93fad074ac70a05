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

class Checkpoint {
 public:
  // Opens `dir`: reads config.json text, opens model.safetensors or every shard named by
  // model.safetensors.index.json (an index that names a missing shard, or a tensor the shard does
  // not hold, is an error naming both).
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
  Status read_f32(const std::string& name, Range rows, Range cols, float* dst) const;

  // The shape, or NOT_FOUND.
  StatusOr<std::vector<int64_t>> shape(const std::string& name) const;

  void set_fp8_block(int64_t rows, int64_t cols) { fp8_block_rows_ = rows; fp8_block_cols_ = cols; }

 private:
  std::string dir_;
  std::string config_json_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const SafetensorsTensor*>> tensors_;  // name -> (file, tensor)
  int64_t fp8_block_rows_ = 128;
  int64_t fp8_block_cols_ = 128;
};

}  // namespace dshpc
