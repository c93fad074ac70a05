// The kernel trace's collector (kernel_trace.h): CUPTI's concurrent-kernel activity records,
// delivered in host buffers that CUPTI asks for and hands back (on its own thread or in a
// flush), kept here until a window is collected. Built only when CUPTI was found.
#include <cuda_runtime.h>
#include <cupti.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/kernel_trace.h"

namespace dshpc {
namespace {

constexpr size_t kBufferBytes = size_t{8} << 20;

struct Store {
  std::mutex mu;
  std::vector<KernelRecord> records;
  std::unordered_map<const char*, std::string> names;  // CUPTI's name pointers, copied once
  size_t dropped = 0;
  bool on = false;
};

Store& store() {
  static Store* s = new Store;  // CUPTI's thread may deliver buffers at exit
  return *s;
}

std::string cupti_error(const char* what, CUptiResult r) {
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  return std::string("kernel trace: ") + what + ": " + (text != nullptr ? text : "CUPTI error");
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer != nullptr ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext context, uint32_t stream, uint8_t* buffer, size_t,
                               size_t valid) {
  Store& s = store();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    CUpti_Activity* record = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
      if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
      // The record type of this CUPTI version's concurrent-kernel kind.
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      KernelRecord r;
      auto [it, added] = s.names.try_emplace(k->name);
      if (added) it->second = k->name != nullptr ? k->name : "?";
      r.name = it->second;
      r.start_ns = k->start;
      r.end_ns = k->end;
      r.device = k->deviceId;
      r.stream = k->streamId;
      r.ctas = static_cast<int64_t>(k->gridX) * k->gridY * k->gridZ;
      r.threads = k->blockX * k->blockY * k->blockZ;
      s.records.push_back(std::move(r));
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(context, stream, &dropped) == CUPTI_SUCCESS) {
      s.dropped += dropped;
    }
  }
  std::free(buffer);
}

}  // namespace

bool kernel_trace_built() {
  return true;
}

Status kernel_trace_start() {
  Store& s = store();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.on) return ok_status();
  CUptiResult r = cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
  if (r != CUPTI_SUCCESS) return unavailable(cupti_error("registering buffers", r));
  r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  if (r != CUPTI_SUCCESS) return unavailable(cupti_error("enabling kernel records", r));
  s.on = true;
  s.records.clear();
  s.dropped = 0;
  return ok_status();
}

uint64_t kernel_trace_now() {
  uint64_t t = 0;
  cuptiGetTimestamp(&t);
  return t;
}

namespace {

// Waits for the device, then has CUPTI hand over every record it holds (buffer_completed).
Status settle() {
  const cudaError_t synced = cudaDeviceSynchronize();
  if (synced != cudaSuccess) {
    return internal_error(std::string("kernel trace: cudaDeviceSynchronize: ") +
                          cudaGetErrorString(synced));
  }
  const CUptiResult r = cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  if (r != CUPTI_SUCCESS) return internal_error(cupti_error("flushing", r));
  return ok_status();
}

}  // namespace

uint64_t kernel_trace_begin() {
  Store& s = store();
  (void)settle();  // a failure here shows again in kernel_trace_collect
  std::lock_guard<std::mutex> lock(s.mu);
  s.records.clear();
  s.dropped = 0;
  return kernel_trace_now();
}

StatusOr<KernelTrace> kernel_trace_collect(uint64_t begin_ns) {
  Store& s = store();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.on) return unavailable("kernel trace: not started (kernel_trace_start)");
  }
  if (Status settled = settle(); !settled.ok()) return settled;
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.dropped > 0) {
    const size_t dropped = s.dropped;
    s.dropped = 0;
    s.records.clear();
    return resource_exhausted("kernel trace: CUPTI dropped " + std::to_string(dropped) +
                              " kernel records (buffers full); trace fewer steps");
  }
  KernelTrace window;
  window.begin_ns = begin_ns;
  window.end_ns = kernel_trace_now();  // after the synchronize: every kernel has ended
  for (KernelRecord& k : s.records) {
    if (k.start_ns >= begin_ns) window.records.push_back(std::move(k));
  }
  s.records.clear();
  std::stable_sort(
      window.records.begin(), window.records.end(),
      [](const KernelRecord& a, const KernelRecord& b) { return a.start_ns < b.start_ns; });
  return window;
}

void kernel_trace_stop() {
  Store& s = store();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.on) return;
    s.on = false;
  }
  cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::lock_guard<std::mutex> lock(s.mu);
  s.records.clear();
}

}  // namespace dshpc
