// SwiGLU on the CPU: out = silu(gate) · up with silu(g) = g / (1 + exp(−g)), in float32 as
// torch.nn.functional.silu computes it. For g → −∞, exp(−g) overflows to +inf and silu → −0,
// which is the correct limit, so no clamping is needed.
#include <cmath>

#include "kernels/swiglu.h"

namespace dshpc {

void swiglu_cpu(const float* gate_up, float* out, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * 2 * dim;  // [gate | up] per row
    const float* up = gate + dim;
    float* o = out + r * dim;
    for (int64_t i = 0; i < dim; ++i) {
      const float g = gate[i];
      o[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  }
}

}  // namespace dshpc
