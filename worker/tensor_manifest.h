// tensors.sha256: the per-tensor SHA-256 manifest of a checkpoint. One line per tensor,
//
//   <64 lowercase hex digits><two spaces><tensor name>
//
// sorted by name (the layout of sha256sum's output, with tensor names in place of file names).
// The digest is of the tensor's bytes as stored: its data range in the safetensors file, or the
// elements of its HDF5 dataset (row-major, little-endian), so a checkpoint converted with
// `--dtype keep` lists the same digests as its source. Blank lines and lines starting with '#'
// are ignored. `dshpc validate DIR --write-manifest` writes one beside a Hugging Face checkpoint;
// `dshpc convert` stores one in every HDF5 file (/files/tensors.sha256).
#pragma once

#include <map>
#include <string>

#include "common/status.h"

namespace dshpc {

using TensorManifest = std::map<std::string, std::string>;  // tensor name -> sha256 hex

// Errors name `where` and the line: a malformed line, a digest that is not 64 lowercase hex
// digits, a tensor listed twice.
StatusOr<TensorManifest> parse_tensor_manifest(const std::string& text, const std::string& where);
// The manifest's text. Names must not contain a newline (INVALID_ARGUMENT naming the tensor).
StatusOr<std::string> format_tensor_manifest(const TensorManifest& manifest);

}  // namespace dshpc
