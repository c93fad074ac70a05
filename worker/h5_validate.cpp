// validate_h5: walks a dshpc HDF5 checkpoint and reports every problem (checkpoint_validate.h).
#include <algorithm>
#include <map>

#include "common/sha256.h"
#include "worker/checkpoint_validate.h"
#include "worker/h5_format.h"
#include "worker/tensor_manifest.h"

namespace dshpc {
namespace {

constexpr int64_t kSlabBytes = int64_t{64} << 20;
constexpr int kMaxChunksNamed = 5;  // per tensor; the rest are counted

int64_t num_elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The dataspace shape of a tensor (a 0-d tensor is stored as [1]).
std::vector<int64_t> stored_shape(const H5TensorInfo& info) {
  return info.shape.empty() ? std::vector<int64_t>{1} : info.shape;
}

class H5Validator {
 public:
  H5Validator(const h5::CheckpointFile& file, const ValidateOptions& options,
              ValidationReport& report)
      : file_(file), options_(options), report_(report) {}

  void run() {
    auto version = file_.check_format();
    if (!version.ok()) {
      // A foreign file or a newer format: nothing else in it can be interpreted.
      report_.problems.push_back(version.status().message());
      return;
    }
    check_stored_files();
    auto names = file_.tensor_names();
    if (!names.ok()) {
      report_.problems.push_back(names.status().message());
      return;
    }
    report_.tensors = static_cast<int64_t>(names->size());
    for (const std::string& name : *names) {
      auto info = file_.tensor_info(name);
      if (!info.ok()) {
        report_.problems.push_back(info.status().message());
        continue;
      }
      infos_.emplace(name, *info);
    }
    if (config_) {
      check_expected_tensors(
          *config_,
          [&](const std::string& name) -> std::optional<StoredTensor> {
            const auto it = infos_.find(name);
            if (it == infos_.end()) return std::nullopt;
            return StoredTensor{it->second.dtype, it->second.shape};
          },
          report_.problems);
    }
    hash_tensors(*names);
  }

 private:
  std::string where(const std::string& name) const { return h5::tensor_label(name); }

  void check_stored_files() {
    const std::string files_group = std::string("/") + h5::kFilesGroup;
    auto group = h5::open_group(file_.file(), h5::kFilesGroup);
    if (!group.ok()) {
      report_.problems.push_back(file_.path() + " has no " + files_group +
                                 " group (config.json, manifest)");
      return;
    }
    auto names = h5::link_names(group->get());
    if (!names.ok()) {
      report_.problems.push_back(files_group + ": " + names.status().message());
      return;
    }
    for (const std::string& name : *names) {
      auto text = file_.read_stored_file(name);
      if (!text.ok()) {
        report_.problems.push_back(text.status().message());
        continue;
      }
      if (name == "config.json") {
        auto config = parse_model_config(*text, file_.path() + ":" + files_group + "/config.json");
        if (config.ok()) {
          config_ = std::move(*config);
        } else {
          report_.problems.push_back(config.status().message());
        }
      } else if (name == kTensorManifestName) {
        auto manifest = parse_tensor_manifest(*text, file_.path() + ":" + files_group + "/" + name);
        if (manifest.ok()) {
          manifest_ = std::move(*manifest);
        } else {
          report_.problems.push_back(manifest.status().message());
        }
      }
    }
    if (std::find(names->begin(), names->end(), "config.json") == names->end()) {
      report_.problems.push_back(file_.path() + " holds no " + files_group + "/config.json");
    }
    if (std::find(names->begin(), names->end(), kTensorManifestName) == names->end()) {
      report_.problems.push_back(file_.path() + " holds no " + files_group + "/" +
                                 kTensorManifestName + " (every dshpc convert writes one)");
    }
  }

  // Reads every chunk of every tensor (HDF5 verifies each Fletcher32 checksum) in slabs of whole
  // chunk rows, hashing the bytes in row-major order.
  void hash_tensors(const std::vector<std::string>& names) {
    ValidationProgress progress;
    progress.tensors_total = static_cast<int64_t>(infos_.size());
    for (const auto& [name, info] : infos_) {
      progress.bytes_total +=
          num_elements(info.shape) * static_cast<int64_t>(dtype_size(info.dtype));
    }
    for (const auto& [name, info] : infos_) {
      hash_tensor(info, progress);
      progress.tensors_done += 1;
      if (options_.progress) options_.progress(progress);
    }
    if (manifest_) {
      for (const auto& [name, digest] : *manifest_) {
        if (std::find(names.begin(), names.end(), name) == names.end()) {
          report_.problems.push_back(where(name) + ": listed in the file's manifest but missing");
        }
      }
    }
  }

  void hash_tensor(const H5TensorInfo& info, ValidationProgress& progress) {
    const std::vector<int64_t> shape = stored_shape(info);
    const int64_t elements = num_elements(shape);
    const size_t element_bytes = dtype_size(info.dtype);
    if (elements > 0 && (info.chunk.empty() || !info.fletcher32)) {
      report_.problems.push_back(where(info.name) +
                                 ": not chunked with the Fletcher32 filter (its data has no "
                                 "checksum HDF5 verifies)");
    }
    if (info.sha256.empty()) {
      report_.problems.push_back(where(info.name) + ": no sha256 attribute");
    }
    std::optional<std::string> listed;
    if (manifest_) {
      const auto it = manifest_->find(info.name);
      if (it == manifest_->end()) {
        report_.problems.push_back(where(info.name) + ": not in the file's manifest");
      } else {
        listed = it->second;
      }
    }

    Sha256 sha;
    bool readable = true;
    if (elements > 0) {
      const int64_t row_bytes = elements / shape[0] * static_cast<int64_t>(element_bytes);
      const int64_t chunk_rows = info.chunk.empty() ? shape[0] : info.chunk[0];
      const int64_t rows_per_slab =
          chunk_rows *
          std::max<int64_t>(1, kSlabBytes / std::max<int64_t>(1, chunk_rows * row_bytes));
      std::vector<uint8_t> slab;
      for (int64_t row = 0; row < shape[0]; row += rows_per_slab) {
        const int64_t rows = std::min(rows_per_slab, shape[0] - row);
        slab.resize(static_cast<size_t>(rows * row_bytes));
        std::vector<int64_t> start(shape.size(), 0), count = shape;
        start[0] = row;
        count[0] = rows;
        Status read = file_.read_box(info, start, count, h5::file_type_of(info.dtype), slab.data());
        if (!read.ok()) {
          readable = false;
          report_bad_chunks(info, shape, start, count, read);
        } else if (readable) {
          sha.update(slab.data(), slab.size());
        }
        progress.bytes_done += rows * row_bytes;
        if (options_.progress) options_.progress(progress);
      }
    }
    if (!readable) return;  // reported chunk by chunk; no digest to compare
    const std::string computed = sha.finish_hex();
    report_.tensors_hashed += 1;
    report_.bytes_hashed += elements * static_cast<int64_t>(element_bytes);
    if (!info.sha256.empty() && computed != info.sha256) {
      report_.problems.push_back(where(info.name) + ": SHA-256 mismatch: the data is damaged " +
                                 "(stored " + info.sha256 + ", the bytes hash to " + computed +
                                 ")");
    } else if (listed && *listed != computed) {
      report_.problems.push_back(where(info.name) + ": SHA-256 differs from the file's manifest " +
                                 "(manifest " + *listed + ", the bytes hash to " + computed + ")");
    }
  }

  // A slab failed to read: read its chunks one by one and name each one that fails.
  void report_bad_chunks(const H5TensorInfo& info, const std::vector<int64_t>& shape,
                         const std::vector<int64_t>& slab_start,
                         const std::vector<int64_t>& slab_count, const Status& slab_error) {
    if (info.chunk.empty()) {
      report_.problems.push_back(slab_error.message());
      return;
    }
    const size_t rank = shape.size();
    std::vector<int64_t> chunk_start = slab_start;  // odometer over the chunk grid of the slab
    std::vector<uint8_t> buffer;
    int bad = 0;
    std::string first_error;
    while (true) {
      std::vector<int64_t> count(rank);
      int64_t elements = 1;
      for (size_t d = 0; d < rank; ++d) {
        count[d] = std::min(info.chunk[d], shape[d] - chunk_start[d]);
        elements *= count[d];
      }
      buffer.resize(static_cast<size_t>(elements) * dtype_size(info.dtype));
      Status read =
          file_.read_box(info, chunk_start, count, h5::file_type_of(info.dtype), buffer.data());
      if (!read.ok()) {
        if (++bad <= kMaxChunksNamed) {
          std::string location;
          auto at = file_.chunk_location(info.name, chunk_start);
          if (at.ok() && at->offset >= 0) {
            location = " (file offset " + std::to_string(at->offset) + ", " +
                       std::to_string(at->size) + " bytes)";
          }
          const bool checksum = read.message().find("Fletcher32") != std::string::npos;
          report_.problems.push_back(where(info.name) + ": chunk at " +
                                     h5::shape_text(chunk_start) + location +
                                     (checksum ? " fails its Fletcher32 checksum: the data is "
                                                 "damaged"
                                               : " cannot be read: " + read.message()));
        }
      }
      // Next chunk: the last dimension fastest, within the slab's rows.
      size_t d = rank;
      bool more = false;
      while (d-- > 0 && !more) {
        chunk_start[d] += info.chunk[d];
        more = chunk_start[d] < slab_start[d] + slab_count[d];
        if (!more) chunk_start[d] = slab_start[d];
      }
      if (!more) break;
    }
    if (bad > kMaxChunksNamed) {
      report_.problems.push_back(where(info.name) + ": " + std::to_string(bad - kMaxChunksNamed) +
                                 " more damaged chunks in rows [" + std::to_string(slab_start[0]) +
                                 ", " + std::to_string(slab_start[0] + slab_count[0]) + ")");
    }
    if (bad == 0) report_.problems.push_back(slab_error.message());
  }

  const h5::CheckpointFile& file_;
  const ValidateOptions& options_;
  ValidationReport& report_;
  std::optional<ModelConfig> config_;
  std::optional<TensorManifest> manifest_;
  std::map<std::string, H5TensorInfo> infos_;
};

}  // namespace

ValidationReport validate_h5(const std::string& path, const ValidateOptions& options) {
  ValidationReport report;
  report.path = path;
  report.format = "hdf5";
  auto file = h5::CheckpointFile::open(path);
  if (!file.ok()) {
    report.problems.push_back(file.status().message());
    return report;
  }
  H5Validator(*file, options, report).run();
  return report;
}

}  // namespace dshpc
