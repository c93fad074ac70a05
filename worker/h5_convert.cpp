// convert_to_h5: a Hugging Face checkpoint to a dshpc HDF5 checkpoint (h5_convert.h).
#include "worker/h5_convert.h"

#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <tuple>

#include "common/mapped_file.h"
#include "common/sha256.h"
#include "worker/checkpoint.h"
#include "worker/chunk_layout.h"
#include "worker/h5_format.h"
#include "worker/model.h"
#include "worker/tensor_manifest.h"

namespace dshpc {
namespace {

constexpr int64_t kSlabBytes = int64_t{64} << 20;
// Text files carried into /files when the source directory has them (config.json always).
constexpr const char* kCarriedFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                         "generation_config.json"};

bool is_float(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16 ||
         dtype == DType::kF64 || dtype == DType::kF8E4M3;
}

struct TensorPlan {
  std::string name;
  const SafetensorsTensor* source = nullptr;
  std::string file;  // the shard holding it (read order)
  DType out = DType::kF32;
  TensorSplit split = TensorSplit::kReplicated;
  int64_t units = 1;
};

int64_t num_elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

StatusOr<std::optional<std::string>> read_optional_text(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::optional<std::string>();
  ASSIGN_OR_RETURN(MappedFile file, MappedFile::open(path));
  return std::optional<std::string>(
      std::string(reinterpret_cast<const char*>(file.data()), file.size()));
}

// config.json without quantization_config (its weights are no longer quantised).
StatusOr<std::string> without_quantization(const std::string& config_json,
                                           const std::string& where) {
  boost::json::error_code ec;
  boost::json::value root = boost::json::parse(config_json, ec);
  if (ec || !root.is_object()) return invalid_argument(where + ": not a JSON object");
  root.get_object().erase("quantization_config");
  return boost::json::serialize(root);
}

class Converter {
 public:
  Converter(const ConvertOptions& options, const Checkpoint& checkpoint)
      : options_(options), checkpoint_(checkpoint) {}

  StatusOr<ConvertResult> run(const ModelConfig& config,
                              const std::optional<TensorManifest>& source_manifest) {
    source_manifest_ = source_manifest ? &*source_manifest : nullptr;
    RETURN_IF_ERROR(plan(config));
    const std::string tmp = options_.to + ".tmp-" + std::to_string(getpid());
    Status written = write(tmp);
    std::error_code ec;
    if (!written.ok()) {
      std::filesystem::remove(tmp, ec);
      return written;
    }
    std::filesystem::rename(tmp, options_.to, ec);
    if (ec) {
      std::filesystem::remove(tmp, ec);
      return invalid_argument("cannot rename " + tmp + " to " + options_.to + ": " + ec.message());
    }
    result_.file_bytes = static_cast<int64_t>(std::filesystem::file_size(options_.to, ec));
    result_.source_manifest_checked = source_manifest_ != nullptr;
    return result_;
  }

 private:
  // Chooses each tensor's output dtype and chunking; sorts them in file order.
  Status plan(const ModelConfig& config) {
    std::map<std::string, TensorSpec> table;
    for (TensorSpec& spec : weight_table(config)) table.emplace(spec.name, std::move(spec));
    std::vector<std::string> dequantised_scales;
    for (const std::string& name : checkpoint_.tensor_names()) {
      if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
        return invalid_argument(options_.from + ": tensor \"" + name +
                                "\": the name cannot be an HDF5 dataset name (it holds '/' or "
                                "is empty, '.' or '..')");
      }
      TensorPlan p;
      p.name = name;
      p.source = *checkpoint_.find(name);
      p.file = checkpoint_.file_of(name);
      p.out = output_dtype(*p.source);
      const auto spec = table.find(name);
      if (spec != table.end()) {
        p.split = spec->second.split;
        p.units = spec->second.units;
      }
      if (p.source->dtype == DType::kF8E4M3 && p.out != DType::kF8E4M3) {
        dequantised_scales.push_back(name + kFp8ScaleSuffix);
      }
      plans_.push_back(std::move(p));
    }
    // Scales folded into dequantised weights are not carried over.
    std::sort(dequantised_scales.begin(), dequantised_scales.end());
    std::erase_if(plans_, [&](const TensorPlan& p) {
      return std::binary_search(dequantised_scales.begin(), dequantised_scales.end(), p.name);
    });
    result_.dropped_scales = static_cast<int64_t>(dequantised_scales.size());
    dequantised_ = !dequantised_scales.empty();
    std::sort(plans_.begin(), plans_.end(), [](const TensorPlan& a, const TensorPlan& b) {
      return std::tie(a.file, a.source->data_begin) < std::tie(b.file, b.source->data_begin);
    });
    progress_.tensors_total = static_cast<int64_t>(plans_.size());
    for (const TensorPlan& p : plans_) {
      progress_.bytes_total +=
          num_elements(p.source->shape) * static_cast<int64_t>(dtype_size(p.out));
    }
    return ok_status();
  }

  DType output_dtype(const SafetensorsTensor& tensor) const {
    if (options_.dtype == ConvertDtype::kKeep || !is_float(tensor.dtype)) return tensor.dtype;
    // Vectors (norms, router bias) stay as they are; matrices change type.
    if (tensor.shape.size() < 2) return tensor.dtype;
    return options_.dtype == ConvertDtype::kBF16 ? DType::kBF16 : DType::kF32;
  }

  Status write(const std::string& path) {
    ASSIGN_OR_RETURN(h5::Id file, h5::create_file(path));
    const hid_t root = file.get();
    std::error_code ec;
    const std::string source = std::filesystem::absolute(options_.from, ec).string();
    RETURN_IF_ERROR(h5::write_string_attribute(root, h5::kFormatAttr, kH5FormatName));
    RETURN_IF_ERROR(h5::write_int_attribute(root, h5::kVersionAttr, kH5FormatVersion));
    RETURN_IF_ERROR(h5::write_string_attribute(root, h5::kCreatedByAttr, options_.created_by));
    RETURN_IF_ERROR(h5::write_string_attribute(root, h5::kSourceAttr, source));
    RETURN_IF_ERROR(
        h5::write_string_attribute(root, h5::kDtypePolicyAttr, convert_dtype_name(options_.dtype)));
    ASSIGN_OR_RETURN(h5::Id files, h5::create_group(root, h5::kFilesGroup));
    std::string config_json = checkpoint_.config_json();
    if (dequantised_) {
      ASSIGN_OR_RETURN(config_json,
                       without_quantization(config_json, options_.from + "/config.json"));
    }
    RETURN_IF_ERROR(store_file(files.get(), "config.json", config_json));
    for (const char* name : kCarriedFiles) {
      ASSIGN_OR_RETURN(std::optional<std::string> text,
                       read_optional_text(options_.from + "/" + name));
      if (text) RETURN_IF_ERROR(store_file(files.get(), name, *text));
    }

    ASSIGN_OR_RETURN(h5::Id tensors, h5::create_group(root, h5::kTensorsGroup));
    TensorManifest manifest;
    for (const TensorPlan& p : plans_) {
      progress_.tensor = &p.name;
      ASSIGN_OR_RETURN(manifest[p.name], write_tensor(tensors.get(), p));
      progress_.tensors_done += 1;
      result_.tensors += 1;
    }
    result_.tensor_bytes = progress_.bytes_done;
    ASSIGN_OR_RETURN(const std::string manifest_text, format_tensor_manifest(manifest));
    RETURN_IF_ERROR(store_file(files.get(), kTensorManifestName, manifest_text));
    tensors.reset();
    files.reset();
    if (H5Fflush(root, H5F_SCOPE_GLOBAL) < 0) {
      return h5::error(StatusCode::kResourceExhausted, "writing " + path);
    }
    if (H5Fclose(file.release()) < 0)
      return h5::error(StatusCode::kResourceExhausted, "closing " + path);
    return ok_status();
  }

  Status store_file(hid_t files, const std::string& name, const std::string& text) {
    RETURN_IF_ERROR(h5::write_text(files, name, text));
    ASSIGN_OR_RETURN(h5::Id dataset, h5::open_dataset(files, name));
    return h5::write_string_attribute(dataset.get(), h5::kSha256Attr, Sha256::hex_of(text));
  }

  // Writes one tensor slab by slab (whole chunk rows, about kSlabBytes each) and returns the
  // SHA-256 of the bytes written.
  StatusOr<std::string> write_tensor(hid_t group, const TensorPlan& p) {
    const SafetensorsTensor& source = *p.source;
    const std::string where = options_.from + ": tensor \"" + p.name + "\"";
    const std::vector<int64_t> shape =
        source.shape.empty() ? std::vector<int64_t>{1} : source.shape;
    const size_t rank = shape.size();
    const int64_t elements = num_elements(shape);
    const size_t in_size = dtype_size(source.dtype);
    const size_t out_size = dtype_size(p.out);
    const std::vector<int64_t> chunk = choose_chunk_shape(source.shape, p.split, p.units, out_size);

    std::vector<hsize_t> dims(shape.begin(), shape.end());
    ASSIGN_OR_RETURN(h5::Id space,
                     h5::make_id(H5Screate_simple(static_cast<int>(rank), dims.data(), nullptr),
                                 H5Sclose, where, StatusCode::kInternal));
    ASSIGN_OR_RETURN(h5::Id dcpl, h5::make_id(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, where,
                                              StatusCode::kInternal));
    if (!chunk.empty()) {
      std::vector<hsize_t> chunk_dims(chunk.begin(), chunk.end());
      if (H5Pset_chunk(dcpl.get(), static_cast<int>(rank), chunk_dims.data()) < 0 ||
          H5Pset_fletcher32(dcpl.get()) < 0) {
        return h5::error(StatusCode::kInternal, where + ": chunk " + h5::shape_text(chunk));
      }
    }
    H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
    ASSIGN_OR_RETURN(h5::Id dapl, h5::make_id(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose, where,
                                              StatusCode::kInternal));
    H5Pset_chunk_cache(dapl.get(), 0, 0, 1.0);  // whole chunks go straight to the file
    const hid_t file_type = h5::file_type_of(p.out);
    ASSIGN_OR_RETURN(
        h5::Id dataset,
        h5::make_id(H5Dcreate2(group, p.name.c_str(), file_type, space.get(), H5P_DEFAULT,
                               dcpl.get(), dapl.get()),
                    H5Dclose, where + ": creating its dataset", StatusCode::kInternal));

    Sha256 sha, source_sha;
    ASSIGN_OR_RETURN(const uint8_t* raw, checkpoint_.raw_data(p.name));
    if (elements > 0) {
      const int64_t row_elements = elements / shape[0];
      const int64_t chunk_row_bytes = chunk[0] * row_elements * static_cast<int64_t>(out_size);
      const int64_t rows_per_slab =
          chunk[0] * std::max<int64_t>(1, kSlabBytes / std::max<int64_t>(1, chunk_row_bytes));
      std::vector<uint8_t> aligned, out;
      std::vector<float> f32;
      for (int64_t row = 0; row < shape[0]; row += rows_per_slab) {
        const int64_t rows = std::min(rows_per_slab, shape[0] - row);
        const size_t count = static_cast<size_t>(rows * row_elements);
        const uint8_t* in = raw + static_cast<size_t>(row * row_elements) * in_size;
        if (source_manifest_ != nullptr) source_sha.update(in, count * in_size);
        if (p.out == source.dtype) {
          out.assign(in, in + count * in_size);
        } else {
          f32.resize(count);
          if (source.dtype == DType::kF8E4M3) {
            RETURN_IF_ERROR(
                checkpoint_.read_f32(p.name, Range{row, rows}, Range::all(), f32.data()));
          } else {
            aligned.assign(in, in + count * in_size);  // source bytes need not be aligned
            convert_to_f32(source.dtype, aligned.data(), f32.data(), count);
          }
          out.resize(count * out_size);
          if (p.out == DType::kF32) {
            std::memcpy(out.data(), f32.data(), count * sizeof(float));
          } else {
            for (size_t i = 0; i < count; ++i) {
              const uint16_t bits = float_to_bf16(f32[i]);
              std::memcpy(out.data() + 2 * i, &bits, 2);
            }
          }
        }
        sha.update(out.data(), out.size());
        std::vector<hsize_t> start(rank, 0), slab(dims);
        start[0] = static_cast<hsize_t>(row);
        slab[0] = static_cast<hsize_t>(rows);
        ASSIGN_OR_RETURN(h5::Id memory,
                         h5::make_id(H5Screate_simple(static_cast<int>(rank), slab.data(), nullptr),
                                     H5Sclose, where, StatusCode::kInternal));
        if (H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, slab.data(),
                                nullptr) < 0 ||
            H5Dwrite(dataset.get(), file_type, memory.get(), space.get(), H5P_DEFAULT, out.data()) <
                0) {
          return h5::error(StatusCode::kResourceExhausted, where + ": writing rows [" +
                                                               std::to_string(row) + ", " +
                                                               std::to_string(row + rows) + ")");
        }
        progress_.bytes_done += static_cast<int64_t>(out.size());
        if (options_.progress) options_.progress(progress_);
      }
    } else if (options_.progress) {
      options_.progress(progress_);
    }

    if (source_manifest_ != nullptr) {
      const auto listed = source_manifest_->find(p.name);
      const std::string digest = source_sha.finish_hex();
      if (listed == source_manifest_->end()) {
        return data_loss(where + " is not listed in the source's " + kTensorManifestName);
      }
      if (listed->second != digest) {
        return data_loss(where + " (in " + p.file + ") does not match the source's " +
                         kTensorManifestName + ": the source data is damaged (manifest " +
                         listed->second + ", the bytes hash to " + digest + ")");
      }
    }
    const std::string digest = sha.finish_hex();
    const hid_t d = dataset.get();
    RETURN_IF_ERROR(h5::write_string_attribute(d, h5::kDtypeAttr, dtype_name(p.out)));
    RETURN_IF_ERROR(h5::write_string_attribute(d, h5::kSha256Attr, digest));
    RETURN_IF_ERROR(h5::write_string_attribute(d, h5::kSourceDtypeAttr, dtype_name(source.dtype)));
    RETURN_IF_ERROR(h5::write_string_attribute(d, h5::kSplitAttr, tensor_split_name(p.split)));
    RETURN_IF_ERROR(h5::write_int_attribute(d, h5::kSplitUnitsAttr, p.units));
    if (source.shape.empty()) RETURN_IF_ERROR(h5::write_int_attribute(d, h5::kScalarAttr, 1));
    return digest;
  }

  const ConvertOptions& options_;
  const Checkpoint& checkpoint_;
  const TensorManifest* source_manifest_ = nullptr;
  std::vector<TensorPlan> plans_;
  bool dequantised_ = false;
  ConvertProgress progress_;
  ConvertResult result_;
};

}  // namespace

StatusOr<ConvertDtype> parse_convert_dtype(const std::string& text) {
  if (text == "keep") return ConvertDtype::kKeep;
  if (text == "bf16") return ConvertDtype::kBF16;
  if (text == "f32") return ConvertDtype::kF32;
  return invalid_argument("--dtype must be keep, bf16 or f32, not '" + text + "'");
}

const char* convert_dtype_name(ConvertDtype dtype) {
  switch (dtype) {
    case ConvertDtype::kKeep:
      return "keep";
    case ConvertDtype::kBF16:
      return "bf16";
    case ConvertDtype::kF32:
      return "f32";
  }
  return "?";
}

StatusOr<ConvertResult> convert_to_h5(const ConvertOptions& options) {
  h5::quiet_errors();
  const auto start = std::chrono::steady_clock::now();
  if (options.to.empty()) return invalid_argument("--to is required");
  ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::open(options.from));
  ASSIGN_OR_RETURN(const ModelConfig config,
                   parse_model_config(checkpoint.config_json(), options.from + "/config.json"));
  std::optional<TensorManifest> manifest;
  const std::string manifest_path = options.from + "/" + kTensorManifestName;
  ASSIGN_OR_RETURN(std::optional<std::string> manifest_text, read_optional_text(manifest_path));
  if (manifest_text) {
    ASSIGN_OR_RETURN(manifest, parse_tensor_manifest(*manifest_text, manifest_path));
  }
  Converter converter(options, checkpoint);
  ASSIGN_OR_RETURN(ConvertResult result, converter.run(config, manifest));
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace dshpc
