// `dshpc convert`: a Hugging Face checkpoint directory to one dshpc HDF5 checkpoint
// (worker/h5_checkpoint.h describes the format).
//
// dtype policies:
//   keep  every tensor as stored (FP8 E4M3 weights and their *_scale_inv block scales included);
//         the digests then equal those of the source's tensors.sha256 manifest
//   bf16  matrices in BF16 (FP8 weights dequantised with their scales, which are then dropped,
//         and quantization_config removed from the stored config.json); vectors (norms, router
//         bias) keep their dtype: they are small and the router bias decides expert choice by
//         small differences
//   f32   likewise in F32
//
// The file is written to PATH.tmp-<pid> and renamed to PATH only when complete, so a failed or
// interrupted conversion never leaves a file that looks converted. When the source directory
// has a tensors.sha256 manifest, every source tensor is checked against it on the way.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/status.h"

namespace dshpc {

enum class ConvertDtype { kKeep, kBF16, kF32 };
// "keep", "bf16" or "f32".
StatusOr<ConvertDtype> parse_convert_dtype(const std::string& text);
const char* convert_dtype_name(ConvertDtype dtype);

struct ConvertProgress {
  int64_t bytes_done = 0;  // tensor bytes written
  int64_t bytes_total = 0;
  int64_t tensors_done = 0;
  int64_t tensors_total = 0;
  const std::string* tensor = nullptr;  // the tensor being written
};

struct ConvertOptions {
  std::string from;  // Hugging Face checkpoint directory
  std::string to;    // the HDF5 file to write (replaced if it exists)
  ConvertDtype dtype = ConvertDtype::kKeep;
  std::string created_by;                                // @created_by, e.g. "dshpc 0.1.0"
  std::function<void(const ConvertProgress&)> progress;  // after every slab written
};

struct ConvertResult {
  int64_t tensors = 0;
  int64_t tensor_bytes = 0;    // tensor data written
  int64_t file_bytes = 0;      // size of the HDF5 file
  int64_t dropped_scales = 0;  // *_scale_inv tensors folded into dequantised weights
  bool source_manifest_checked = false;
  double seconds = 0.0;
};

StatusOr<ConvertResult> convert_to_h5(const ConvertOptions& options);

}  // namespace dshpc
