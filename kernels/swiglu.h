// SwiGLU: out = silu(gate) · up.
#pragma once

#include <cstdint>

namespace dshpc {

// gate_up[rows, 2 · dim] holds gate in its first `dim` columns and up in the last `dim`.
// out[rows, dim] (contiguous).
void swiglu_cpu(const float* gate_up, float* out, int64_t rows, int64_t dim);

}  // namespace dshpc
