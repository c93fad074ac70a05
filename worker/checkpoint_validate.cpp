#include "worker/checkpoint_validate.h"

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/mapped_file.h"
#include "common/sha256.h"
#include "worker/checkpoint.h"
#include "worker/h5_checkpoint.h"
#include "worker/model.h"
#include "worker/tensor_manifest.h"

namespace dshpc {
namespace {

std::string label(const std::string& name) {
  return "tensor \"" + name + "\"";
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool is_weight_dtype(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16 ||
         dtype == DType::kF64 || dtype == DType::kF8E4M3;
}

// Writes `text` to `path` through a temporary file and a rename, so that a reader never sees half
// a manifest.
Status write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) return invalid_argument("cannot write " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return invalid_argument("cannot rename " + tmp + " to " + path + ": " + ec.message());
  return ok_status();
}

ValidationReport validate_safetensors_dir(const std::string& dir, const ValidateOptions& options) {
  ValidationReport report;
  report.path = dir;
  report.format = "safetensors";
  StatusOr<Checkpoint> opened = Checkpoint::open(dir);
  if (!opened.ok()) {
    report.problems.push_back(opened.status().message());
    return report;
  }
  const Checkpoint& checkpoint = *opened;
  const std::vector<std::string> names = checkpoint.tensor_names();
  report.tensors = static_cast<int64_t>(names.size());

  auto config = parse_model_config(checkpoint.config_json(), dir + "/config.json");
  if (!config.ok()) {
    report.problems.push_back(config.status().message());
  } else {
    check_expected_tensors(
        *config,
        [&](const std::string& name) -> std::optional<StoredTensor> {
          auto tensor = checkpoint.find(name);
          if (!tensor.ok()) return std::nullopt;
          return StoredTensor{(*tensor)->dtype, (*tensor)->shape};
        },
        report.problems);
  }

  const std::string manifest_path = dir + "/" + kTensorManifestName;
  std::optional<TensorManifest> manifest;
  std::error_code ec;
  if (std::filesystem::exists(manifest_path, ec)) {
    auto text = MappedFile::open(manifest_path);
    StatusOr<TensorManifest> parsed =
        text.ok() ? parse_tensor_manifest(
                        std::string(reinterpret_cast<const char*>(text->data()), text->size()),
                        manifest_path)
                  : StatusOr<TensorManifest>(text.status());
    if (!parsed.ok()) {
      report.problems.push_back(parsed.status().message());
      return report;
    }
    manifest = std::move(*parsed);
  }
  if (!manifest && !options.write_manifest) {
    report.notes.push_back(std::string("no ") + kTensorManifestName +
                           ": tensor data not checksummed (`dshpc validate " + dir +
                           " --write-manifest` writes one)");
    return report;
  }

  // Hash every tensor's bytes in the order they sit in the files.
  ValidationProgress progress;
  progress.tensors_total = report.tensors;
  for (const std::string& name : names)
    progress.bytes_total += (*checkpoint.find(name))->num_bytes();
  TensorManifest computed;
  for (const std::string& name : names) {
    const SafetensorsTensor& tensor = **checkpoint.find(name);
    const uint8_t* data = *checkpoint.raw_data(name);
    Sha256 sha;
    constexpr uint64_t kStep = 64ull << 20;
    for (uint64_t at = 0; at < tensor.num_bytes(); at += kStep) {
      const uint64_t n = std::min(kStep, tensor.num_bytes() - at);
      sha.update(data + at, n);
      progress.bytes_done += static_cast<int64_t>(n);
      if (options.progress) options.progress(progress);
    }
    computed[name] = sha.finish_hex();
    progress.tensors_done += 1;
    report.tensors_hashed += 1;
    report.bytes_hashed += static_cast<int64_t>(tensor.num_bytes());
    if (!manifest) continue;
    const auto entry = manifest->find(name);
    if (entry == manifest->end()) {
      report.problems.push_back(label(name) + " (in " + checkpoint.file_of(name) +
                                "): not listed in " + manifest_path);
    } else if (entry->second != computed[name]) {
      report.problems.push_back(label(name) + " (in " + checkpoint.file_of(name) +
                                "): SHA-256 mismatch: the data is damaged (" + manifest_path +
                                " lists " + entry->second + ", the bytes hash to " +
                                computed[name] + ")");
    }
  }
  if (manifest) {
    for (const auto& [name, digest] : *manifest) {
      if (!checkpoint.contains(name)) {
        report.problems.push_back(label(name) + ": listed in " + manifest_path +
                                  " but not in the checkpoint");
      }
    }
  }
  if (options.write_manifest) {
    if (manifest && !report.problems.empty()) {
      report.notes.push_back(std::string("did not overwrite ") + manifest_path +
                             ": the tensors do not match it (remove it first to replace it)");
    } else {
      auto text = format_tensor_manifest(computed);
      Status written = text.ok() ? write_file_atomically(manifest_path, *text) : text.status();
      if (!written.ok()) {
        report.problems.push_back(written.message());
      } else {
        report.notes.push_back("wrote " + manifest_path + " (" + std::to_string(computed.size()) +
                               " tensors)");
      }
    }
  }
  return report;
}

}  // namespace

void check_expected_tensors(const ModelConfig& config, const TensorLookup& lookup,
                            std::vector<std::string>& problems) {
  for (const TensorSpec& spec : weight_table(config)) {
    const std::optional<StoredTensor> tensor = lookup(spec.name);
    if (!tensor) {
      problems.push_back(label(spec.name) + ": missing (the config needs shape " +
                         shape_string(spec.shape) + ")");
      continue;
    }
    if (tensor->shape != spec.shape) {
      problems.push_back(label(spec.name) + ": shape " + shape_string(tensor->shape) +
                         ", but the config needs " + shape_string(spec.shape));
      continue;
    }
    if (!is_weight_dtype(tensor->dtype)) {
      problems.push_back(
          label(spec.name) + ": dtype " + dtype_name(tensor->dtype) +
          " cannot hold weights (F32, BF16, F16, F64, or F8_E4M3 with block scales)");
      continue;
    }
    if (tensor->dtype != DType::kF8E4M3) continue;
    const std::string scale_name = spec.name + kFp8ScaleSuffix;
    if (spec.shape.size() != 2) {
      problems.push_back(label(spec.name) + ": F8_E4M3 weights must be 2-D to carry block scales");
      continue;
    }
    const std::vector<int64_t> expected =
        fp8_scale_shape(spec.shape, config.fp8_block_rows, config.fp8_block_cols);
    const std::optional<StoredTensor> scale = lookup(scale_name);
    if (!scale) {
      problems.push_back(label(scale_name) + ": missing (the F8_E4M3 weight \"" + spec.name +
                         "\" needs its block scales, shape " + shape_string(expected) + ")");
    } else if (scale->shape != expected) {
      problems.push_back(label(scale_name) + ": shape " + shape_string(scale->shape) + ", but " +
                         std::to_string(config.fp8_block_rows) + "x" +
                         std::to_string(config.fp8_block_cols) + " blocks of \"" + spec.name +
                         "\" need " + shape_string(expected));
    } else if (!is_weight_dtype(scale->dtype) || scale->dtype == DType::kF8E4M3) {
      problems.push_back(label(scale_name) + ": block scales must be F32, BF16, F16 or F64, not " +
                         dtype_name(scale->dtype));
    }
  }
}

ValidationReport validate_checkpoint(const std::string& path, const ValidateOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  ValidationReport report;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    report = validate_safetensors_dir(path, options);
  } else if (!std::filesystem::exists(path, ec)) {
    report.path = path;
    report.problems.push_back(path + ": no such file or directory");
  } else if (is_hdf5_file(path)) {
    report = validate_h5(path, options);
  } else {
    report.path = path;
    report.problems.push_back(path +
                              " is neither a Hugging Face checkpoint directory nor an HDF5 file "
                              "(no HDF5 signature at its start)");
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

bool is_hdf5_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char signature[8] = {};
  return in.read(signature, sizeof(signature)) &&
         std::string(signature, 8) == std::string("\x89HDF\r\n\x1a\n", 8);
}

bool hdf5_available() {
#ifdef DSHPC_HAVE_HDF5
  return true;
#else
  return false;
#endif
}

}  // namespace dshpc
