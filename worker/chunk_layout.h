// How an HDF5 checkpoint chunks each tensor, and what a read of a slice costs. Pure arithmetic,
// no HDF5: the converter and the reader share it and tests check it on its own.
//
// The split dimension of a tensor (the split table, worker/model.h) is cut into n equal parts,
// n the largest divisor of the tensor's units (heads, channels, vocabulary entries) up to
// kMaxSplitChunks. For any tp that divides n, each rank's slice is then a whole number of chunks:
// a rank reads exactly its bytes and every chunk (and its Fletcher32 checksum) is read by one rank
// of the group. Chunks are then made smaller along dim 0 until they hold at most
// kTargetChunkBytes; along the split dimension only by a divisor, so that alignment survives.
// Replicated tensors and routed experts (read whole, by one or every rank) are cut along dim 0
// only. With 16 parts, tp 1, 2, 4, 8 and 16 read aligned slices of every DeepSeek tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "worker/model.h"

namespace dshpc {

inline constexpr int64_t kTargetChunkBytes = int64_t{4} << 20;
inline constexpr int64_t kMaxSplitChunks = 16;

// The chunk shape of a tensor, or empty when it has no elements (stored contiguous: there is
// nothing to chunk or checksum). `units` is the split table's (ignored for kReplicated/kExpert).
std::vector<int64_t> choose_chunk_shape(const std::vector<int64_t>& shape, TensorSplit split,
                                        int64_t units, size_t element_bytes);

// Bytes of the whole chunks that a box [start, start + count) of a chunked tensor touches (edge
// chunks count with their real extent): what HDF5 reads from the file to serve that read, since
// a chunk is read and its checksum verified whole.
int64_t chunk_bytes_touched(const std::vector<int64_t>& shape, const std::vector<int64_t>& chunk,
                            const std::vector<int64_t>& start, const std::vector<int64_t>& count,
                            size_t element_bytes);

}  // namespace dshpc
