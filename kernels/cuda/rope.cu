// Rotary position embedding in place (CPU reference: kernels/rope_cpu.cpp). The cos / sin tables
// [positions, rot_dim / 2] are computed on the host by rope_tables (linear, YaRN and the
// attention factor included) and uploaded once; one thread rotates one pair of one head.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/pdl.h"

namespace dshpc::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void rope_kernel(T* x, int64_t tokens, int64_t heads, int64_t token_stride,
                            int64_t head_stride, int64_t half, const int32_t* positions,
                            const float* cos_table, const float* sin_table, bool interleaved) {
  pdl_begin();
  const int64_t total = tokens * heads * half;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = i % half;
    const int64_t h = (i / half) % heads;
    const int64_t t = i / (half * heads);
    const int64_t table_index = static_cast<int64_t>(positions[t]) * half + pair;
    const float cos_v = cos_table[table_index], sin_v = sin_table[table_index];
    T* head = x + t * token_stride + h * head_stride;
    // Half-split pairs (head[i], head[i + d/2]) as Llama's rotate_half; interleaved pairs
    // (head[2i], head[2i+1]) as DeepSeek's complex rotation.
    T* pa = interleaved ? head + 2 * pair : head + pair;
    T* pb = interleaved ? head + 2 * pair + 1 : head + pair + half;
    const float a = to_float(*pa), b = to_float(*pb);
    *pa = from_float<T>(a * cos_v - b * sin_v);
    *pb = from_float<T>(b * cos_v + a * sin_v);
  }
}

}  // namespace

void launch_rope(const Mat& x, int64_t heads, int64_t head_stride, int64_t rot_dim,
                 const int32_t* positions, const RopeTables& tables, RopeStyle style,
                 cudaStream_t stream) {
  const int64_t half = rot_dim / 2;
  const int64_t total = x.rows * heads * half;
  if (total == 0) return;
  dispatch_float(x.dtype, "rope", [&](auto tag) {
    using T = decltype(tag);
    launch_pdl("rope_kernel", rope_kernel<T>, grid_for(total, kThreads), kThreads, 0, stream,
               static_cast<T*>(x.data), x.rows, heads, x.stride, head_stride, half, positions,
               tables.cos, tables.sin, style == RopeStyle::kInterleaved);
    DSHPC_CUDA_LAUNCH_CHECK("rope_kernel");
  });
}

}  // namespace dshpc::cuda
