#include "worker/h5_format.h"

#include <fcntl.h>

#include "common/sha256.h"

namespace dshpc::h5 {

std::string tensor_label(const std::string& name) {
  return "tensor \"" + name + "\"";
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

StatusOr<CheckpointFile> CheckpointFile::open(const std::string& path) {
  CheckpointFile file;
  file.path_ = path;
  ASSIGN_OR_RETURN(file.file_, open_read_only(path));
  if (link_exists(file.file_.get(), kTensorsGroup)) {
    auto group = open_group(file.file_.get(), kTensorsGroup);
    if (!group.ok()) return group.status().with_context(path);
    file.tensors_ = std::move(*group);
  }
  return file;
}

void CheckpointFile::advise_random_access() const {
  Id fapl(H5Fget_access_plist(file()), H5Pclose);
  if (!fapl.valid() || H5Pget_driver(fapl.get()) != H5FD_SEC2) {
    take_error_text();
    return;  // another driver: its I/O is its own
  }
  void* handle = nullptr;
  if (H5Fget_vfd_handle(file(), fapl.get(), &handle) < 0 || handle == nullptr) {
    take_error_text();
    return;
  }
  posix_fadvise(*static_cast<int*>(handle), 0, 0, POSIX_FADV_RANDOM);
}

StatusOr<int64_t> CheckpointFile::check_format() const {
  const std::string foreign = path_ + " is an HDF5 file but not a dshpc checkpoint: ";
  if (!has_attribute(file(), kFormatAttr)) {
    return invalid_argument(foreign + "its root group has no '" + kFormatAttr +
                            "' attribute (expected \"" + kH5FormatName +
                            "\"; convert Hugging Face checkpoints with `dshpc convert`)");
  }
  auto format = read_string_attribute(file(), kFormatAttr);
  if (!format.ok()) return invalid_argument(foreign + format.status().message());
  if (*format != kH5FormatName) {
    return invalid_argument(foreign + "its '" + kFormatAttr + "' attribute is \"" + *format +
                            "\", not \"" + kH5FormatName + "\"");
  }
  auto version = read_int_attribute(file(), kVersionAttr);
  if (!version.ok()) {
    return invalid_argument(path_ + ": root group: " + version.status().message() +
                            " (the format version)");
  }
  if (*version > kH5FormatVersion) {
    return unimplemented(path_ + " has format version " + std::to_string(*version) +
                         ", newer than this dshpc reads (" + std::to_string(kH5FormatVersion) +
                         ")");
  }
  if (*version < 1) {
    return invalid_argument(path_ + ": format version " + std::to_string(*version) +
                            " is not valid");
  }
  if (!tensors_.valid()) return invalid_argument(path_ + " has no /" + kTensorsGroup + " group");
  return *version;
}

bool CheckpointFile::has_stored_file(const std::string& name) const {
  return link_exists(file(), kFilesGroup) &&
         link_exists(file(), std::string(kFilesGroup) + "/" + name);
}

StatusOr<std::string> CheckpointFile::read_stored_file(const std::string& name) const {
  const std::string where = path_ + ": stored file " + name;
  if (!has_stored_file(name)) return not_found(path_ + " holds no " + name);
  const std::string dataset_path = std::string(kFilesGroup) + "/" + name;
  auto text = read_text(file(), dataset_path);
  if (!text.ok()) return text.status().with_context(where);
  auto dataset = open_dataset(file(), dataset_path);
  if (!dataset.ok()) return dataset.status().with_context(where);
  auto stored = read_string_attribute(dataset->get(), kSha256Attr);
  if (!stored.ok()) return data_loss(where + ": " + stored.status().message());
  const std::string computed = Sha256::hex_of(*text);
  if (computed != *stored) {
    return data_loss(where + " does not match its SHA-256 (stored " + *stored + ", computed " +
                     computed + ")");
  }
  return text;
}

StatusOr<std::vector<std::string>> CheckpointFile::tensor_names() const {
  if (!tensors_.valid()) return invalid_argument(path_ + " has no /" + kTensorsGroup + " group");
  auto names = link_names(tensors_.get());
  if (!names.ok()) return names.status().with_context(path_ + ": /" + kTensorsGroup);
  return names;
}

StatusOr<H5TensorInfo> CheckpointFile::tensor_info(const std::string& name) const {
  const std::string where = path_ + ": " + tensor_label(name);
  if (!tensors_.valid()) return invalid_argument(path_ + " has no /" + kTensorsGroup + " group");
  if (name.empty() || name.find('/') != std::string::npos || !link_exists(tensors_.get(), name)) {
    return not_found(tensor_label(name) + " is not in " + path_);
  }
  auto dataset_or = make_id(H5Oopen(tensors_.get(), name.c_str(), H5P_DEFAULT), H5Oclose, where);
  if (!dataset_or.ok()) return dataset_or.status();
  Id dataset = std::move(*dataset_or);
  if (H5Iget_type(dataset.get()) != H5I_DATASET) {
    return invalid_argument(where + " is not a dataset");
  }
  H5TensorInfo info;
  info.name = name;
  auto dtype_text = read_string_attribute(dataset.get(), kDtypeAttr);
  if (!dtype_text.ok()) return invalid_argument(where + ": " + dtype_text.status().message());
  const std::optional<DType> dtype = parse_dtype(*dtype_text);
  if (!dtype) return invalid_argument(where + ": unknown dtype \"" + *dtype_text + "\"");
  info.dtype = *dtype;

  ASSIGN_OR_RETURN(Id type, make_id(H5Dget_type(dataset.get()), H5Tclose, where));
  if (!type_stores(type.get(), info.dtype)) {
    return invalid_argument(where + " is stored as " + describe_type(type.get()) +
                            ", but its dtype attribute says " + *dtype_text + " (stored as " +
                            describe_type(file_type_of(info.dtype)) + ")");
  }
  ASSIGN_OR_RETURN(Id space, make_id(H5Dget_space(dataset.get()), H5Sclose, where));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0 || rank > 8) return data_loss(where + ": unreadable or implausible dataspace");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  for (hsize_t d : dims) info.shape.push_back(static_cast<int64_t>(d));
  const bool scalar = has_attribute(dataset.get(), kScalarAttr);

  ASSIGN_OR_RETURN(Id dcpl, make_id(H5Dget_create_plist(dataset.get()), H5Pclose, where));
  if (H5Pget_layout(dcpl.get()) == H5D_CHUNKED) {
    std::vector<hsize_t> chunk(static_cast<size_t>(rank));
    if (H5Pget_chunk(dcpl.get(), rank, chunk.data()) != rank) {
      return error(StatusCode::kDataLoss, where + ": chunk shape");
    }
    for (hsize_t c : chunk) info.chunk.push_back(static_cast<int64_t>(c));
    unsigned flags = 0, config = 0;
    size_t num_values = 0;
    info.fletcher32 = H5Pget_filter_by_id2(dcpl.get(), H5Z_FILTER_FLETCHER32, &flags, &num_values,
                                           nullptr, 0, nullptr, &config) >= 0;
    if (!info.fletcher32) take_error_text();  // "filter not found" is an answer, not an error
  }
  if (scalar) {
    if (info.shape != std::vector<int64_t>{1}) {
      return invalid_argument(where + ": marked scalar but has shape " + shape_text(info.shape));
    }
    info.shape.clear();
  }
  if (has_attribute(dataset.get(), kSha256Attr)) {
    auto sha = read_string_attribute(dataset.get(), kSha256Attr);
    if (!sha.ok()) return invalid_argument(where + ": " + sha.status().message());
    info.sha256 = *sha;
  }
  return info;
}

Status CheckpointFile::read_box(const H5TensorInfo& tensor, const std::vector<int64_t>& start,
                                const std::vector<int64_t>& count, hid_t memory_type,
                                void* dst) const {
  std::string box;
  for (size_t d = 0; d < start.size(); ++d) {
    box += (d ? " × " : "") + std::to_string(start[d]) + ":" + std::to_string(start[d] + count[d]);
  }
  const std::string where = path_ + ": " + tensor_label(tensor.name) + ": reading [" + box + "]";
  ASSIGN_OR_RETURN(Id dapl,
                   make_id(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose, where, StatusCode::kInternal));
  // Every chunk is read once per load: a chunk cache would only hold memory (per open dataset).
  H5Pset_chunk_cache(dapl.get(), 0, 0, 1.0);
  ASSIGN_OR_RETURN(Id dataset, make_id(H5Dopen2(tensors_.get(), tensor.name.c_str(), dapl.get()),
                                       H5Dclose, where));
  ASSIGN_OR_RETURN(Id file_space, make_id(H5Dget_space(dataset.get()), H5Sclose, where));
  const size_t rank = start.size();
  std::vector<hsize_t> h_start(rank), h_count(rank);
  for (size_t d = 0; d < rank; ++d) {
    h_start[d] = static_cast<hsize_t>(start[d]);
    h_count[d] = static_cast<hsize_t>(count[d]);
  }
  if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, h_start.data(), nullptr, h_count.data(),
                          nullptr) < 0) {
    return error(StatusCode::kOutOfRange, where);
  }
  ASSIGN_OR_RETURN(Id memory_space,
                   make_id(H5Screate_simple(static_cast<int>(rank), h_count.data(), nullptr),
                           H5Sclose, where, StatusCode::kInternal));
  if (H5Dread(dataset.get(), memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT, dst) <
      0) {
    const std::string detail = take_error_text();
    const bool checksum = detail.find("Fletcher32") != std::string::npos ||
                          detail.find("checksum") != std::string::npos;
    return data_loss(where + " failed" +
                     (checksum ? " (a chunk fails its Fletcher32 checksum: the data is damaged)"
                               : std::string()) +
                     ": " + detail);
  }
  return ok_status();
}

StatusOr<CheckpointFile::ChunkLocation> CheckpointFile::chunk_location(
    const std::string& name, const std::vector<int64_t>& chunk_start) const {
  const std::string where = path_ + ": " + tensor_label(name) + ": chunk location";
  ASSIGN_OR_RETURN(Id dataset,
                   make_id(H5Dopen2(tensors_.get(), name.c_str(), H5P_DEFAULT), H5Dclose, where));
  std::vector<hsize_t> offset(chunk_start.begin(), chunk_start.end());
  unsigned filter_mask = 0;
  haddr_t address = HADDR_UNDEF;
  hsize_t size = 0;
  if (H5Dget_chunk_info_by_coord(dataset.get(), offset.data(), &filter_mask, &address, &size) < 0) {
    return error(StatusCode::kDataLoss, where);
  }
  ChunkLocation location;
  if (address != HADDR_UNDEF) location.offset = static_cast<int64_t>(address);
  location.size = static_cast<int64_t>(size);
  return location;
}

}  // namespace dshpc::h5
