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

#define CHECK(x)                                                                     \
  do {                                                                               \
    cudaError_t e = (x);                                                             \
    if (e != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)
#define CHECK_BLAS(x)                                                           \
  do {                                                                          \
    int st = static_cast<int>(x);                                               \
    if (st != 0) {                                                              \
      std::fprintf(stderr, "%s:%d cublas status %d\n", __FILE__, __LINE__, st); \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

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
  CHECK(cudaMalloc(&workspace, kWorkspace));
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  cublasHandle_t blas;
  CHECK_BLAS(cublasCreate(&blas));
  CHECK_BLAS(cublasSetStream(blas, stream));
  CHECK_BLAS(cublasSetWorkspace(blas, workspace, kWorkspace));
  cublasLtHandle_t lt;
  CHECK_BLAS(cublasLtCreate(&lt));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (const Shape& s : shapes) {
    const size_t w_bytes = size_t{2} * s.n * s.k;
    const int copies = static_cast<int>(std::max<size_t>(2, (size_t{400} << 20) / w_bytes + 1));
    std::vector<void*> w(copies);
    for (auto& p : w) {
      CHECK(cudaMalloc(&p, w_bytes));
      CHECK(cudaMemset(p, 0x3c, w_bytes));
    }
    void *x, *y;
    CHECK(cudaMalloc(&x, size_t{2} * s.m * s.k));
    CHECK(cudaMemset(x, 0x3c, size_t{2} * s.m * s.k));
    CHECK(cudaMalloc(&y, size_t{2} * s.m * s.n));
    const float alpha = 1.0f, beta = 0.0f;
    constexpr int kReps = 40;
    // Mean µs of one product over kReps launches, each on the next copy of the weights.
    auto time = [&](auto&& launch) {
      for (int i = 0; i < 3; ++i) launch(w[i % copies]);
      CHECK(cudaEventRecord(a, stream));
      for (int i = 0; i < kReps; ++i) launch(w[i % copies]);
      CHECK(cudaEventRecord(b, stream));
      CHECK(cudaEventSynchronize(b));
      float ms = 0.0f;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      return 1e3 * ms / kReps;
    };
    const double def = time([&](void* wp) {
      CHECK_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.n, s.m, s.k, &alpha, wp,
                              CUDA_R_16BF, s.k, x, CUDA_R_16BF, s.k, &beta, y, CUDA_R_16BF, s.n,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    });
    cublasLtMatmulDesc_t desc;
    CHECK_BLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtMatrixLayout_t la, lb, lc;
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.k, s.n, s.k));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.k, s.m, s.k));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, s.n, s.m, s.n));
    cublasLtMatmulPreference_t pref;
    CHECK_BLAS(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = kWorkspace;
    CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws, sizeof ws));
    std::vector<cublasLtMatmulHeuristicResult_t> results(64);
    int found = 0;
    CHECK_BLAS(cublasLtMatmulAlgoGetHeuristic(
        lt, desc, la, lb, lc, lc, pref, static_cast<int>(results.size()), results.data(), &found));
    struct Timed {
      double us;
      int index;
    };
    std::vector<Timed> timed;
    for (int i = 0; i < found; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      const double us = time([&](void* wp) {
        CHECK_BLAS(cublasLtMatmul(lt, desc, &alpha, wp, la, x, lb, &beta, y, lc, y, lc,
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
    for (auto p : w) CHECK(cudaFree(p));
    CHECK(cudaFree(x));
    CHECK(cudaFree(y));
  }
  return 0;
}
