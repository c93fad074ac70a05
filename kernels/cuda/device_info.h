// What the CUDA runtime sees on this node (built only with nvcc).
#pragma once

#include <string>

namespace dshpc::cuda {

// Number of visible GPUs, 0 when the driver or devices are missing (never aborts).
int visible_device_count();
// "NVIDIA H200 (sm_90, 139.8 GiB)" for a device index; empty when unavailable.
std::string device_description(int device);
// Shared memory a block may opt in to on the current device, in bytes.
int max_dynamic_smem();
// Whether the current device launches thread block clusters (sm_90 and later).
bool cluster_launch_supported();

}  // namespace dshpc::cuda
