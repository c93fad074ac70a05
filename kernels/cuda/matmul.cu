// Dense matrix products through cuBLAS (CPU reference: cblas_sgemm in kernels/cpu_backend.cpp).
//
// Our matrices are row-major views (rows, cols, stride); cuBLAS is column-major. A row-major
// [r, c] matrix with stride s is the column-major [c, r] matrix with leading dimension s, i.e.
// its transpose. So y[m, n] = x[m, k] · op(w) is computed as the column-major product
//   yᵀ[n, m] = op'(w) · xᵀ[k, m]
// with A = w: for w [n, k] (PyTorch Linear layout, w_transposed) A is column-major [k, n] and
// op' = T; for w [k, n] (untransposed) A is column-major [n, k] and op' = N. B = x, never
// transposed; C = y. Strided column slices work through the leading dimensions.
//
// Accumulation is float32 (CUBLAS_COMPUTE_32F, never TF32: the float32 mode is the parity mode),
// with bf16 or float32 inputs and a bf16 or float32 output.
#include <climits>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launchers.h"

namespace dshpc::cuda {
namespace {

cudaDataType_t cuda_type(DType dtype, const char* which) {
  switch (dtype) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kBF16:
      return CUDA_R_16BF;
    default:
      DSHPC_FATAL() << "matmul: " << which << " has unsupported element type " << dtype_name(dtype);
  }
  return CUDA_R_32F;
}

int as_int(int64_t v, const char* what) {
  DSHPC_CHECK(v >= 0 && v <= INT_MAX)
      << "matmul: " << what << " " << v << " exceeds cuBLAS's int range";
  return static_cast<int>(v);
}

}  // namespace

void gemm(cublasHandle_t handle, const Mat& x, const Mat& w, const Mat& y, bool w_transposed,
          bool accumulate) {
  const int64_t m = x.rows, k = x.cols;
  const int64_t n = w_transposed ? w.rows : w.cols;
  if (m == 0 || n == 0) return;
  DSHPC_CHECK(x.dtype == w.dtype) << "matmul: x is " << dtype_name(x.dtype) << " but w is "
                                  << dtype_name(w.dtype);
  DSHPC_CHECK(y.dtype == x.dtype || y.dtype == DType::kF32)
      << "matmul: output " << dtype_name(y.dtype) << " for " << dtype_name(x.dtype) << " inputs";
  const float alpha = 1.0f;
  const float beta = accumulate ? 1.0f : 0.0f;
  // Leading dimensions must be ≥ 1 even for a degenerate k = 0 (then C = beta · C).
  const int lda = as_int(w.stride > 0 ? w.stride : 1, "w stride");
  const int ldb = as_int(x.stride > 0 ? x.stride : 1, "x stride");
  const int ldc = as_int(y.stride, "y stride");
  DSHPC_CUBLAS_CHECK(cublasGemmEx(
      handle, w_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, as_int(n, "n"), as_int(m, "m"),
      as_int(k, "k"), &alpha, w.data, cuda_type(w.dtype, "w"), lda, x.data, cuda_type(x.dtype, "x"),
      ldb, &beta, y.data, cuda_type(y.dtype, "y"), ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm_heads(cublasHandle_t handle, const Mat& x, const Mat& w, const Mat& y, int64_t heads,
                int64_t x_offset, int64_t w_offset, int64_t y_offset, bool w_transposed) {
  const int64_t m = x.rows, k = x.cols;
  const int64_t n = w_transposed ? w.rows : w.cols;
  if (m == 0 || n == 0 || heads == 0) return;
  DSHPC_CHECK(x.dtype == w.dtype && y.dtype == x.dtype && k > 0)
      << "matmul_heads: x " << dtype_name(x.dtype) << ", w " << dtype_name(w.dtype) << ", y "
      << dtype_name(y.dtype) << ", k " << k;
  const float alpha = 1.0f, beta = 0.0f;
  DSHPC_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, w_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, as_int(n, "n"), as_int(m, "m"),
      as_int(k, "k"), &alpha, w.data, cuda_type(w.dtype, "w"), as_int(w.stride, "w stride"),
      w_offset, x.data, cuda_type(x.dtype, "x"), as_int(x.stride, "x stride"), x_offset, &beta,
      y.data, cuda_type(y.dtype, "y"), as_int(y.stride, "y stride"), y_offset,
      as_int(heads, "heads"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

bool gemm_grouped(cublasHandle_t handle, DType dtype, int count, const int* rows, int64_t n,
                  int64_t k, const void* const* w, int64_t w_stride, const void* const* x,
                  int64_t x_stride, void* const* y, int64_t y_stride) {
  if (count == 0) return true;
#if CUBLAS_VERSION >= 120500  // cublasGemmGroupedBatchedEx came with cuBLAS 12.5
  // One group per problem (their row counts differ); column-major as in gemm: C[n, rows] =
  // op(W)[n, k] · X[k, rows].
  const std::vector<cublasOperation_t> trans_w(count, CUBLAS_OP_T), trans_x(count, CUBLAS_OP_N);
  const std::vector<int> m_array(count, as_int(n, "n")), k_array(count, as_int(k, "k"));
  const std::vector<int> lda(count, as_int(w_stride, "w stride")),
      ldb(count, as_int(x_stride, "x stride")), ldc(count, as_int(y_stride, "y stride"));
  const std::vector<int> sizes(count, 1);
  const std::vector<float> alpha(count, 1.0f), beta(count, 0.0f);
  const cudaDataType_t type = cuda_type(dtype, "grouped product");
  const cublasStatus_t status = cublasGemmGroupedBatchedEx(
      handle, trans_w.data(), trans_x.data(), m_array.data(), rows, k_array.data(), alpha.data(), w,
      type, lda.data(), x, type, ldb.data(), beta.data(), y, type, ldc.data(), count, sizes.data(),
      CUBLAS_COMPUTE_32F);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return false;
  DSHPC_CUBLAS_CHECK(status);
  return true;
#else
  return false;
#endif
}

}  // namespace dshpc::cuda
