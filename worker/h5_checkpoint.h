// dshpc's HDF5 checkpoint (format version 1; docs/checkpoints.md): one file converted once from a
// Hugging Face checkpoint by `dshpc convert`, self-describing and checksummed:
//
//   /                      @format = "dshpc-checkpoint", @format_version = 1, @created_by,
//                          @source (the converted directory), @dtype_policy (keep | bf16 | f32)
//   /files/<name>          config.json, tokenizer.json, tokenizer_config.json,
//                          generation_config.json (when present) and tensors.sha256 (the
//                          manifest: "<sha256>  <tensor name>" per line), each one fixed-length
//                          string with @sha256
//   /tensors/<name>        one dataset per checkpoint tensor, named as in Hugging Face; chunked
//                          along its tensor-parallel split (worker/chunk_layout.h) with the
//                          Fletcher32 filter on every chunk; @dtype (the element type, safetensors
//                          spelling: BF16 is stored as 16-bit unsigned integers, F8_E4M3 as
//                          8-bit ones), @sha256 (of the tensor's bytes, row-major little-endian,
//                          as stored), @source_dtype, @split, @split_units
//
// Each rank reads only its hyperslabs (H5Sselect_hyperslab) of its stage's tensors; HDF5 checks
// the Fletcher32 checksum of every chunk it reads, so a damaged chunk fails the load with a
// message naming the tensor. This header does not include hdf5.h; without HDF5 at build time
// (DSHPC_HAVE_HDF5 off) every entry point returns UNIMPLEMENTED.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"
#include "worker/weight_source.h"

namespace dshpc {

inline constexpr char kH5FormatName[] = "dshpc-checkpoint";
inline constexpr int64_t kH5FormatVersion = 1;
// The per-tensor SHA-256 manifest: stored in /files of an HDF5 checkpoint, and optionally beside
// the safetensors files of a Hugging Face directory (worker/tensor_manifest.h).
inline constexpr char kTensorManifestName[] = "tensors.sha256";

// Whether this build reads and writes HDF5.
bool hdf5_available();
// True when `path` is a regular file that starts with the HDF5 signature (checked without the
// library, so that callers can route paths in any build).
bool is_hdf5_file(const std::string& path);

struct H5TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<int64_t> chunk;  // empty: stored contiguous (a tensor without elements)
  bool fletcher32 = false;
  std::string sha256;  // empty when the attribute is absent
};

// An open, format-checked HDF5 checkpoint; also the WeightSource the loader reads from.
class H5Checkpoint : public WeightSource {
 public:
  // Opens `path` read-only and checks it: an HDF5 file (a missing, truncated or non-HDF5 file is
  // an error saying which), with @format = "dshpc-checkpoint" (else: a foreign HDF5 file), a
  // @format_version this build reads, a /tensors group, and a /files/config.json that matches its
  // SHA-256.
  static StatusOr<std::unique_ptr<H5Checkpoint>> open(const std::string& path);

  virtual const std::string& path() const = 0;
  virtual const std::string& config_json() const = 0;
  virtual int64_t format_version() const = 0;
  // A stored file's text, checked against its @sha256; NOT_FOUND when absent.
  virtual StatusOr<std::string> read_file(const std::string& name) const = 0;
  virtual std::vector<std::string> tensor_names() const = 0;
  virtual StatusOr<H5TensorInfo> tensor(const std::string& name) const = 0;
  // The FP8 block of the *_scale_inv tensors (from the config; 128 × 128 by default).
  virtual void set_fp8_block(int64_t rows, int64_t cols) = 0;
};

}  // namespace dshpc
