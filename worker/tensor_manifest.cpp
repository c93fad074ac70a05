#include "worker/tensor_manifest.h"

#include "common/sha256.h"

namespace dshpc {

StatusOr<TensorManifest> parse_tensor_manifest(const std::string& text, const std::string& where) {
  TensorManifest manifest;
  size_t line_start = 0;
  for (int line_number = 1; line_start < text.size(); ++line_number) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    std::string line = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const std::string at = where + ":" + std::to_string(line_number);
    if (line.size() < 67 || line.compare(64, 2, "  ") != 0) {
      return invalid_argument(at + ": expected \"<sha256>  <tensor name>\"");
    }
    const std::string digest = line.substr(0, 64);
    const std::string name = line.substr(66);
    if (!is_sha256_hex(digest)) {
      return invalid_argument(at + ": \"" + digest + "\" is not 64 lowercase hex digits");
    }
    if (!manifest.emplace(name, digest).second) {
      return invalid_argument(at + ": tensor \"" + name + "\" is listed twice");
    }
  }
  return manifest;
}

StatusOr<std::string> format_tensor_manifest(const TensorManifest& manifest) {
  std::string text;
  for (const auto& [name, digest] : manifest) {
    if (name.find('\n') != std::string::npos || name.find('\r') != std::string::npos) {
      return invalid_argument("tensor \"" + name + "\": a name with a line break cannot be listed");
    }
    text += digest + "  " + name + "\n";
  }
  return text;
}

}  // namespace dshpc
