// Does programmatic dependent launch shorten a chain of short dependent kernels on this GPU and
// driver, with and without CUDA graphs? Each kernel reads the value the one before wrote, adds
// one and writes it (one CTA per kernel, a few hundred more CTAs of filler so that the grid is
// not trivially small). Prints µs per kernel for the four combinations.
//   nvcc -O2 -arch=sm_90 -o pdl_probe bench/probes/pdl_probe.cu && ./pdl_probe
#include <cuda_runtime.h>

#include <cstdio>

__global__ void step_kernel(const int* in, int* out, bool pdl) {
  if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
  if (pdl) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = *in + 1;
}

static void launch(bool pdl, const int* in, int* out, cudaStream_t stream) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(264);
  config.blockDim = dim3(256);
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  cudaLaunchKernelEx(&config, step_kernel, in, out, pdl);
}

int main() {
  constexpr int kChain = 2000;
  int* buf = nullptr;
  cudaMalloc(&buf, 2 * sizeof(int));
  cudaMemset(buf, 0, 2 * sizeof(int));
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int graph = 0; graph < 2; ++graph) {
    for (int pdl = 0; pdl < 2; ++pdl) {
      auto chain = [&] {
        for (int i = 0; i < kChain; ++i) launch(pdl, buf + (i & 1), buf + ((i + 1) & 1), stream);
      };
      cudaGraphExec_t exec = nullptr;
      if (graph) {
        cudaGraph_t g;
        cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed);
        chain();
        cudaStreamEndCapture(stream, &g);
        cudaGraphInstantiate(&exec, g, 0);
        cudaGraphDestroy(g);
      }
      float best = 1e30f;
      for (int rep = 0; rep < 5; ++rep) {
        cudaEventRecord(start, stream);
        if (graph) {
          cudaGraphLaunch(exec, stream);
        } else {
          chain();
        }
        cudaEventRecord(stop, stream);
        cudaEventSynchronize(stop);
        float ms = 0;
        cudaEventElapsedTime(&ms, start, stop);
        if (ms < best) best = ms;
      }
      int value = 0;
      cudaMemcpy(&value, buf, sizeof(int), cudaMemcpyDeviceToHost);
      std::printf("graph %d pdl %d: %.2f us per kernel (chain value %d, %s)\n", graph, pdl,
                  1000.0f * best / kChain, value, cudaGetErrorString(cudaGetLastError()));
      if (exec) cudaGraphExecDestroy(exec);
    }
  }
  return 0;
}
