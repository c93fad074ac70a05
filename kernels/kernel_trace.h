// A timeline of the GPU's kernels, for finding where a step's time goes on machines without
// Nsight Systems: CUPTI's kernel activity records (start and end of every kernel, graph
// replays included, on every stream), summarised per kernel and written as a Chrome trace
// (chrome://tracing, ui.perfetto.dev).
//
// The collector needs CUPTI (found beside the CUDA toolkit at configure time); without it
// kernel_trace_start says so. The summary and the trace file are plain C++ and tested on CPUs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace dshpc {

struct KernelRecord {
  std::string name;       // as CUPTI reports it (mangled)
  uint64_t start_ns = 0;  // CUPTI's clock (kernel_trace_now)
  uint64_t end_ns = 0;
  uint32_t device = 0;
  uint32_t stream = 0;
  int64_t ctas = 0;     // grid size
  int32_t threads = 0;  // block size
};

// True when this binary can collect kernel traces (built with CUPTI).
bool kernel_trace_built();
// Starts recording every kernel of this process (CUPTI's concurrent-kernel activity, which
// keeps kernels of different streams concurrent). Records cost device memory and a little time
// per kernel, so figures of a traced run are not figures of record.
Status kernel_trace_start();
// CUPTI's clock now, in ns.
uint64_t kernel_trace_now();
// Starts a window: waits for the device, drops every record so far (and any count of records
// CUPTI lost) and returns the window's start (kernel_trace_now).
uint64_t kernel_trace_begin();
struct KernelTrace {
  uint64_t begin_ns = 0;
  uint64_t end_ns = 0;                // after the device finished the window's work
  std::vector<KernelRecord> records;  // in start order
};
// Waits for the device, flushes CUPTI's buffers and returns the kernels that started since
// begin_ns; earlier records are dropped. An error if CUPTI lost records since the last
// kernel_trace_begin (its buffers were full).
StatusOr<KernelTrace> kernel_trace_collect(uint64_t begin_ns);
// Stops recording (records not yet collected are dropped).
void kernel_trace_stop();

// "moe_gate_kernel<__nv_bfloat16, false>" from CUPTI's mangled name: demangled, without the
// return type, the parameter list and this project's namespaces.
std::string short_kernel_name(const std::string& name);

struct KernelStat {
  std::string name;  // short_kernel_name
  int64_t count = 0;
  double exclusive_ns = 0;  // summed: what the kernel added to the busy time (below)
  double duration_ns = 0;   // summed: end − start
  double max_duration_ns = 0;
  int64_t ctas = 0;  // of the last one
};

// What a window of kernels shows. Kernels are taken in order of their ends; a kernel's exclusive
// time is the part of it that no earlier-ending kernel covers: the time it added to the GPU's
// busy time, which the exclusive times add up to. A kernel launched early (programmatic
// dependent launch) starts before its predecessor ends and waits: its duration counts that wait,
// its exclusive time does not. Where kernels of two streams overlap, the overlap goes to the one
// that ends first, so a long kernel with shorter ones beside it is charged only for the time
// they leave uncovered. (Stream ids are not summarised: a graph's kernels run on streams of the
// driver's.)
struct KernelTraceSummary {
  double window_ns = 0;  // end_ns − begin_ns
  double busy_ns = 0;    // some kernel running
  int64_t kernels = 0;
  std::vector<KernelStat> by_name;  // largest exclusive time first
};

KernelTraceSummary summarize_kernel_trace(const KernelTrace& trace);

// A table for people: the window per step (`steps` steps in it), busy and idle time, then the
// `top` kernels by exclusive time, each per step.
std::string format_kernel_trace_summary(const KernelTraceSummary& summary, int64_t steps, int top);

// Chrome's trace-event format: one complete event per kernel, a row per stream, timestamps in
// µs from the window's start. `label` names the process row.
Status write_chrome_trace(const KernelTrace& trace, const std::string& label,
                          const std::string& path);

}  // namespace dshpc
