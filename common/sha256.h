// SHA-256 (FIPS 180-4), streaming: the checksum dshpc stores beside every tensor of an HDF5
// checkpoint and lists in a safetensors directory's tensors.sha256 manifest. Written here so that
// no crypto library is a dependency; tested against the NIST example vectors. Portable C++, and
// the x86 SHA extensions where the CPU has them (checkpoints are hundreds of GB: hashing at
// ~0.3 GB/s would dominate conversion and validation).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dshpc {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256() { reset(); }
  void reset();
  // Feeds `size` more bytes of the message.
  void update(const void* data, size_t size);
  // The digest of everything fed since construction or reset(); the object is reset afterwards.
  Digest finish();
  // finish() as 64 lowercase hexadecimal characters.
  std::string finish_hex();

  static std::string to_hex(const Digest& digest);
  // One-shot helpers.
  static Digest of(const void* data, size_t size);
  static std::string hex_of(std::string_view bytes);

  // Whether blocks go through the x86 SHA extensions (SHA-NI, about 5× the portable code),
  // chosen once from CPUID. Tests switch to the portable code to check both.
  static bool hardware_accelerated();
  static void force_portable(bool portable);

 private:
  void compress(const uint8_t* blocks, size_t count);  // `count` 64-byte blocks

  std::array<uint32_t, 8> state_{};
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;       // bytes waiting in buffer_
  uint64_t total_bytes_ = 0;  // message length so far
};

// True when `text` is 64 lowercase hexadecimal characters (the form to_hex writes).
bool is_sha256_hex(std::string_view text);

}  // namespace dshpc
