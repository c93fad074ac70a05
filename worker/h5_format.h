// The HDF5 checkpoint format's pieces shared by the reader (h5_checkpoint.cpp), the validator
// (h5_validate.cpp) and the converter (h5_convert.cpp). Private to worker/ (includes hdf5.h).
#pragma once

#include <string>
#include <vector>

#include "worker/h5_checkpoint.h"
#include "worker/h5_file.h"

namespace dshpc::h5 {

// Attribute and group names of format version 1.
inline constexpr char kFormatAttr[] = "format";
inline constexpr char kVersionAttr[] = "format_version";
inline constexpr char kCreatedByAttr[] = "created_by";
inline constexpr char kSourceAttr[] = "source";
inline constexpr char kDtypePolicyAttr[] = "dtype_policy";
inline constexpr char kDtypeAttr[] = "dtype";
inline constexpr char kSha256Attr[] = "sha256";
inline constexpr char kSourceDtypeAttr[] = "source_dtype";
inline constexpr char kSplitAttr[] = "split";
inline constexpr char kSplitUnitsAttr[] = "split_units";
inline constexpr char kScalarAttr[] = "scalar";  // 1 on a 0-d tensor stored as shape [1]
inline constexpr char kTensorsGroup[] = "tensors";
inline constexpr char kFilesGroup[] = "files";

// An open HDF5 file read as a dshpc checkpoint, without the strictness of H5Checkpoint::open:
// the validator walks a damaged file with it and reports every problem it finds.
class CheckpointFile {
 public:
  static StatusOr<CheckpointFile> open(const std::string& path);

  const std::string& path() const { return path_; }
  hid_t file() const { return file_.get(); }

  // Turns the kernel's readahead off for this file (POSIX_FADV_RANDOM on the sec2 driver's
  // descriptor). A rank reads whole chunks of megabytes, so readahead adds nothing to its reads
  // and only pulls in the neighbouring chunks, which belong to other ranks.
  void advise_random_access() const;
  // @format and @format_version: a foreign HDF5 file or a newer version is an error.
  StatusOr<int64_t> check_format() const;
  bool has_stored_file(const std::string& name) const;
  // The text of /files/<name>; DATA_LOSS naming the file when it does not match its @sha256.
  StatusOr<std::string> read_stored_file(const std::string& name) const;
  // Names under /tensors, sorted.
  StatusOr<std::vector<std::string>> tensor_names() const;
  // A tensor's description: its @dtype must name a dtype that its HDF5 type stores.
  StatusOr<H5TensorInfo> tensor_info(const std::string& name) const;
  // Reads the box [start, start + count) of a tensor into `dst` in memory type `memory_type`
  // (the stored type gives the bytes as stored). Errors name the tensor and the box.
  Status read_box(const H5TensorInfo& tensor, const std::vector<int64_t>& start,
                  const std::vector<int64_t>& count, hid_t memory_type, void* dst) const;
  // The file offset and stored size of the chunk whose first element is at `chunk_start`
  // (H5Dget_chunk_offset-style lookup through H5Dget_chunk_info_by_coord); for messages and the
  // corruption tests.
  struct ChunkLocation {
    int64_t offset = -1;
    int64_t size = 0;
  };
  StatusOr<ChunkLocation> chunk_location(const std::string& name,
                                         const std::vector<int64_t>& chunk_start) const;

 private:
  std::string path_;
  Id file_;
  Id tensors_;  // the /tensors group, when present
};

// "tensor \"name\"" for messages.
std::string tensor_label(const std::string& name);
// "[a, b]"
std::string shape_text(const std::vector<int64_t>& shape);

}  // namespace dshpc::h5
