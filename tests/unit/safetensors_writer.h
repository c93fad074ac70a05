// Test utility: writes safetensors files and Hugging Face checkpoint directories from C++, so
// that tests build exactly the bytes they need (valid files, or malformed ones byte by byte)
// without Python. Header-only; deliberately does not use the parser under test, nor Boost.JSON.
#pragma once

#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/dtype.h"

namespace dshpc::test_util {

// A fresh directory under /tmp (mkdtemp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/dshpc_test_XXXXXX";
    if (mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // A path inside the directory; `name` may contain '/' (parents are created).
  std::string file(const std::string& name) const {
    const std::filesystem::path full = std::filesystem::path(path_) / name;
    std::filesystem::create_directories(full.parent_path());
    return full.string();
  }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline void write_text(const std::string& path, const std::string& text) {
  write_bytes(path, std::vector<uint8_t>(text.begin(), text.end()));
}

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// A file made of an arbitrary 8-byte length, header text and data: for malformed files.
inline std::vector<uint8_t> raw_safetensors(uint64_t declared_header_length,
                                            const std::string& header,
                                            const std::vector<uint8_t>& data) {
  std::vector<uint8_t> bytes(8);
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(declared_header_length >> (8 * i));
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

// The usual case: the length is the header's own, and `data_bytes` zero bytes follow.
inline std::vector<uint8_t> raw_safetensors(const std::string& header, size_t data_bytes) {
  return raw_safetensors(header.size(), header, std::vector<uint8_t>(data_bytes, 0));
}

inline std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

// float32 → IEEE half, round to nearest even (the inverse of dshpc::f16_to_float).
inline uint16_t float_to_f16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity
  if (magnitude < 0x38800000u) {                        // below 2^-14: subnormal half
    float abs_value;
    std::memcpy(&abs_value, &magnitude, sizeof(abs_value));
    return sign | static_cast<uint16_t>(std::nearbyint(abs_value * 16777216.0f));
  }
  const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

// Builds a valid safetensors file tensor by tensor; data is laid out in insertion order.
class SafetensorsWriter {
 public:
  SafetensorsWriter& add_raw(const std::string& name, const std::string& dtype,
                             std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
    tensors_.push_back({name, dtype, std::move(shape), std::move(bytes)});
    return *this;
  }
  SafetensorsWriter& add_f32(const std::string& name, std::vector<int64_t> shape,
                             const std::vector<float>& values) {
    return add_raw(name, "F32", std::move(shape), as_bytes(values));
  }
  SafetensorsWriter& add_f64(const std::string& name, std::vector<int64_t> shape,
                             const std::vector<double>& values) {
    return add_raw(name, "F64", std::move(shape), as_bytes(values));
  }
  // Rounds each value to bf16 (exact for values with at most 8 significant bits).
  SafetensorsWriter& add_bf16(const std::string& name, std::vector<int64_t> shape,
                              const std::vector<float>& values) {
    std::vector<uint16_t> bits;
    for (float v : values) bits.push_back(float_to_bf16(v));
    return add_raw(name, "BF16", std::move(shape), as_bytes(bits));
  }
  SafetensorsWriter& add_f16(const std::string& name, std::vector<int64_t> shape,
                             const std::vector<float>& values) {
    std::vector<uint16_t> bits;
    for (float v : values) bits.push_back(float_to_f16(v));
    return add_raw(name, "F16", std::move(shape), as_bytes(bits));
  }
  SafetensorsWriter& add_f8_e4m3(const std::string& name, std::vector<int64_t> shape,
                                 std::vector<uint8_t> codes) {
    return add_raw(name, "F8_E4M3", std::move(shape), std::move(codes));
  }
  SafetensorsWriter& add_i64(const std::string& name, std::vector<int64_t> shape,
                             const std::vector<int64_t>& values) {
    return add_raw(name, "I64", std::move(shape), as_bytes(values));
  }
  SafetensorsWriter& set_metadata(const std::string& key, const std::string& value) {
    metadata_.emplace_back(key, value);
    return *this;
  }
  // The reference writer pads the header with spaces to a multiple of 8 so that data is
  // aligned; turning that off leaves data at odd offsets, as a valid file may.
  SafetensorsWriter& pad_header(bool pad) {
    pad_header_ = pad;
    return *this;
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& t : tensors_) out.push_back(t.name);
    return out;
  }

  std::string header_json() const {
    std::string json = "{";
    bool first = true;
    if (!metadata_.empty()) {
      json += "\"__metadata__\":{";
      for (size_t i = 0; i < metadata_.size(); ++i) {
        json += (i ? "," : "") + quote(metadata_[i].first) + ":" + quote(metadata_[i].second);
      }
      json += "}";
      first = false;
    }
    size_t offset = 0;
    for (const auto& t : tensors_) {
      json += (first ? "" : ",") + quote(t.name) + ":{\"dtype\":" + quote(t.dtype) + ",\"shape\":[";
      for (size_t i = 0; i < t.shape.size(); ++i) {
        json += (i ? "," : "") + std::to_string(t.shape[i]);
      }
      json += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t.bytes.size()) + "]}";
      offset += t.bytes.size();
      first = false;
    }
    json += "}";
    if (pad_header_) json.append((8 - json.size() % 8) % 8, ' ');
    return json;
  }

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> data;
    for (const auto& t : tensors_) data.insert(data.end(), t.bytes.begin(), t.bytes.end());
    const std::string header = header_json();
    return raw_safetensors(header.size(), header, data);
  }

  void write(const std::string& path) const { write_bytes(path, bytes()); }

 private:
  struct Tensor {
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };

  template <typename T>
  static std::vector<uint8_t> as_bytes(const std::vector<T>& values) {
    std::vector<uint8_t> bytes(values.size() * sizeof(T));
    if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
    return bytes;
  }
  static std::string quote(const std::string& s) { return "\"" + json_escape(s) + "\""; }

  std::vector<Tensor> tensors_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  bool pad_header_ = true;
};

// model.safetensors.index.json text for a weight map of (tensor, shard file) pairs.
inline std::string index_json(const std::vector<std::pair<std::string, std::string>>& weight_map) {
  std::string json = "{\"metadata\":{\"total_size\":0},\"weight_map\":{";
  for (size_t i = 0; i < weight_map.size(); ++i) {
    json += (i ? "," : "") + std::string("\"") + json_escape(weight_map[i].first) + "\":\"" +
            json_escape(weight_map[i].second) + "\"";
  }
  return json + "}}";
}

// A checkpoint directory: config.json and one model.safetensors.
inline void write_checkpoint(const std::string& dir, const std::string& config_json,
                             const SafetensorsWriter& weights) {
  std::filesystem::create_directories(dir);
  write_text(dir + "/config.json", config_json);
  weights.write(dir + "/model.safetensors");
}

// A sharded checkpoint directory: config.json, each (file name, shard), and an index listing
// every tensor of every shard.
inline void write_sharded_checkpoint(
    const std::string& dir, const std::string& config_json,
    const std::vector<std::pair<std::string, SafetensorsWriter>>& shards) {
  std::filesystem::create_directories(dir);
  write_text(dir + "/config.json", config_json);
  std::vector<std::pair<std::string, std::string>> weight_map;
  for (const auto& [file_name, shard] : shards) {
    shard.write(dir + "/" + file_name);
    for (const std::string& name : shard.names()) weight_map.emplace_back(name, file_name);
  }
  write_text(dir + "/model.safetensors.index.json", index_json(weight_map));
}

}  // namespace dshpc::test_util
