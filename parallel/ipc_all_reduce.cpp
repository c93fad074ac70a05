#include "parallel/ipc_all_reduce.h"

#ifdef DSHPC_HAVE_NCCL

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "common/log.h"
#include "parallel/mpi_collectives.h"

namespace dshpc {
namespace {

std::atomic<int64_t> g_launches{0};

// What every rank tells the others before anything is allocated.
struct Hello {
  char host[MPI_MAX_PROCESSOR_NAME];
  int32_t device;
  int32_t enabled;
  uint64_t max_bytes;
};

// What every rank tells the others once its buffer exists.
struct Handle {
  cudaIpcMemHandle_t handle;
  int32_t ok;
};

// All-gather of one POD per rank, bounded by the group's timeout.
template <typename T>
std::vector<T> gather(const T& mine, MPI_Comm comm, double timeout_s, const std::string& group) {
  int size = 0;
  MPI_Comm_size(comm, &size);
  std::vector<T> all(size);
  all_gather_bytes(&mine, all.data(), sizeof(T), comm, timeout_s, group);
  return all;
}

bool all_ok(int32_t mine, MPI_Comm comm, double timeout_s, const std::string& group) {
  for (int32_t ok : gather(mine, comm, timeout_s, group)) {
    if (!ok) return false;
  }
  return true;
}

// DSHPC_IPC_ALL_REDUCE_MAX_BYTES, rounded down to 16 bytes; the default when unset or malformed.
size_t max_bytes_from_env() {
  const char* text = std::getenv("DSHPC_IPC_ALL_REDUCE_MAX_BYTES");
  if (text == nullptr || *text == '\0') return kDefaultIpcAllReduceMaxBytes;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text, &end, 10);
  if (end == text || *end != '\0') return kDefaultIpcAllReduceMaxBytes;
  return static_cast<size_t>(value) / 16 * 16;
}

// Opt-in (DSHPC_IPC_ALL_REDUCE=1) until it has run under every fixture layout on GPUs: see
// docs/performance.md.
bool enabled_by_env() {
  const char* text = std::getenv("DSHPC_IPC_ALL_REDUCE");
  return text != nullptr && std::strcmp(text, "1") == 0;
}

}  // namespace

int64_t ipc_all_reduce_launches() {
  return g_launches.load(std::memory_order_relaxed);
}

std::unique_ptr<IpcAllReduce> IpcAllReduce::create(MPI_Comm comm, const std::string& group,
                                                   int device, double timeout_s,
                                                   std::string* why) {
  why->clear();
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  if (size < 2 || size > cuda::kIpcAllReduceMaxRanks) {
    *why = "group of " + std::to_string(size) + " ranks (the one-shot path takes 2 to " +
           std::to_string(cuda::kIpcAllReduceMaxRanks) + ")";
    return nullptr;
  }

  // Round 1: host, GPU and settings of every rank.
  Hello hello{};
  int name_length = 0;
  MPI_Get_processor_name(hello.host, &name_length);
  hello.device = device;
  hello.enabled = enabled_by_env() ? 1 : 0;
  hello.max_bytes = max_bytes_from_env();
  const std::vector<Hello> hellos = gather(hello, comm, timeout_s, group);
  size_t max_bytes = hello.max_bytes;
  for (const Hello& h : hellos) {
    if (!h.enabled) return nullptr;  // turned off: no reason to log
    max_bytes = std::min<size_t>(max_bytes, h.max_bytes);
  }
  if (max_bytes == 0) return nullptr;
  bool local_ok = true;
  for (int r = 0; r < size && local_ok; ++r) {
    if (r == rank) continue;
    if (std::strncmp(hellos[r].host, hello.host, sizeof(hello.host)) != 0) {
      *why = "group rank " + std::to_string(r) + " is on host " + hellos[r].host + ", not " +
             hello.host;
      local_ok = false;
    } else if (hellos[r].device == device) {
      *why = "group ranks " + std::to_string(rank) + " and " + std::to_string(r) +
             " share GPU " + std::to_string(device);
      local_ok = false;
    } else {
      int can = 0;
      if (cudaDeviceCanAccessPeer(&can, device, hellos[r].device) != cudaSuccess || !can) {
        *why = "GPU " + std::to_string(device) + " has no peer access to GPU " +
               std::to_string(hellos[r].device);
        local_ok = false;
      }
    }
  }

  // Round 2: this rank's buffer, zeroed, and its IPC handle.
  std::unique_ptr<IpcAllReduce> self(new IpcAllReduce);
  self->group_ = group;
  self->device_ = device;
  self->peers_.rank = rank;
  self->peers_.world = size;
  self->peers_.max_bytes = max_bytes;
  self->peers_.timeout_ns = static_cast<unsigned long long>(timeout_s * 1e9);
  Handle mine{};
  const size_t region_bytes = cuda::ipc_all_reduce_region_bytes(max_bytes);
  auto note = [&](const char* call, cudaError_t e) {
    if (e == cudaSuccess) return true;
    if (local_ok) *why = std::string(call) + ": " + cudaGetErrorString(e);
    local_ok = false;
    cudaGetLastError();  // not sticky: clear it so that later calls do not see it
    return false;
  };
  if (local_ok && note("cudaSetDevice", cudaSetDevice(device)) &&
      note("cudaMalloc", cudaMalloc(&self->own_region_, region_bytes)) &&
      note("cudaMemset", cudaMemset(self->own_region_, 0, region_bytes)) &&
      note("cudaMalloc", cudaMalloc(reinterpret_cast<void**>(&self->peers_.epochs),
                                    cuda::kIpcAllReduceBlocks * sizeof(uint32_t))) &&
      note("cudaMemset", cudaMemset(self->peers_.epochs, 0,
                                    cuda::kIpcAllReduceBlocks * sizeof(uint32_t))) &&
      note("cudaHostAlloc", cudaHostAlloc(reinterpret_cast<void**>(&self->fault_host_),
                                          sizeof(cuda::IpcAllReduceFault), cudaHostAllocMapped)) &&
      note("cudaHostGetDevicePointer",
           cudaHostGetDevicePointer(reinterpret_cast<void**>(&self->peers_.fault),
                                    self->fault_host_, 0)) &&
      note("cudaDeviceSynchronize", cudaDeviceSynchronize()) &&
      note("cudaIpcGetMemHandle", cudaIpcGetMemHandle(&mine.handle, self->own_region_))) {
    std::memset(self->fault_host_, 0, sizeof(cuda::IpcAllReduceFault));
  }
  mine.ok = local_ok ? 1 : 0;
  const std::vector<Handle> handles = gather(mine, comm, timeout_s, group);
  bool all_allocated = true;
  for (const Handle& h : handles) all_allocated = all_allocated && h.ok;
  if (!all_allocated) {
    if (why->empty()) *why = "a peer could not set up its buffer (see its log)";
    return nullptr;  // the destructor frees what this rank allocated
  }

  // Round 3: every peer's buffer mapped here.
  self->peers_.regions[rank] = static_cast<char*>(self->own_region_);
  for (int r = 0; r < size && local_ok; ++r) {
    if (r == rank) continue;
    void* mapped = nullptr;
    if (note("cudaIpcOpenMemHandle",
             cudaIpcOpenMemHandle(&mapped, handles[r].handle, cudaIpcMemLazyEnablePeerAccess))) {
      self->peers_.regions[r] = static_cast<char*>(mapped);
      self->opened_[r] = true;
    }
  }
  if (!all_ok(local_ok ? 1 : 0, comm, timeout_s, group)) {
    if (why->empty()) *why = "a peer could not map this rank's buffer (see its log)";
    return nullptr;
  }
  return self;
}

IpcAllReduce::~IpcAllReduce() {
  if (device_ >= 0) cudaSetDevice(device_);
  for (int r = 0; r < cuda::kIpcAllReduceMaxRanks; ++r) {
    if (opened_[r]) cudaIpcCloseMemHandle(peers_.regions[r]);
  }
  if (own_region_ != nullptr) cudaFree(own_region_);
  if (peers_.epochs != nullptr) cudaFree(peers_.epochs);
  if (fault_host_ != nullptr) cudaFreeHost(fault_host_);
}

bool IpcAllReduce::supports(size_t bytes, DType dtype) const {
  return cuda::ipc_all_reduce_supports(peers_, bytes, dtype);
}

void IpcAllReduce::all_reduce(void* data, size_t count, DType dtype, cudaStream_t stream) {
  cuda::launch_ipc_all_reduce(peers_, data, count, dtype, stream);
  g_launches.fetch_add(1, std::memory_order_relaxed);
}

void IpcAllReduce::poll() const {
  const volatile cuda::IpcAllReduceFault* fault = fault_host_;
  if (fault == nullptr || fault->missing_peer_plus_one == 0) return;
  DSHPC_FATAL() << "one-shot all-reduce in group '" << group_ << "' (group rank " << peers_.rank
                << " of " << peers_.world << ", device " << device_ << "): CTA " << fault->block
                << " waited more than " << peers_.timeout_ns / 1e9 << " s for group rank "
                << fault->missing_peer_plus_one - 1
                << " (DSHPC_COLLECTIVE_TIMEOUT_S sets the timeout); a peer is stuck or dead";
}

}  // namespace dshpc

#endif  // DSHPC_HAVE_NCCL
