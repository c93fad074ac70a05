// Test helper: damages dshpc HDF5 checkpoints (and safetensors files) in precise ways, and
// writes a foreign HDF5 file, for the corruption tests in tests/cli/CMakeLists.txt.
//
//   h5_tool flip FILE TENSOR            flip a byte in the middle of the tensor's first chunk's
//                                       data (found with H5Dget_chunk_info_by_coord)
//   h5_tool delete FILE TENSOR          unlink the tensor's dataset
//   h5_tool reshape FILE TENSOR         replace it by one row more of zeros (valid @sha256)
//   h5_tool version FILE N              set the root's @format_version to N
//   h5_tool foreign FILE                write an HDF5 file that is not a dshpc checkpoint
//   h5_tool flip-safetensors FILE TENSOR  flip a byte in the middle of the tensor's data
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/sha256.h"
#include "worker/h5_format.h"
#include "worker/safetensors.h"

namespace dshpc {
namespace {

int die(const std::string& message) {
  std::fprintf(stderr, "h5_tool: %s\n", message.c_str());
  return 1;
}

int flip_byte(const std::string& path, int64_t offset) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  char byte = 0;
  file.seekg(offset);
  if (!file.read(&byte, 1))
    return die("cannot read byte " + std::to_string(offset) + " of " + path);
  byte = static_cast<char>(byte ^ 0x5a);
  file.seekp(offset);
  if (!file.write(&byte, 1)) return die("cannot write " + path);
  std::printf("flipped the byte at offset %lld of %s\n", static_cast<long long>(offset),
              path.c_str());
  return 0;
}

int flip_chunk(const std::string& path, const std::string& tensor) {
  int64_t offset = 0;
  {
    auto file = h5::CheckpointFile::open(path);
    if (!file.ok()) return die(file.status().message());
    auto info = file->tensor_info(tensor);
    if (!info.ok()) return die(info.status().message());
    auto chunk = file->chunk_location(tensor, std::vector<int64_t>(info->shape.size(), 0));
    if (!chunk.ok() || chunk->offset < 0) return die("no first chunk for " + tensor);
    // The middle of the chunk's data (Fletcher32 appends its 4 bytes at the end).
    offset = chunk->offset + (chunk->size - 4) / 2;
  }
  return flip_byte(path, offset);
}

int delete_tensor(const std::string& path, const std::string& tensor) {
  auto file = h5::open_read_write(path);
  if (!file.ok()) return die(file.status().message());
  if (H5Ldelete(file->get(), (std::string(h5::kTensorsGroup) + "/" + tensor).c_str(), H5P_DEFAULT) <
      0) {
    return die("cannot delete " + tensor + ": " + h5::take_error_text());
  }
  return 0;
}

int reshape_tensor(const std::string& path, const std::string& tensor) {
  H5TensorInfo info;
  {
    auto file = h5::CheckpointFile::open(path);
    if (!file.ok()) return die(file.status().message());
    auto found = file->tensor_info(tensor);
    if (!found.ok()) return die(found.status().message());
    info = *found;
  }
  if (delete_tensor(path, tensor) != 0) return 1;
  auto file = h5::open_read_write(path);
  if (!file.ok()) return die(file.status().message());
  std::vector<hsize_t> dims(info.shape.begin(), info.shape.end());
  dims[0] += 1;
  size_t count = dtype_size(info.dtype);
  for (hsize_t d : dims) count *= d;
  const std::vector<uint8_t> zeros(count, 0);
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  std::vector<hsize_t> chunk(info.chunk.begin(), info.chunk.end());
  H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
  H5Pset_fletcher32(dcpl);
  const hid_t type = h5::file_type_of(info.dtype);
  const hid_t dataset =
      H5Dcreate2(file->get(), (std::string(h5::kTensorsGroup) + "/" + tensor).c_str(), type, space,
                 H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (dataset < 0 || H5Dwrite(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data()) < 0) {
    return die("cannot write " + tensor + ": " + h5::take_error_text());
  }
  Status attributes = h5::write_string_attribute(dataset, h5::kDtypeAttr, dtype_name(info.dtype));
  if (attributes.ok()) {
    attributes = h5::write_string_attribute(dataset, h5::kSha256Attr,
                                            Sha256::to_hex(Sha256::of(zeros.data(), zeros.size())));
  }
  H5Dclose(dataset);
  H5Pclose(dcpl);
  H5Sclose(space);
  return attributes.ok() ? 0 : die(attributes.message());
}

int set_version(const std::string& path, int64_t version) {
  auto file = h5::open_read_write(path);
  if (!file.ok()) return die(file.status().message());
  H5Adelete(file->get(), h5::kVersionAttr);
  const Status status = h5::write_int_attribute(file->get(), h5::kVersionAttr, version);
  return status.ok() ? 0 : die(status.message());
}

int write_foreign(const std::string& path) {
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) return die("cannot create " + path);
  const hsize_t dims[1] = {10};
  const hid_t space = H5Screate_simple(1, dims, nullptr);
  const hid_t dataset =
      H5Dcreate2(file, "data", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  const float values[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  H5Dwrite(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
  H5Dclose(dataset);
  H5Sclose(space);
  return H5Fclose(file) < 0 ? die("cannot close " + path) : 0;
}

int flip_safetensors(const std::string& path, const std::string& tensor) {
  int64_t offset = 0;
  {
    auto file = SafetensorsFile::open(path);
    if (!file.ok()) return die(file.status().message());
    const SafetensorsTensor* t = file->find(tensor);
    if (t == nullptr) return die("no tensor " + tensor + " in " + path);
    // The data region starts after the 8-byte length and the header.
    offset = static_cast<int64_t>(t->data_begin + t->num_bytes() / 2);
    std::ifstream in(path, std::ios::binary);
    uint64_t header = 0;
    in.read(reinterpret_cast<char*>(&header), 8);
    offset += 8 + static_cast<int64_t>(header);
  }
  return flip_byte(path, offset);
}

}  // namespace
}  // namespace dshpc

int main(int argc, char** argv) {
  using namespace dshpc;
  h5::quiet_errors();
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "flip" && argc == 4) return flip_chunk(argv[2], argv[3]);
  if (mode == "delete" && argc == 4) return delete_tensor(argv[2], argv[3]);
  if (mode == "reshape" && argc == 4) return reshape_tensor(argv[2], argv[3]);
  if (mode == "version" && argc == 4) return set_version(argv[2], std::stoll(argv[3]));
  if (mode == "foreign" && argc == 3) return write_foreign(argv[2]);
  if (mode == "flip-safetensors" && argc == 4) return flip_safetensors(argv[2], argv[3]);
  std::fprintf(stderr,
               "usage: h5_tool flip|delete|reshape FILE TENSOR | version FILE N | foreign FILE | "
               "flip-safetensors FILE TENSOR\n");
  return 2;
}
