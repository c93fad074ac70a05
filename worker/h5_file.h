// Thin RAII and error handling over the HDF5 C API, private to worker/h5_*.cpp (nothing outside
// worker/ includes hdf5.h). Every HDF5 identifier is owned by one H5Id, closed exactly once;
// every failed call becomes a Status whose message carries HDF5's own error stack text, with the
// library's automatic printing to stderr switched off.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"

namespace dshpc::h5 {

// Switches HDF5's automatic error printing off for the calling thread (the setting is per thread
// in thread-safe builds). Every public entry point calls it first.
void quiet_errors();

// The current thread's HDF5 error stack as one line, most specific message first, and clears it.
// Empty when the stack is empty.
std::string take_error_text();

// A Status for a failed HDF5 call: "`what`: <HDF5's messages>".
Status error(StatusCode code, const std::string& what);

// An HDF5 identifier and the function that closes it (H5Fclose, H5Dclose, …). Move-only.
class Id {
 public:
  using Closer = herr_t (*)(hid_t);
  Id() = default;
  Id(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~Id() { reset(); }
  Id(Id&& other) noexcept : id_(other.id_), closer_(other.closer_) { other.id_ = -1; }
  Id& operator=(Id&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = other.id_;
      closer_ = other.closer_;
      other.id_ = -1;
    }
    return *this;
  }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Gives up ownership (the caller closes it, e.g. to check H5Fclose's result).
  hid_t release() {
    const hid_t id = id_;
    id_ = -1;
    return id;
  }
  void reset() {
    if (id_ >= 0 && closer_ != nullptr) closer_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  Closer closer_ = nullptr;
};

// Wraps the result of an H5*create/open call: an error naming `what` when it is negative.
StatusOr<Id> make_id(hid_t id, Id::Closer closer, const std::string& what,
                     StatusCode code = StatusCode::kDataLoss);

// Files. open_read_only's errors say whether the file is missing, not HDF5, or truncated.
StatusOr<Id> open_read_only(const std::string& path);
StatusOr<Id> open_read_write(const std::string& path);  // test helpers only
// A new file (truncating any other) written with the file format of HDF5 1.10 as both bounds, so
// that every metadata structure carries a checksum (superblock v3, object headers v2, fixed-array
// chunk indexes) and chunks of 64 KiB or more start on 4 KiB boundaries.
StatusOr<Id> create_file(const std::string& path);

bool link_exists(hid_t location, const std::string& name);
StatusOr<Id> open_group(hid_t location, const std::string& name);
StatusOr<Id> create_group(hid_t location, const std::string& name);
StatusOr<Id> open_dataset(hid_t location, const std::string& name);
// The names of the links in a group, sorted (H5Lget_name_by_idx, portable across 1.10 – 1.14).
StatusOr<std::vector<std::string>> link_names(hid_t group);

// Attributes. Strings are fixed-length (variable-length strings live in the global heap, which
// has no checksum). Reading a string that is not one, or an integer that is not one, is an error
// naming the attribute.
bool has_attribute(hid_t object, const std::string& name);
StatusOr<std::string> read_string_attribute(hid_t object, const std::string& name);
StatusOr<int64_t> read_int_attribute(hid_t object, const std::string& name);
Status write_string_attribute(hid_t object, const std::string& name, const std::string& value);
Status write_int_attribute(hid_t object, const std::string& name, int64_t value);

// A text file stored as a scalar dataset of one fixed-length string (NULLPAD), so that h5dump
// shows it as text. Empty text is stored as a one-byte NUL-padded string.
Status write_text(hid_t location, const std::string& name, const std::string& text);
StatusOr<std::string> read_text(hid_t location, const std::string& name);

// The HDF5 file type that stores a dtype (little-endian; BF16/F16 as 16-bit unsigned integers and
// F8_E4M3/BOOL as 8-bit ones, named by the tensor's "dtype" attribute).
hid_t file_type_of(DType dtype);
// Whether a dataset's HDF5 type stores `dtype` that way.
bool type_stores(hid_t type, DType dtype);
// A description of an HDF5 type for messages ("32-bit float", "16-bit unsigned integer").
std::string describe_type(hid_t type);

}  // namespace dshpc::h5
