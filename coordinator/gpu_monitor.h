// GPU figures for /metrics (memory used/total, utilisation) from NVML, which is loaded at run time
// with dlopen("libnvidia-ml.so.1"): the binary has no link-time dependency on the driver, so CPU
// builds and machines without a GPU run unchanged and simply report no devices.
//
// This file depends on nothing but libdl, so a worker rank can sample its own GPU and send the
// figures to rank 0 with its step results (see RankFigures in coordinator/metrics.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace dshpc {

struct GpuSample {
  unsigned nvml_index = 0;  // NVML's numbering (PCI bus order), not necessarily CUDA's
  std::string uuid;         // "GPU-…"
  std::string name;         // "NVIDIA H200"
  uint64_t memory_used_bytes = 0;
  uint64_t memory_total_bytes = 0;
  double utilization_ratio = 0.0;  // 0..1: share of the last sample period a kernel was running
};

// One entry of CUDA_VISIBLE_DEVICES: a device index or a UUID (or UUID prefix, as CUDA allows).
using VisibleDevice = std::variant<unsigned, std::string>;

// Parses CUDA_VISIBLE_DEVICES the way the CUDA runtime does: comma-separated entries, parsing
// stops at the first entry that is neither an index nor "GPU-…" (so "0,1,-1,2" is {0, 1}).
// nullopt when the variable is unset (every device is visible). MIG entries are not supported
// and end the list.
std::optional<std::vector<VisibleDevice>> parse_cuda_visible_devices(const char* value);

class GpuMonitor {
 public:
  // Loads `library` and initialises NVML. Never fails: when the library or a driver is missing,
  // available() is false and unavailable_reason() says why.
  explicit GpuMonitor(const char* library = "libnvidia-ml.so.1");
  ~GpuMonitor();
  GpuMonitor(const GpuMonitor&) = delete;
  GpuMonitor& operator=(const GpuMonitor&) = delete;

  bool available() const { return nvml_ != nullptr; }
  const std::string& unavailable_reason() const { return reason_; }

  // Every device NVML sees (all of the node's GPUs, whatever CUDA_VISIBLE_DEVICES says).
  unsigned device_count() const;
  std::optional<GpuSample> sample_nvml_index(unsigned index) const;
  // The device with this PCI bus id ("0000:3b:00.0", from cudaDeviceGetPCIBusId): the exact
  // match for the GPU a rank drives, independent of device ordering.
  std::optional<GpuSample> sample_pci_bus_id(const std::string& pci_bus_id) const;
  // The devices this process may use, in CUDA_VISIBLE_DEVICES order. Indices are taken as NVML
  // indices, which match CUDA's only with CUDA_DEVICE_ORDER=PCI_BUS_ID (launch/mpirun.sh sets
  // it); UUIDs always match. Empty when NVML is unavailable.
  std::vector<GpuSample> sample_visible() const;

  struct Nvml;  // the resolved NVML entry points (defined in the .cpp file)

 private:
  void* library_ = nullptr;
  Nvml* nvml_ = nullptr;
  std::string reason_;
};

}  // namespace dshpc
