// Which cuBLAS / cuBLASLt algorithm streams a decode step's weights fastest? For the products of
// a model's layer at a few batch sizes (y[m, n] = x[m, k] · wᵀ, bf16, float32 accumulation, as
// kernels/cuda/matmul.cu calls them), times cublasGemmEx with the default algorithm and every
// algorithm cublasLtMatmulAlgoGetHeuristic offers, with the weights rotated over copies that
// together exceed L2, and prints µs and weight GB/s of the default and of the best few.
//   dshpc_gemm_probe                     (DeepSeek-LLM-7B's four products at m 1, 16, 64, 256)
//   dshpc_gemm_probe m n k [m n k ...]
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/cuda/cuda_check.h"

struct Shape {
  int m, n, k;
};

int main(int argc, char** argv) {
  std::vector<Shape> shapes;
  if (argc > 3) {
    for (int i = 1; i + 2 < argc; i += 3) {
      shapes.push_back({std::atoi(argv[i]), std::atoi(argv[i + 1]), std::atoi(argv[i + 2])});
    }
  } else {
    for (int m : {1, 16, 64, 256}) {
      for (Shape s : {Shape{m, 12288, 4096}, Shape{m, 4096, 4096}, Shape{m, 22016, 4096},
                      Shape{m, 4096, 11008}}) {
        shapes.push_back(s);
      }
    }
  }
  constexpr size_t kWorkspace = size_t{32} << 20;
  void* workspace;
  DSHPC_CUDA_CHECK(cudaMalloc(&workspace, kWorkspace));
  cudaStream_t stream;
  DSHPC_CUDA_CHECK(cudaStreamCreate(&stream));
  cublasHandle_t blas;
  DSHPC_CUBLAS_CHECK(cublasCreate(&blas));
  DSHPC_CUBLAS_CHECK(cublasSetStream(blas, stream));
  DSHPC_CUBLAS_CHECK(cublasSetWorkspace(blas, workspace, kWorkspace));
  cublasLtHandle_t lt;
  DSHPC_CUBLAS_CHECK(cublasLtCreate(&lt));
  cudaEvent_t a, b;
  DSHPC_CUDA_CHECK(cudaEventCreate(&a));
  DSHPC_CUDA_CHECK(cudaEventCreate(&b));
  for (const Shape& s : shapes) {
    const size_t w_bytes = size_t{2} * s.n * s.k;
    const int copies = static_cast<int>(std::max<size_t>(2, (size_t{400} << 20) / w_bytes + 1));
    std::vector<void*> w(copies);
    for (auto& p : w) {
      DSHPC_CUDA_CHECK(cudaMalloc(&p, w_bytes));
      DSHPC_CUDA_CHECK(cudaMemset(p, 0x3c, w_bytes));
    }
    void *x, *y;
    DSHPC_CUDA_CHECK(cudaMalloc(&x, size_t{2} * s.m * s.k));
    DSHPC_CUDA_CHECK(cudaMemset(x, 0x3c, size_t{2} * s.m * s.k));
    DSHPC_CUDA_CHECK(cudaMalloc(&y, size_t{2} * s.m * s.n));
    const float alpha = 1.0f, beta = 0.0f;
    constexpr int kReps = 40;
    // Mean µs of one product over kReps launches, each on the next copy of the weights.
    auto time = [&](auto&& launch) {
      for (int i = 0; i < 3; ++i) launch(w[i % copies]);
      DSHPC_CUDA_CHECK(cudaEventRecord(a, stream));
      for (int i = 0; i < kReps; ++i) launch(w[i % copies]);
      DSHPC_CUDA_CHECK(cudaEventRecord(b, stream));
      DSHPC_CUDA_CHECK(cudaEventSynchronize(b));
      float ms = 0.0f;
      DSHPC_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      return 1e3 * ms / kReps;
    };
    const double def = time([&](void* wp) {
      DSHPC_CUBLAS_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.n, s.m, s.k, &alpha, wp,
                                      CUDA_R_16BF, s.k, x, CUDA_R_16BF, s.k, &beta, y, CUDA_R_16BF,
                                      s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    });
    cublasLtMatmulDesc_t desc;
    DSHPC_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    DSHPC_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    DSHPC_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtMatrixLayout_t la, lb, lc;
    DSHPC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.k, s.n, s.k));
    DSHPC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.k, s.m, s.k));
    DSHPC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, s.n, s.m, s.n));
    cublasLtMatmulPreference_t pref;
    DSHPC_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = kWorkspace;
    DSHPC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    std::vector<cublasLtMatmulHeuristicResult_t> results(64);
    int found = 0;
    DSHPC_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(
        lt, desc, la, lb, lc, lc, pref, static_cast<int>(results.size()), results.data(), &found));
    struct Timed {
      double us;
      int index;
    };
    std::vector<Timed> timed;
    for (int i = 0; i < found; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      const double us = time([&](void* wp) {
        DSHPC_CUBLAS_CHECK(cublasLtMatmul(lt, desc, &alpha, wp, la, x, lb, &beta, y, lc, y, lc,
                                          &results[i].algo, workspace, kWorkspace, stream));
      });
      timed.push_back({us, i});
    }
    std::sort(timed.begin(), timed.end(),
              [](const Timed& l, const Timed& r) { return l.us < r.us; });
    const double gb = w_bytes / 1e3;
    std::printf("m %4d n %5d k %5d (%6.1f MB): GemmEx default %7.2f us %5.0f GB/s | Lt %d algos:",
                s.m, s.n, s.k, w_bytes / 1e6, def, gb / def, found);
    for (size_t i = 0; i < timed.size() && i < 3; ++i) {
      const auto& r = results[timed[i].index];
      int tile = 0, splitk = 0, stages = 0, cluster = 0;
      size_t written = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile,
                                           sizeof tile, &written);
      cublasLtMatmulAlgoConfigGetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk,
                                           sizeof splitk, &written);
      cublasLtMatmulAlgoConfigGetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages,
                                           sizeof stages, &written);
      cublasLtMatmulAlgoConfigGetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster,
                                           sizeof cluster, &written);
      std::printf(" #%d %7.2f us %5.0f GB/s (tile %d splitk %d stages %d cluster %d)",
                  timed[i].index, timed[i].us, gb / timed[i].us, tile, splitk, stages, cluster);
    }
    std::printf("\n");
    std::fflush(stdout);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
    for (auto p : w) DSHPC_CUDA_CHECK(cudaFree(p));
    DSHPC_CUDA_CHECK(cudaFree(x));
    DSHPC_CUDA_CHECK(cudaFree(y));
  }
  return 0;
}
