#include "worker/h5_file.h"

#include <sys/stat.h>

#include <algorithm>

namespace dshpc::h5 {
namespace {

// Longest string attribute or stored text we accept: a corrupt size must not become a huge
// allocation (tokenizer.json files are a few MB).
constexpr size_t kMaxStringBytes = size_t{1} << 30;

herr_t collect_error(unsigned /*n*/, const H5E_error2_t* entry, void* data) {
  auto* messages = static_cast<std::vector<std::string>*>(data);
  std::string text = entry->desc != nullptr ? entry->desc : "";
  if (text.empty()) {
    char minor[256] = {};
    if (H5Eget_msg(entry->min_num, nullptr, minor, sizeof(minor)) > 0) text = minor;
  }
  if (!text.empty() && std::find(messages->begin(), messages->end(), text) == messages->end()) {
    messages->push_back(text);
  }
  return 0;
}

StatusOr<Id> make_scalar_space() {
  return make_id(H5Screate(H5S_SCALAR), H5Sclose, "H5Screate", StatusCode::kInternal);
}

// A fixed-length, NUL-padded C string type of `size` bytes.
StatusOr<Id> make_string_type(size_t size) {
  ASSIGN_OR_RETURN(Id type, make_id(H5Tcopy(H5T_C_S1), H5Tclose, "H5Tcopy", StatusCode::kInternal));
  if (H5Tset_size(type.get(), std::max<size_t>(size, 1)) < 0 ||
      H5Tset_strpad(type.get(), H5T_STR_NULLPAD) < 0) {
    return error(StatusCode::kInternal, "string type of " + std::to_string(size) + " bytes");
  }
  return type;
}

// Checks that `type` is a fixed-length string of at most kMaxStringBytes; returns its size.
StatusOr<size_t> fixed_string_size(hid_t type, const std::string& what) {
  if (H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) > 0) {
    return invalid_argument(what + " is " + describe_type(type) + ", not a fixed-length string");
  }
  const size_t size = H5Tget_size(type);
  if (size == 0 || size > kMaxStringBytes) {
    return data_loss(what + " has an implausible size of " + std::to_string(size) + " bytes");
  }
  return size;
}

std::string strip_padding(std::string text) {
  const size_t end = text.find('\0');
  if (end != std::string::npos) text.resize(end);
  return text;
}

}  // namespace

void quiet_errors() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

std::string take_error_text() {
  const hid_t stack = H5Eget_current_stack();  // a copy; clears the thread's stack
  if (stack < 0) return "";
  std::vector<std::string> messages;
  H5Ewalk2(stack, H5E_WALK_UPWARD, collect_error, &messages);
  H5Eclose_stack(stack);
  std::string text;
  for (size_t i = 0; i < messages.size() && i < 3; ++i) text += (i ? "; " : "") + messages[i];
  return text;
}

Status error(StatusCode code, const std::string& what) {
  const std::string detail = take_error_text();
  return Status(code, detail.empty() ? what + " failed" : what + ": " + detail);
}

StatusOr<Id> make_id(hid_t id, Id::Closer closer, const std::string& what, StatusCode code) {
  if (id < 0) return error(code, what);
  return Id(id, closer);
}

namespace {

StatusOr<Id> open_file(const std::string& path, unsigned flags) {
  quiet_errors();
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return not_found(path + ": no such file");
  if (!S_ISREG(st.st_mode)) return invalid_argument(path + " is not a regular file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 == 0) {
    return invalid_argument(path + " is not an HDF5 file (no HDF5 signature)");
  }
  ASSIGN_OR_RETURN(
      Id fapl, make_id(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, "H5Pcreate", StatusCode::kInternal));
#if H5_VERSION_GE(1, 10, 7)
  // Ranks only read; file locks fail on some parallel file systems and buy nothing here.
  if (flags == H5F_ACC_RDONLY) H5Pset_file_locking(fapl.get(), false, true);
#endif
  const hid_t file = H5Fopen(path.c_str(), flags, fapl.get());
  if (file < 0) {
    const std::string detail = take_error_text();
    if (detail.find("truncated file") != std::string::npos) {
      return data_loss(path + " is truncated (" + detail + ")");
    }
    return data_loss(path + ": HDF5 cannot open it: " + detail);
  }
  return Id(file, H5Fclose);
}

}  // namespace

StatusOr<Id> open_read_only(const std::string& path) {
  return open_file(path, H5F_ACC_RDONLY);
}

StatusOr<Id> open_read_write(const std::string& path) {
  return open_file(path, H5F_ACC_RDWR);
}

StatusOr<Id> create_file(const std::string& path) {
  quiet_errors();
  ASSIGN_OR_RETURN(
      Id fapl, make_id(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, "H5Pcreate", StatusCode::kInternal));
  if (H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110) < 0 ||
      H5Pset_alignment(fapl.get(), 64 * 1024, 4096) < 0) {
    return error(StatusCode::kInternal, "file access properties");
  }
  return make_id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose,
                 "cannot create " + path, StatusCode::kInvalidArgument);
}

bool link_exists(hid_t location, const std::string& name) {
  const htri_t exists = H5Lexists(location, name.c_str(), H5P_DEFAULT);
  if (exists < 0) take_error_text();
  return exists > 0;
}

StatusOr<Id> open_group(hid_t location, const std::string& name) {
  if (!link_exists(location, name)) return not_found("no group " + name);
  return make_id(H5Gopen2(location, name.c_str(), H5P_DEFAULT), H5Gclose, "group " + name);
}

StatusOr<Id> create_group(hid_t location, const std::string& name) {
  return make_id(H5Gcreate2(location, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                 H5Gclose, "creating group " + name, StatusCode::kInternal);
}

StatusOr<Id> open_dataset(hid_t location, const std::string& name) {
  if (!link_exists(location, name)) return not_found("no dataset " + name);
  return make_id(H5Dopen2(location, name.c_str(), H5P_DEFAULT), H5Dclose, "dataset " + name);
}

StatusOr<std::vector<std::string>> link_names(hid_t group) {
  H5G_info_t info;
  if (H5Gget_info(group, &info) < 0) return error(StatusCode::kDataLoss, "listing a group");
  std::vector<std::string> names;
  names.reserve(static_cast<size_t>(info.nlinks));
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t size =
        H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (size < 0) return error(StatusCode::kDataLoss, "link " + std::to_string(i) + " of a group");
    std::string name(static_cast<size_t>(size) + 1, '\0');
    if (H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(),
                           H5P_DEFAULT) < 0) {
      return error(StatusCode::kDataLoss, "link " + std::to_string(i) + " of a group");
    }
    name.resize(static_cast<size_t>(size));
    names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  return names;
}

bool has_attribute(hid_t object, const std::string& name) {
  const htri_t exists = H5Aexists(object, name.c_str());
  if (exists < 0) take_error_text();
  return exists > 0;
}

StatusOr<std::string> read_string_attribute(hid_t object, const std::string& name) {
  const std::string what = "attribute '" + name + "'";
  if (!has_attribute(object, name)) return not_found("no " + what);
  ASSIGN_OR_RETURN(Id attribute,
                   make_id(H5Aopen(object, name.c_str(), H5P_DEFAULT), H5Aclose, what));
  ASSIGN_OR_RETURN(Id type, make_id(H5Aget_type(attribute.get()), H5Tclose, what));
  ASSIGN_OR_RETURN(Id space, make_id(H5Aget_space(attribute.get()), H5Sclose, what));
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    return invalid_argument(what + " is not a single value");
  }
  ASSIGN_OR_RETURN(const size_t size, fixed_string_size(type.get(), what));
  std::string value(size, '\0');
  if (H5Aread(attribute.get(), type.get(), value.data()) < 0) {
    return error(StatusCode::kDataLoss, "reading " + what);
  }
  return strip_padding(std::move(value));
}

StatusOr<int64_t> read_int_attribute(hid_t object, const std::string& name) {
  const std::string what = "attribute '" + name + "'";
  if (!has_attribute(object, name)) return not_found("no " + what);
  ASSIGN_OR_RETURN(Id attribute,
                   make_id(H5Aopen(object, name.c_str(), H5P_DEFAULT), H5Aclose, what));
  ASSIGN_OR_RETURN(Id type, make_id(H5Aget_type(attribute.get()), H5Tclose, what));
  ASSIGN_OR_RETURN(Id space, make_id(H5Aget_space(attribute.get()), H5Sclose, what));
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Sget_simple_extent_npoints(space.get()) != 1) {
    return invalid_argument(what + " is not one integer");
  }
  int64_t value = 0;
  if (H5Aread(attribute.get(), H5T_NATIVE_INT64, &value) < 0) {
    return error(StatusCode::kDataLoss, "reading " + what);
  }
  return value;
}

Status write_string_attribute(hid_t object, const std::string& name, const std::string& value) {
  ASSIGN_OR_RETURN(Id type, make_string_type(value.size()));
  ASSIGN_OR_RETURN(Id space, make_scalar_space());
  ASSIGN_OR_RETURN(
      Id attribute,
      make_id(H5Acreate2(object, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose, "creating attribute " + name, StatusCode::kInternal));
  std::string padded = value;
  padded.resize(std::max<size_t>(value.size(), 1), '\0');
  if (H5Awrite(attribute.get(), type.get(), padded.data()) < 0) {
    return error(StatusCode::kInternal, "writing attribute " + name);
  }
  return ok_status();
}

Status write_int_attribute(hid_t object, const std::string& name, int64_t value) {
  ASSIGN_OR_RETURN(Id space, make_scalar_space());
  ASSIGN_OR_RETURN(Id attribute,
                   make_id(H5Acreate2(object, name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT,
                                      H5P_DEFAULT),
                           H5Aclose, "creating attribute " + name, StatusCode::kInternal));
  if (H5Awrite(attribute.get(), H5T_NATIVE_INT64, &value) < 0) {
    return error(StatusCode::kInternal, "writing attribute " + name);
  }
  return ok_status();
}

Status write_text(hid_t location, const std::string& name, const std::string& text) {
  ASSIGN_OR_RETURN(Id type, make_string_type(text.size()));
  ASSIGN_OR_RETURN(Id space, make_scalar_space());
  ASSIGN_OR_RETURN(Id dataset,
                   make_id(H5Dcreate2(location, name.c_str(), type.get(), space.get(), H5P_DEFAULT,
                                      H5P_DEFAULT, H5P_DEFAULT),
                           H5Dclose, "creating dataset " + name, StatusCode::kInternal));
  std::string padded = text;
  padded.resize(std::max<size_t>(text.size(), 1), '\0');
  if (H5Dwrite(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, padded.data()) < 0) {
    return error(StatusCode::kInternal, "writing dataset " + name);
  }
  return ok_status();
}

StatusOr<std::string> read_text(hid_t location, const std::string& name) {
  ASSIGN_OR_RETURN(Id dataset, open_dataset(location, name));
  ASSIGN_OR_RETURN(Id type, make_id(H5Dget_type(dataset.get()), H5Tclose, "dataset " + name));
  ASSIGN_OR_RETURN(Id space, make_id(H5Dget_space(dataset.get()), H5Sclose, "dataset " + name));
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    return invalid_argument("dataset " + name + " is not one string");
  }
  ASSIGN_OR_RETURN(const size_t size, fixed_string_size(type.get(), "dataset " + name));
  std::string text(size, '\0');
  if (H5Dread(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()) < 0) {
    return error(StatusCode::kDataLoss, "reading dataset " + name);
  }
  return strip_padding(std::move(text));
}

hid_t file_type_of(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return H5T_IEEE_F32LE;
    case DType::kF64:
      return H5T_IEEE_F64LE;
    case DType::kF16:
    case DType::kBF16:
      return H5T_STD_U16LE;
    case DType::kF8E4M3:
    case DType::kU8:
    case DType::kBool:
      return H5T_STD_U8LE;
    case DType::kI8:
      return H5T_STD_I8LE;
    case DType::kI32:
      return H5T_STD_I32LE;
    case DType::kI64:
      return H5T_STD_I64LE;
  }
  return H5T_STD_U8LE;
}

bool type_stores(hid_t type, DType dtype) {
  const htri_t equal = H5Tequal(type, file_type_of(dtype));
  if (equal < 0) take_error_text();
  return equal > 0;
}

std::string describe_type(hid_t type) {
  const size_t bits = H5Tget_size(type) * 8;
  const std::string order = H5Tget_order(type) == H5T_ORDER_BE ? " big-endian" : "";
  switch (H5Tget_class(type)) {
    case H5T_FLOAT:
      return std::to_string(bits) + "-bit" + order + " float";
    case H5T_INTEGER:
      return std::to_string(bits) + "-bit" + order +
             (H5Tget_sign(type) == H5T_SGN_NONE ? " unsigned" : " signed") + " integer";
    case H5T_STRING:
      return H5Tis_variable_str(type) > 0 ? "a variable-length string"
                                          : std::to_string(bits / 8) + "-byte string";
    default:
      return "HDF5 type class " + std::to_string(static_cast<int>(H5Tget_class(type)));
  }
}

}  // namespace dshpc::h5
