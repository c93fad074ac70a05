// Element types of checkpoints and device tensors, and scalar conversions to float32.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace dshpc {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kF8E4M3,  // float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities
  kI64,
  kI32,
  kI8,
  kU8,
  kBool,
  kF64,
};

// Bytes per element.
size_t dtype_size(DType dtype);
// The safetensors spelling ("F32", "BF16", "F8_E4M3", …).
const char* dtype_name(DType dtype);
// Parses a safetensors dtype string; nullopt for one we do not know.
std::optional<DType> parse_dtype(std::string_view name);

inline float bf16_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_float(uint16_t bits);
float f8e4m3_to_float(uint8_t bits);

// Converts `count` elements of `dtype` at `src` to float32 at `dst`. Only floating types.
void convert_to_f32(DType dtype, const void* src, float* dst, size_t count);

}  // namespace dshpc
