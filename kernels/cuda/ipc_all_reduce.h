// One-shot all-reduce over CUDA IPC for the small messages of decode steps (a tensor-parallel
// group on one node, GPUs connected by NVLink or PCIe peer access).
//
// NCCL's all-reduce of a few kilobytes costs tens of microseconds, mostly protocol latency; a
// decode step of a 7B model at tp 2 issues 64 of them. Here every rank of the group maps every
// other rank's staging buffer into its own address space once (cudaIpcGetMemHandle /
// cudaIpcOpenMemHandle, the handles exchanged over MPI by parallel/ipc_all_reduce.cpp), and one
// kernel does the whole operation:
//   1. each CTA copies its share of the local input into this rank's staging buffer;
//   2. it tells the same CTA on every peer that its share is there (a flag written with release
//      semantics into the peer's memory) and waits for their flags;
//   3. it reads its share from every rank's buffer, sums in float in rank order (so that every
//      rank computes bit-identical results) and writes the sum in place.
// Flags carry a per-CTA epoch kept in device memory and advanced by the kernel itself, so a
// captured CUDA graph replays correctly. The staging buffer has two halves, used by alternate
// epochs: a rank that races ahead into the next call writes the other half, and cannot come back
// to this one before every peer has passed the next call's flags, i.e. finished reading.
// The grid is fixed (kIpcAllReduceBlocks CTAs, each always present), so CTA b of every rank
// covers the same 16-byte chunks in every call.
//
// No wait is unbounded: a CTA that does not see its peers' flags within the timeout records the
// peer in host-mapped memory (read by the host's watch, which stops the job with that message)
// and traps.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

namespace dshpc::cuda {

inline constexpr int kIpcAllReduceMaxRanks = 8;
inline constexpr int kIpcAllReduceBlocks = 32;
inline constexpr int kIpcAllReduceThreads = 512;

// The flags region at the start of every rank's IPC allocation: [CTA][sender rank].
inline constexpr size_t kIpcAllReduceFlagBytes =
    256 * ((kIpcAllReduceBlocks * kIpcAllReduceMaxRanks * sizeof(uint32_t) + 255) / 256);

// Bytes of one rank's IPC allocation for messages up to `max_bytes` (a multiple of 16).
inline size_t ipc_all_reduce_region_bytes(size_t max_bytes) {
  return kIpcAllReduceFlagBytes + 2 * max_bytes;
}

// What a rank reports when a wait runs out: peer + 1 (0 while all is well).
struct IpcAllReduceFault {
  int32_t missing_peer_plus_one;
  int32_t block;
};

// The group as one rank sees it: every rank's IPC allocation mapped here, this rank's epochs.
struct IpcAllReducePeers {
  char* regions[kIpcAllReduceMaxRanks] = {};  // flags, then the two halves of the staging buffer
  uint32_t* epochs = nullptr;                 // this rank's, kIpcAllReduceBlocks, zeroed at start
  IpcAllReduceFault* fault = nullptr;         // host-mapped, written on a timeout
  int rank = 0;
  int world = 1;
  size_t max_bytes = 0;  // size of one half
  unsigned long long timeout_ns = 0;
};

// True when the kernel handles a message of `bytes` in `dtype` (a sum it knows, a multiple of 16
// bytes, at most max_bytes). Depends only on what every rank of the group passes alike.
bool ipc_all_reduce_supports(const IpcAllReducePeers& peers, size_t bytes, DType dtype);

// data[0, count) ← Σ over ranks, in place, on `stream`. Every rank of the group must call it
// with the same count and dtype, in the same order relative to the group's other collectives.
void launch_ipc_all_reduce(const IpcAllReducePeers& peers, void* data, size_t count, DType dtype,
                           cudaStream_t stream);

}  // namespace dshpc::cuda
