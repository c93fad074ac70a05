// Checks around every CUDA runtime and cuBLAS call: a failure prints the call text, the error
// name and string, host, rank and device (process_identity) and file:line, then stops the job
// (MPI_Abort once MPI is up). Kernel launches are checked with DSHPC_CUDA_LAUNCH_CHECK right after
// the <<<>>> so that a bad grid or too much shared memory names the kernel, not a later call.
#pragma once

#include <cublas_api.h>
#include <cuda_runtime.h>

#include "common/check.h"

namespace dshpc::cuda {

const char* cublas_status_text(cublasStatus_t status);

}  // namespace dshpc::cuda

#define DSHPC_CUDA_CHECK(call)                                                    \
  do {                                                                            \
    const cudaError_t dshpc_cuda_error_ = (call);                                 \
    if (dshpc_cuda_error_ != cudaSuccess) {                                       \
      ::dshpc::FatalMessage(__FILE__, __LINE__, "CUDA call failed:").stream()     \
          << #call << " returned " << cudaGetErrorName(dshpc_cuda_error_) << " (" \
          << cudaGetErrorString(dshpc_cuda_error_) << ")";                        \
    }                                                                             \
  } while (0)

#define DSHPC_CUBLAS_CHECK(call)                                                               \
  do {                                                                                         \
    const cublasStatus_t dshpc_cublas_status_ = (call);                                        \
    if (dshpc_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                       \
      ::dshpc::FatalMessage(__FILE__, __LINE__, "cuBLAS call failed:").stream()                \
          << #call << " returned " << ::dshpc::cuda::cublas_status_text(dshpc_cublas_status_); \
    }                                                                                          \
  } while (0)

// After a kernel launch: launch-configuration errors (grid, block, shared memory) are reported
// synchronously by cudaGetLastError; faults inside the kernel surface at the next checked call.
#define DSHPC_CUDA_LAUNCH_CHECK(kernel_name)                                           \
  do {                                                                                 \
    const cudaError_t dshpc_launch_error_ = cudaGetLastError();                        \
    if (dshpc_launch_error_ != cudaSuccess) {                                          \
      ::dshpc::FatalMessage(__FILE__, __LINE__, "CUDA kernel launch failed:").stream() \
          << kernel_name << ": " << cudaGetErrorName(dshpc_launch_error_) << " ("      \
          << cudaGetErrorString(dshpc_launch_error_) << ")";                           \
    }                                                                                  \
  } while (0)
