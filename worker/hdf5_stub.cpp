// Built instead of worker/h5_*.cpp when CMake finds no HDF5: every HDF5 entry point says so.
#include "worker/checkpoint_validate.h"
#include "worker/h5_checkpoint.h"
#include "worker/h5_convert.h"

namespace dshpc {
namespace {

Status no_hdf5(const std::string& path) {
  return unimplemented(path + ": this dshpc was built without HDF5 (install libhdf5-dev and " +
                       "rebuild to read or write HDF5 checkpoints)");
}

}  // namespace

StatusOr<std::unique_ptr<H5Checkpoint>> H5Checkpoint::open(const std::string& path) {
  return no_hdf5(path);
}

ValidationReport validate_h5(const std::string& path, const ValidateOptions&) {
  ValidationReport report;
  report.path = path;
  report.format = "hdf5";
  report.problems.push_back(no_hdf5(path).message());
  return report;
}

StatusOr<ConvertDtype> parse_convert_dtype(const std::string& text) {
  if (text == "keep") return ConvertDtype::kKeep;
  if (text == "bf16") return ConvertDtype::kBF16;
  if (text == "f32") return ConvertDtype::kF32;
  return invalid_argument("--dtype must be keep, bf16 or f32, not '" + text + "'");
}

const char* convert_dtype_name(ConvertDtype dtype) {
  return dtype == ConvertDtype::kKeep ? "keep" : dtype == ConvertDtype::kBF16 ? "bf16" : "f32";
}

StatusOr<ConvertResult> convert_to_h5(const ConvertOptions& options) {
  return no_hdf5(options.to);
}

}  // namespace dshpc
