// Helpers of the GPU tests: the same random inputs on the CPU backend (the reference) and on a
// CUDA backend, and the error measure the tolerances are stated in.
//
// Error measure: err = max_i |gpu_i − cpu_i| / (|cpu_i| + rms(cpu)), a relative error that does
// not explode on elements near zero (rms(cpu) is the scale of the whole output).
//
// Tolerances:
// - float32 mode: kF32Tol = 1e-5. Both sides compute in float32 from identical inputs; they differ
//   only in summation order (and the CPU's double accumulators in places), which costs a few
//   float ulps (2^-24 ≈ 6e-8) times √(terms) for sums of up to a few thousand terms: ≤ ~4e-6.
// - bf16 mode: the inputs are rounded to bf16 first and the CPU computes in float32 from the very
//   same values, so the difference is the GPU's own roundings of results to bf16: each is at most
//   half an ulp, 2^-9 relative. A chain with r roundings is allowed r · 2^-8 (twice the bound, for
//   the propagation of an earlier rounding through later arithmetic).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/cuda_backend.h"

namespace dshpc::gpu_test {

inline constexpr double kF32Tol = 1e-5;
inline constexpr double kBf16Ulp = 1.0 / 256;  // 2^-8, one bf16 ulp relative

// Tolerance of an op with `roundings` bf16 roundings in its chain (see above).
inline double tolerance(DType dtype, int roundings) {
  return dtype == DType::kF32 ? kF32Tol : roundings * kBf16Ulp;
}

inline std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The values a tensor of `dtype` holds for these floats (bf16: rounded to nearest even).
inline std::vector<float> representable(std::vector<float> v, DType dtype) {
  if (dtype == DType::kBF16) {
    for (float& x : v) x = bf16_to_float(float_to_bf16(x));
  }
  return v;
}

// A tensor in a backend's memory: `rows` × `cols` of `dtype`, rows `stride` apart. Padding
// columns hold kPadding so that tests can check that nothing wrote outside the view.
inline constexpr float kPadding = 12288.0f;  // exact in bf16 too

struct Tensor {
  DeviceBuffer buffer;
  Mat mat;
};

inline Tensor upload_tensor(Backend& b, const std::vector<float>& values, int64_t rows,
                            int64_t cols, DType dtype, int64_t stride = -1) {
  if (stride < 0) stride = cols;
  DSHPC_CHECK(static_cast<int64_t>(values.size()) == rows * cols) << "test tensor size";
  std::vector<float> padded(static_cast<size_t>(std::max<int64_t>(rows * stride, 1)), kPadding);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(&padded[r * stride], &values[r * cols], cols * sizeof(float));
  }
  Tensor t;
  const size_t count = static_cast<size_t>(rows * stride);
  t.buffer = b.allocate(std::max<size_t>(count, 1) * dtype_size(dtype));
  if (dtype == DType::kF32) {
    b.upload(t.buffer.data(), padded.data(), count * sizeof(float));
  } else {
    DSHPC_CHECK(dtype == DType::kBF16) << "test tensors are F32 or BF16";
    std::vector<uint16_t> bits(count);
    for (size_t i = 0; i < count; ++i) bits[i] = float_to_bf16(padded[i]);
    b.upload(t.buffer.data(), bits.data(), count * sizeof(uint16_t));
  }
  t.mat = Mat{t.buffer.data(), dtype, rows, cols, stride};
  return t;
}

// All rows × stride values of a view (padding included), as floats.
inline std::vector<float> download_padded(Backend& b, const Mat& m) {
  const size_t count = static_cast<size_t>(m.rows * m.stride);
  std::vector<float> out(count);
  if (count == 0) return out;
  if (m.dtype == DType::kF32) {
    b.download(out.data(), m.data, count * sizeof(float));
  } else {
    std::vector<uint16_t> bits(count);
    b.download(bits.data(), m.data, count * sizeof(uint16_t));
    for (size_t i = 0; i < count; ++i) out[i] = bf16_to_float(bits[i]);
  }
  return out;
}

// The view's rows × cols values, dense.
inline std::vector<float> download_tensor(Backend& b, const Mat& m) {
  const std::vector<float> padded = download_padded(b, m);
  std::vector<float> out(static_cast<size_t>(m.rows * m.cols));
  for (int64_t r = 0; r < m.rows; ++r) {
    std::memcpy(&out[r * m.cols], &padded[r * m.stride], m.cols * sizeof(float));
  }
  return out;
}

inline bool padding_intact(Backend& b, const Mat& m) {
  const std::vector<float> padded = download_padded(b, m);
  for (int64_t r = 0; r < m.rows; ++r) {
    for (int64_t c = m.cols; c < m.stride; ++c) {
      if (padded[r * m.stride + c] != kPadding) return false;
    }
  }
  return true;
}

template <typename T>
std::vector<T> download_raw(Backend& b, const void* src, size_t count) {
  std::vector<T> out(count);
  if (count > 0) b.download(out.data(), src, count * sizeof(T));
  return out;
}

template <typename T>
DeviceBuffer upload_raw(Backend& b, const std::vector<T>& values) {
  DeviceBuffer buffer = b.allocate(std::max<size_t>(values.size(), 1) * sizeof(T));
  if (!values.empty()) b.upload(buffer.data(), values.data(), values.size() * sizeof(T));
  return buffer;
}

// err as defined at the top of this file; NaN or a size mismatch gives infinity.
inline double relative_error(const std::vector<float>& gpu, const std::vector<float>& cpu) {
  if (gpu.size() != cpu.size()) return INFINITY;
  if (cpu.empty()) return 0.0;
  double sum_squares = 0.0;
  for (float c : cpu) sum_squares += static_cast<double>(c) * c;
  const double rms = std::sqrt(sum_squares / static_cast<double>(cpu.size()));
  double worst = 0.0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double err = std::fabs(static_cast<double>(gpu[i]) - cpu[i]) / (std::fabs(cpu[i]) + rms);
    if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
  }
  return worst;
}

// Streams like any EXPECT_*: EXPECT_CLOSE(gpu, cpu, tol) << "context".
#define EXPECT_CLOSE(gpu, cpu, tol) \
  EXPECT_LE(::dshpc::gpu_test::relative_error((gpu), (cpu)), (tol)) << "relative error, "

// Sets an environment variable (a backend's switch, read when the backend is made) for a scope,
// then restores what was there, so that a test's forced setting neither depends on nor leaks
// into the environment it runs in.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// A CUDA backend for the test's dtype on device 0 (the tests need a GPU: none is a failure).
inline std::unique_ptr<Backend> cuda_backend(DType dtype) {
  auto backend = make_cuda_backend(0, dtype);
  if (!backend.ok()) {
    ADD_FAILURE() << "no CUDA backend: " << backend.status().message();
    return nullptr;
  }
  set_process_identity(0, 0);
  return std::move(*backend);
}

inline std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) {
  return info.param == DType::kF32 ? "f32" : "bf16";
}

// Fixture for tests run in both modes: cpu_ (float32 reference) and gpu_ (the mode under test).
class BackendPair : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    gpu_ = cuda_backend(GetParam());
    ASSERT_NE(gpu_, nullptr);
    cpu_ = make_cpu_backend();
  }
  DType dtype() const { return GetParam(); }
  double tol(int roundings) const { return tolerance(GetParam(), roundings); }
  // Random values as this mode stores them, for both backends.
  std::vector<float> values(size_t n, uint32_t seed, float scale = 1.0f) const {
    return representable(random_values(n, seed, scale), GetParam());
  }

  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Backend> gpu_;
};

}  // namespace dshpc::gpu_test
