// safetensors: an 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// then the data region; offsets are relative to the start of the data region.
//
// The header is validated completely before anything else is allocated or read: header size
// limits, JSON shape, known dtypes, non-negative shapes whose element count × dtype size equals
// end − begin without overflow, offsets inside the file, and no two tensors overlapping.
// Every error names the file and, where there is one, the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"
#include "common/mapped_file.h"
#include "common/status.h"

namespace dshpc {

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;  // offsets relative to the data region
  uint64_t data_end = 0;

  // Product of the dims; 1 for a scalar; -1 if it overflows int64 (never for a parsed header).
  int64_t num_elements() const;
  uint64_t num_bytes() const { return data_end - data_begin; }
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;               // N, the JSON length
  std::vector<SafetensorsTensor> tensors;  // sorted by data_begin
  std::map<std::string, std::string> metadata;
};

// Largest header we accept (the format's own limit is 100 MB).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// Checks that `text` is exactly one JSON document (UTF-8, nothing but whitespace after it) in
// which no object repeats a key. Boost.JSON, like most DOM parsers, silently keeps the last of
// duplicate keys; a header or index that names a tensor twice is ambiguous, so we reject it.
// The error (INVALID_ARGUMENT) is prefixed with `file_name` and names the repeated key.
Status check_json_document(std::string_view text, const std::string& file_name);

// Parses and validates the header of a safetensors file held in `bytes` (the whole file, so
// that offsets can be checked against its size). `file_name` only labels error messages.
// Truncation (file shorter than the header or the offsets say) is DATA_LOSS; every other
// violation is INVALID_ARGUMENT. Accepted on purpose: gaps between tensors and bytes after the
// last one (the reference Rust reader is stricter), unknown keys inside an entry, and trailing
// spaces in the header (the reference writer pads with them).
StatusOr<SafetensorsHeader> parse_safetensors_header(const uint8_t* bytes, size_t size,
                                                     const std::string& file_name);

// A memory-mapped, validated safetensors file.
class SafetensorsFile {
 public:
  static StatusOr<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<SafetensorsTensor>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // nullptr when absent.
  const SafetensorsTensor* find(const std::string& name) const;
  // Start of the tensor's bytes inside the map. Not necessarily aligned to the dtype: the header
  // length is arbitrary, so readers must not dereference it as a wider type.
  const uint8_t* data(const SafetensorsTensor& tensor) const;

 private:
  MappedFile file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;  // name -> position in header_.tensors
};

}  // namespace dshpc
