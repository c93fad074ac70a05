#include "kernels/backend.h"

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "common/check.h"

namespace dshpc {

DeviceBuffer::~DeviceBuffer() {
  if (owner_ != nullptr && data_ != nullptr) owner_->release(data_, bytes_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (owner_ != nullptr && data_ != nullptr) owner_->release(data_, bytes_);
    owner_ = std::exchange(other.owner_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

Mat Mat::row_slice(int64_t begin, int64_t count) const {
  DSHPC_CHECK(begin >= 0 && count >= 0 && begin + count <= rows)
      << "row slice [" << begin << ", " << begin + count << ") of " << rows << " rows";
  Mat out = *this;
  out.data = static_cast<char*>(data) + begin * stride * static_cast<int64_t>(dtype_size(dtype));
  out.rows = count;
  return out;
}

Mat Mat::col_slice(int64_t begin, int64_t count) const {
  DSHPC_CHECK(begin >= 0 && count >= 0 && begin + count <= cols)
      << "column slice [" << begin << ", " << begin + count << ") of " << cols << " columns";
  Mat out = *this;
  out.data = static_cast<char*>(data) + begin * static_cast<int64_t>(dtype_size(dtype));
  out.cols = count;
  return out;
}

namespace {

// Best of several timed repetitions of `body` (seconds), after one warm-up.
template <typename F>
double best_seconds(Backend& backend, int repetitions, F body) {
  body();
  backend.synchronize();
  double best = 1e30;
  for (int i = 0; i < repetitions; ++i) {
    const auto start = std::chrono::steady_clock::now();
    body();
    backend.synchronize();
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

}  // namespace

Status Backend::try_grow(DeviceBuffer& buffer, size_t bytes, const std::string& what) {
  if (buffer.bytes() >= bytes) return ok_status();
  buffer = DeviceBuffer();
  buffer = try_allocate(bytes);
  if (buffer.data() != nullptr) return ok_status();
  return resource_exhausted(what + " of " + std::to_string(bytes) +
                            " bytes could not be allocated");
}

void Backend::matmul_heads(const Mat& x, const Mat& w, Mat y, int64_t heads, int64_t x_offset,
                           int64_t w_offset, int64_t y_offset, bool w_transposed) {
  auto moved = [](Mat m, int64_t elements) {
    m.data = static_cast<char*>(m.data) + elements * static_cast<int64_t>(dtype_size(m.dtype));
    return m;
  };
  for (int64_t h = 0; h < heads; ++h) {
    matmul(moved(x, h * x_offset), moved(w, h * w_offset), moved(y, h * y_offset), w_transposed);
  }
}

void Backend::mla_prepare(const MlaPrepareArgs& a) {
  const int64_t tokens = a.q.rows, heads = a.heads, nope = a.nope, rope = a.rope;
  const int64_t qk = nope + rope, lora = a.latent.cols - rope, entry = lora + rope;
  DSHPC_CHECK(a.q.cols == heads * qk && a.latent.rows == tokens && a.q_absorbed.rows == tokens &&
              a.q_absorbed.cols == heads * entry && a.kv_b.cols == lora)
      << "mla_prepare: q [" << a.q.rows << ", " << a.q.cols << "], latent [" << a.latent.rows
      << ", " << a.latent.cols << "], q_absorbed [" << a.q_absorbed.rows << ", "
      << a.q_absorbed.cols << "], " << heads << " heads of " << nope << " + " << rope;
  // kv_a_layernorm covers only c, never k_pe.
  Mat c_kv = a.latent.col_slice(0, lora);
  rmsnorm(c_kv, a.kv_norm, a.eps, c_kv);
  this->rope(a.latent.col_slice(lora, rope), 1, 0, rope, a.positions, a.tables, a.style);
  kv_cache_write(a.latent, nullptr, a.slots, a.cache);

  // Absorbed query [T, heads, lora + rope] = [W_UKᵀ q_nope | rotated q_pe].
  this->rope(a.q.col_slice(nope, a.q.cols - nope), heads, qk, rope, a.positions, a.tables,
             a.style);
  const int64_t head_rows = (nope + a.v_dim) * a.kv_b.stride;  // kv_b elements from head to head
  // Head h: q_nope_h [T, nope] · W_UK_h [nope, lora] → q_absorbed columns [h·entry, +lora).
  matmul_heads(a.q.col_slice(0, nope), a.kv_b.row_slice(0, nope), a.q_absorbed.col_slice(0, lora),
               heads, qk, head_rows, entry, /*w_transposed=*/false);
  // The rotated q_pe of every head in one copy: q and q_absorbed as one row per (token, head).
  DSHPC_CHECK(a.q.contiguous() && a.q_absorbed.contiguous()) << "mla_prepare: strided q";
  const Mat q_rows = Mat::of(a.q.data, a.q.dtype, tokens * heads, qk);
  const Mat absorbed_rows = Mat::of(a.q_absorbed.data, a.q_absorbed.dtype, tokens * heads, entry);
  copy(q_rows.col_slice(nope, rope), absorbed_rows.col_slice(lora, rope));
}

void Backend::mla_attention(const Mat& q_absorbed, Mat latent, const StepTensors& step,
                            int64_t heads, const PagedKvView& cache, float scale, const Mat& kv_b,
                            int64_t nope, int64_t v_dim, Mat values) {
  const int64_t lora = cache.v_dim;
  DSHPC_CHECK(latent.cols == heads * lora && values.cols == heads * v_dim && kv_b.cols == lora)
      << "mla_attention: latent width " << latent.cols << ", values width " << values.cols
      << ", kv_b width " << kv_b.cols << " for " << heads << " heads of latent " << lora
      << " and v " << v_dim;
  paged_attention(q_absorbed, latent, step, heads, cache, scale);
  // Head h: latent_h [T, lora] · W_UV_hᵀ ([v, lora]) → values columns [h·v, +v).
  const int64_t head_rows = (nope + v_dim) * kv_b.stride;  // kv_b elements from head to head
  matmul_heads(latent.col_slice(0, lora), kv_b.row_slice(nope, v_dim), values.col_slice(0, v_dim),
               heads, lora, head_rows, v_dim);
}

double Backend::measure_copy_bandwidth(size_t bytes) {
  const DType dtype = activation_dtype();
  const int64_t elements = static_cast<int64_t>(bytes / dtype_size(dtype));
  const int64_t cols = 4096;
  const int64_t rows = std::max<int64_t>(1, elements / cols);
  DeviceBuffer src = allocate(static_cast<size_t>(rows * cols) * dtype_size(dtype));
  DeviceBuffer dst = allocate(src.bytes());
  Mat a = Mat::of(src.data(), dtype, rows, cols);
  Mat b = Mat::of(dst.data(), dtype, rows, cols);
  const double seconds = best_seconds(*this, 5, [&] { copy(a, b); });
  return 2.0 * static_cast<double>(src.bytes()) / seconds;
}

double Backend::measure_matmul_rate(int64_t m, int64_t n, int64_t k) {
  const DType dtype = weight_dtype();
  const size_t element = dtype_size(dtype);
  DeviceBuffer x = allocate(static_cast<size_t>(m * k) * element);
  DeviceBuffer w = allocate(static_cast<size_t>(n * k) * element);
  DeviceBuffer y = allocate(static_cast<size_t>(m * n) * dtype_size(activation_dtype()));
  // Random operands, as in a model's products: a GPU multiplying zeros (what allocate gives)
  // draws less power and can hold a higher clock, so zeros would overstate the peak.
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto fill_random = [&](void* data, int64_t count) {
    std::vector<float> values(static_cast<size_t>(count));
    for (float& v : values) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      v = static_cast<float>(static_cast<int64_t>(state >> 40) - (int64_t{1} << 23)) /
          static_cast<float>(int64_t{1} << 23);  // uniform in [-1, 1)
    }
    upload_weights(data, values.data(), values.size());
  };
  fill_random(x.data(), m * k);
  fill_random(w.data(), n * k);
  Mat xm = Mat::of(x.data(), dtype, m, k);
  Mat wm = Mat::of(w.data(), dtype, n, k);
  Mat ym = Mat::of(y.data(), activation_dtype(), m, n);
  const double seconds = best_seconds(*this, 5, [&] { matmul(xm, wm, ym, true, false); });
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / seconds;
}

}  // namespace dshpc
