// libFuzzer target: the safetensors header parser on arbitrary file contents.
//
// Oracle beyond "no crash, no sanitizer report": whatever the parser accepts must satisfy the
// invariants its header promises (tensors sorted by offset, inside the file, not overlapping,
// sizes equal to elements × dtype size), so that the loader can trust it without checking again.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.h"
#include "worker/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dshpc;
  StatusOr<SafetensorsHeader> parsed = parse_safetensors_header(data, size, "fuzz.safetensors");
  if (!parsed.ok()) {
    FUZZ_CHECK(!parsed.status().message().empty());
    FUZZ_CHECK(parsed.status().message().find("fuzz.safetensors") != std::string::npos);
    return 0;
  }
  const SafetensorsHeader& header = *parsed;
  FUZZ_CHECK(header.header_bytes <= size - 8);
  const uint64_t data_bytes = size - 8 - header.header_bytes;
  uint64_t previous_end = 0;
  for (const SafetensorsTensor& tensor : header.tensors) {
    FUZZ_CHECK(tensor.data_begin <= tensor.data_end);
    FUZZ_CHECK(tensor.data_end <= data_bytes);
    FUZZ_CHECK(tensor.data_begin >= previous_end);  // sorted and not overlapping
    previous_end = tensor.data_end;
    const int64_t elements = tensor.num_elements();
    FUZZ_CHECK(elements >= 0);
    for (int64_t dim : tensor.shape) FUZZ_CHECK(dim >= 0);
    FUZZ_CHECK(static_cast<uint64_t>(elements) * dtype_size(tensor.dtype) == tensor.num_bytes());
  }
  // The JSON checker on its own must agree that an accepted header is one clean document.
  const std::string_view json(reinterpret_cast<const char*>(data) + 8, header.header_bytes);
  FUZZ_CHECK(check_json_document(json, "fuzz").ok());
  return 0;
}
