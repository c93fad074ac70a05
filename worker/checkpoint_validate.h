// `dshpc validate`: checks a checkpoint before a long job trusts it, and lists every problem.
//
// HDF5 file: an HDF5 file (not truncated) in dshpc's format and version; every stored file
// matches its SHA-256; every tensor the config needs is present with the right shape and a dtype
// the loader reads (F8_E4M3 with block scales of the right shape); every dataset is chunked with
// the Fletcher32 filter; every chunk of every tensor is read (so HDF5 verifies each Fletcher32
// checksum; a bad chunk is named with its position and file offset) and the SHA-256 of each
// tensor's bytes is recomputed and compared with its @sha256 and the stored manifest.
//
// Hugging Face directory: the safetensors headers and index are consistent (the parser's full
// checks), the config's tensors are present with the right shape and dtype, and when the
// directory holds a tensors.sha256 manifest (worker/tensor_manifest.h) the SHA-256 of every
// tensor's bytes equals its entry, and every tensor has one.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "worker/model_config.h"

namespace dshpc {

struct ValidationProgress {
  int64_t bytes_done = 0;
  int64_t bytes_total = 0;
  int64_t tensors_done = 0;
  int64_t tensors_total = 0;
};

struct ValidateOptions {
  // Hugging Face directory: also write DIR/tensors.sha256 of the tensors' current bytes (not when
  // a manifest exists that they do not match: that is reported instead).
  bool write_manifest = false;
  std::function<void(const ValidationProgress&)> progress;  // after each tensor or slab
};

struct ValidationReport {
  std::string path;
  std::string format;                 // "hdf5" or "safetensors"
  std::vector<std::string> problems;  // each names the tensor or file and what is wrong
  std::vector<std::string> notes;     // what was not checked, and why
  int64_t tensors = 0;                // tensors in the checkpoint
  int64_t tensors_hashed = 0;         // tensors whose SHA-256 was recomputed and compared
  int64_t bytes_hashed = 0;
  double seconds = 0.0;
  bool ok() const { return problems.empty(); }
};

// Validates an HDF5 checkpoint file or a Hugging Face directory; never stops at the first problem
// it can get past.
ValidationReport validate_checkpoint(const std::string& path, const ValidateOptions& options);

// --- shared by both formats -------------------------------------------------------------------

struct StoredTensor {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};
using TensorLookup = std::function<std::optional<StoredTensor>(const std::string& name)>;

// Every tensor the config needs (weight_table) present, with its shape and a dtype the loader
// reads; F8_E4M3 weights with block scales of the right shape. Appends one problem per bad tensor.
void check_expected_tensors(const ModelConfig& config, const TensorLookup& lookup,
                            std::vector<std::string>& problems);

// The HDF5 half (worker/h5_validate.cpp).
ValidationReport validate_h5(const std::string& path, const ValidateOptions& options);

}  // namespace dshpc
