// Vocabulary-parallel embedding lookup (CPU reference: kernels/embedding_cpu.cpp). One CTA per
// token; ids outside this rank's slice give zero rows, completed by the tp all-reduce.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

template <typename TTable, typename TOut>
__global__ void embedding_kernel(const TTable* table, int64_t vocab_begin, int64_t vocab_rows,
                                 int64_t dim, const int32_t* ids, TOut* out, int64_t out_stride) {
  pdl_begin();
  const int64_t t = blockIdx.x;
  const int64_t local = static_cast<int64_t>(ids[t]) - vocab_begin;
  TOut* row = out + t * out_stride;
  if (local >= 0 && local < vocab_rows) {
    const TTable* src = table + local * dim;
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
      row[c] = from_float<TOut>(to_float(src[c]));
    }
  } else {
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) row[c] = from_float<TOut>(0.0f);
  }
}

}  // namespace

void launch_embedding(const Mat& table, int64_t vocab_begin, const int32_t* ids, const Mat& out,
                      cudaStream_t stream) {
  if (out.rows == 0 || out.cols == 0) return;
  DSHPC_CHECK_LE(out.rows, int64_t{0x7fffffff}) << "embedding: tokens exceed gridDim.x";
  dispatch_float(table.dtype, "embedding", [&](auto table_tag) {
    using TTable = decltype(table_tag);
    dispatch_float(out.dtype, "embedding", [&](auto out_tag) {
      using TOut = decltype(out_tag);
      launch_pdl("embedding_kernel", embedding_kernel<TTable, TOut>,
                 static_cast<unsigned int>(out.rows), kThreads, 0, stream,
                 static_cast<const TTable*>(table.data), vocab_begin, table.rows, table.cols, ids,
                 static_cast<TOut*>(out.data), out.stride);
      DSHPC_CUDA_LAUNCH_CHECK("embedding_kernel");
    });
  });
}

}  // namespace dshpc::cuda
