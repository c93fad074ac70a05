#include <chrono>
#include <cstdlib>
#include <thread>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/stream_wait.h"

namespace dshpc::cuda {
namespace {

using Clock = std::chrono::steady_clock;

// Spin for the first 2 ms (a decode step's tail), yield until 50 ms, then sleep 100 µs per round:
// at most 0.1 ms of added latency once a wait is already long.
constexpr double kSpinS = 0.002;
constexpr double kYieldS = 0.05;
constexpr auto kSleep = std::chrono::microseconds(100);
constexpr int kPollsPerWatch = 64;  // watcher checks (ncclCommGetAsyncError) every 64 queries

template <typename Query>
void wait_until_done(Query query, AsyncWatch* watch, double timeout_s, const char* what) {
  const auto started = Clock::now();
  for (int64_t round = 0;; ++round) {
    const cudaError_t state = query();
    if (state == cudaSuccess) return;
    if (state != cudaErrorNotReady) {
      // A fault inside a kernel (illegal address, device assert) lands here with its name.
      DSHPC_FATAL() << "CUDA error while waiting for " << what << ": " << cudaGetErrorName(state)
                    << " (" << cudaGetErrorString(state) << ")";
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
    if (round % kPollsPerWatch == 0 && watch != nullptr) watch->poll_all();
    if (elapsed > timeout_s) {
      const std::string watched = watch != nullptr ? watch->names() : "none";
      if (watch != nullptr) watch->abort_all();
      DSHPC_FATAL() << "GPU work did not finish: " << what << " still pending after " << elapsed
                    << " s (timeout " << timeout_s
                    << " s; DSHPC_COLLECTIVE_TIMEOUT_S sets it); communicators watched: " << watched
                    << "; a peer is stuck, dead, or took a different code path";
    }
    if (elapsed < kSpinS) continue;
    if (elapsed < kYieldS) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(kSleep);
    }
  }
}

}  // namespace

double gpu_wait_timeout_s() {
  if (const char* env = std::getenv("DSHPC_COLLECTIVE_TIMEOUT_S")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && *end == '\0' && v > 0) return v;
  }
  return 300.0;
}

void wait_stream(cudaStream_t stream, AsyncWatch* watch, double timeout_s, const char* what) {
  wait_until_done([stream] { return cudaStreamQuery(stream); }, watch, timeout_s, what);
}

void wait_event(cudaEvent_t event, AsyncWatch* watch, double timeout_s, const char* what) {
  wait_until_done([event] { return cudaEventQuery(event); }, watch, timeout_s, what);
}

const char* cublas_status_text(cublasStatus_t status) {
  // cublasGetStatusString gives "CUBLAS_STATUS_...: description" text since CUDA 11.4.
  return cublasGetStatusString(status);
}

}  // namespace dshpc::cuda
