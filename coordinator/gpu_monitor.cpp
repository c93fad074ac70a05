#include "coordinator/gpu_monitor.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>

namespace dshpc {

namespace {

// The few NVML declarations we use, from nvml.h (stable C ABI; the _v2 entry points exist
// since driver 325). Declared here so that no NVIDIA header is needed to build.
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
constexpr nvmlReturn_t kNvmlSuccess = 0;
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct nvmlUtilization_t {
  unsigned int gpu;     // percent of time a kernel ran over the last sample period
  unsigned int memory;  // percent of time device memory was read or written
};
constexpr unsigned kNvmlDeviceNameBufferSize = 96;
constexpr unsigned kNvmlDeviceUuidBufferSize = 96;

}  // namespace

struct GpuMonitor::Nvml {
  nvmlReturn_t (*init)();
  nvmlReturn_t (*shutdown)();
  const char* (*error_string)(nvmlReturn_t);
  nvmlReturn_t (*device_count)(unsigned*);
  nvmlReturn_t (*handle_by_index)(unsigned, nvmlDevice_t*);
  nvmlReturn_t (*handle_by_pci_bus_id)(const char*, nvmlDevice_t*);
  nvmlReturn_t (*index)(nvmlDevice_t, unsigned*);
  nvmlReturn_t (*name)(nvmlDevice_t, char*, unsigned);
  nvmlReturn_t (*uuid)(nvmlDevice_t, char*, unsigned);
  nvmlReturn_t (*memory_info)(nvmlDevice_t, nvmlMemory_t*);
  nvmlReturn_t (*utilization)(nvmlDevice_t, nvmlUtilization_t*);
};

namespace {

template <typename Fn>
bool resolve(void* library, const char* symbol, Fn& fn, std::string& missing) {
  fn = reinterpret_cast<Fn>(dlsym(library, symbol));
  if (fn == nullptr) missing = symbol;
  return fn != nullptr;
}

std::optional<GpuSample> sample_handle(const GpuMonitor::Nvml& nvml, nvmlDevice_t device) {
  GpuSample sample;
  unsigned index = 0;
  if (nvml.index(device, &index) != kNvmlSuccess) return std::nullopt;
  sample.nvml_index = index;
  char text[kNvmlDeviceUuidBufferSize] = {0};
  if (nvml.uuid(device, text, sizeof(text)) == kNvmlSuccess) sample.uuid = text;
  char name[kNvmlDeviceNameBufferSize] = {0};
  if (nvml.name(device, name, sizeof(name)) == kNvmlSuccess) sample.name = name;
  nvmlMemory_t memory{};
  if (nvml.memory_info(device, &memory) == kNvmlSuccess) {
    sample.memory_used_bytes = memory.used;
    sample.memory_total_bytes = memory.total;
  }
  nvmlUtilization_t utilization{};
  // Not supported on some devices (MIG instances): the ratio stays 0.
  if (nvml.utilization(device, &utilization) == kNvmlSuccess) {
    sample.utilization_ratio = static_cast<double>(utilization.gpu) / 100.0;
  }
  return sample;
}

}  // namespace

std::optional<std::vector<VisibleDevice>> parse_cuda_visible_devices(const char* value) {
  if (value == nullptr) return std::nullopt;
  std::vector<VisibleDevice> devices;
  std::string_view rest(value);
  while (true) {
    const size_t comma = rest.find(',');
    std::string_view entry = rest.substr(0, comma);
    while (!entry.empty() && entry.front() == ' ') entry.remove_prefix(1);
    while (!entry.empty() && entry.back() == ' ') entry.remove_suffix(1);
    if (entry.rfind("GPU-", 0) == 0 && entry.size() > 4) {
      devices.emplace_back(std::string(entry));
    } else if (!entry.empty() && entry.find_first_not_of("0123456789") == std::string_view::npos &&
               entry.size() <= 6) {
      devices.emplace_back(
          static_cast<unsigned>(std::strtoul(std::string(entry).c_str(), nullptr, 10)));
    } else {
      break;  // CUDA ignores this entry and everything after it
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return devices;
}

GpuMonitor::GpuMonitor(const char* library) {
  library_ = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (library_ == nullptr) {
    const char* error = dlerror();
    reason_ = std::string("cannot load ") + library + ": " + (error ? error : "unknown error");
    return;
  }
  auto* nvml = new Nvml{};
  std::string missing;
  const bool resolved =
      resolve(library_, "nvmlInit_v2", nvml->init, missing) &&
      resolve(library_, "nvmlShutdown", nvml->shutdown, missing) &&
      resolve(library_, "nvmlErrorString", nvml->error_string, missing) &&
      resolve(library_, "nvmlDeviceGetCount_v2", nvml->device_count, missing) &&
      resolve(library_, "nvmlDeviceGetHandleByIndex_v2", nvml->handle_by_index, missing) &&
      resolve(library_, "nvmlDeviceGetHandleByPciBusId_v2", nvml->handle_by_pci_bus_id, missing) &&
      resolve(library_, "nvmlDeviceGetIndex", nvml->index, missing) &&
      resolve(library_, "nvmlDeviceGetName", nvml->name, missing) &&
      resolve(library_, "nvmlDeviceGetUUID", nvml->uuid, missing) &&
      resolve(library_, "nvmlDeviceGetMemoryInfo", nvml->memory_info, missing) &&
      resolve(library_, "nvmlDeviceGetUtilizationRates", nvml->utilization, missing);
  if (!resolved) {
    reason_ = std::string(library) + " has no symbol " + missing;
    delete nvml;
    dlclose(library_);
    library_ = nullptr;
    return;
  }
  if (const nvmlReturn_t rc = nvml->init(); rc != kNvmlSuccess) {
    reason_ = std::string("nvmlInit_v2 failed: ") + nvml->error_string(rc);
    delete nvml;
    dlclose(library_);
    library_ = nullptr;
    return;
  }
  nvml_ = nvml;
}

GpuMonitor::~GpuMonitor() {
  if (nvml_ != nullptr) {
    nvml_->shutdown();
    delete nvml_;
  }
  if (library_ != nullptr) dlclose(library_);
}

unsigned GpuMonitor::device_count() const {
  if (nvml_ == nullptr) return 0;
  unsigned count = 0;
  return nvml_->device_count(&count) == kNvmlSuccess ? count : 0;
}

std::optional<GpuSample> GpuMonitor::sample_nvml_index(unsigned index) const {
  if (nvml_ == nullptr) return std::nullopt;
  nvmlDevice_t device = nullptr;
  if (nvml_->handle_by_index(index, &device) != kNvmlSuccess) return std::nullopt;
  return sample_handle(*nvml_, device);
}

std::optional<GpuSample> GpuMonitor::sample_pci_bus_id(const std::string& pci_bus_id) const {
  if (nvml_ == nullptr) return std::nullopt;
  nvmlDevice_t device = nullptr;
  if (nvml_->handle_by_pci_bus_id(pci_bus_id.c_str(), &device) != kNvmlSuccess) {
    return std::nullopt;
  }
  return sample_handle(*nvml_, device);
}

std::vector<GpuSample> GpuMonitor::sample_visible() const {
  std::vector<GpuSample> samples;
  if (nvml_ == nullptr) return samples;
  std::vector<GpuSample> all;
  for (unsigned i = 0, n = device_count(); i < n; ++i) {
    if (auto sample = sample_nvml_index(i)) all.push_back(std::move(*sample));
  }
  const auto visible = parse_cuda_visible_devices(std::getenv("CUDA_VISIBLE_DEVICES"));
  if (!visible) return all;
  for (const VisibleDevice& entry : *visible) {
    const GpuSample* match = nullptr;
    if (const auto* index = std::get_if<unsigned>(&entry)) {
      for (const GpuSample& s : all) {
        if (s.nvml_index == *index) match = &s;
      }
    } else {
      const std::string& prefix = std::get<std::string>(entry);
      for (const GpuSample& s : all) {
        if (s.uuid.rfind(prefix, 0) == 0) match = &s;
      }
    }
    if (match == nullptr) break;  // CUDA stops at the first entry naming no device
    samples.push_back(*match);
  }
  return samples;
}

}  // namespace dshpc
