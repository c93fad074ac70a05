// Waits on the GPU that never block blindly: poll cudaStreamQuery / cudaEventQuery, spinning
// briefly (decode steps complete in milliseconds), then yielding, then sleeping; on each round the
// AsyncWatch's watchers check their communicators. Past the timeout the watchers abort and the job
// stops with a message naming what was awaited.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/async_watch.h"

namespace dshpc::cuda {

// DSHPC_COLLECTIVE_TIMEOUT_S when set (the same limit as the collectives), else 300 s.
double gpu_wait_timeout_s();

void wait_stream(cudaStream_t stream, AsyncWatch* watch, double timeout_s, const char* what);
void wait_event(cudaEvent_t event, AsyncWatch* watch, double timeout_s, const char* what);

}  // namespace dshpc::cuda
