// The kernel trace's summary and Chrome trace file (the CUPTI collector is in
// cuda/kernel_trace_cupti.cpp; without CUPTI its entry points below say so).
#include "kernels/kernel_trace.h"

#include <cxxabi.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>

namespace dshpc {

#ifndef DSHPC_HAVE_CUPTI

bool kernel_trace_built() {
  return false;
}

Status kernel_trace_start() {
  return unavailable(
      "kernel traces need CUPTI, which was not found beside the CUDA toolkit when this dshpc was "
      "configured");
}

uint64_t kernel_trace_now() {
  return 0;
}

uint64_t kernel_trace_begin() {
  return 0;
}

StatusOr<KernelTrace> kernel_trace_collect(uint64_t) {
  return kernel_trace_start();
}

void kernel_trace_stop() {}

#endif  // DSHPC_HAVE_CUPTI

namespace {

// The position of the '(' that opens the outermost parameter list (the last top-level one), or
// npos. Template arguments may hold parentheses of their own ("(anonymous namespace)").
size_t parameter_list(const std::string& s) {
  int depth = 0;  // of <> and ()
  size_t open = std::string::npos;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '(' && depth == 0) open = i;
    if (c == '<' || c == '(') ++depth;
    if (c == '>' || c == ')') --depth;
  }
  return open;
}

void erase_all(std::string& s, const std::string& what) {
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at)) {
    s.erase(at, what.size());
  }
}

}  // namespace

std::string short_kernel_name(const std::string& name) {
  // Only C++ symbols: a plain C name ("a", "nvjet_…") may read as a mangled type.
  if (name.rfind("_Z", 0) != 0) return name;
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status), std::free);
  std::string s = status == 0 && demangled ? demangled.get() : name;
  const size_t open = parameter_list(s);
  if (open != std::string::npos && open > 0) s.erase(open);
  if (s.rfind("void ", 0) == 0) s.erase(0, 5);
  erase_all(s, "(anonymous namespace)::");
  erase_all(s, "dshpc::cuda::");
  erase_all(s, "dshpc::");
  return s;
}

KernelTraceSummary summarize_kernel_trace(const KernelTrace& trace) {
  KernelTraceSummary out;
  out.window_ns =
      trace.end_ns > trace.begin_ns ? static_cast<double>(trace.end_ns - trace.begin_ns) : 0.0;
  out.kernels = static_cast<int64_t>(trace.records.size());
  std::vector<const KernelRecord*> by_end;
  for (const KernelRecord& r : trace.records) by_end.push_back(&r);
  std::stable_sort(by_end.begin(), by_end.end(), [](const KernelRecord* a, const KernelRecord* b) {
    return a->end_ns < b->end_ns;
  });
  std::map<std::string, KernelStat> stats;
  std::map<uint64_t, uint64_t> covered;  // disjoint [start, end) of the kernels taken so far
  for (const KernelRecord* r : by_end) {
    // The part of [start, end) outside `covered`, then [start, end) merged into it.
    uint64_t start = r->start_ns, end = std::max(r->start_ns, r->end_ns);
    auto it = covered.upper_bound(start);
    if (it != covered.begin() && std::prev(it)->second >= start) --it;
    uint64_t inside = 0;
    while (it != covered.end() && it->first <= end) {
      inside += std::min(end, it->second) - std::max(start, it->first);
      start = std::min(start, it->first);
      end = std::max(end, it->second);
      it = covered.erase(it);
    }
    const double exclusive =
        static_cast<double>(std::max(r->start_ns, r->end_ns) - r->start_ns - inside);
    covered[start] = end;
    out.busy_ns += exclusive;
    KernelStat& s = stats[short_kernel_name(r->name)];
    ++s.count;
    s.exclusive_ns += exclusive;
    const double duration =
        r->end_ns > r->start_ns ? static_cast<double>(r->end_ns - r->start_ns) : 0.0;
    s.duration_ns += duration;
    s.max_duration_ns = std::max(s.max_duration_ns, duration);
    s.ctas = r->ctas;
  }
  for (auto& [name, s] : stats) {
    s.name = name;
    out.by_name.push_back(s);
  }
  std::sort(out.by_name.begin(), out.by_name.end(), [](const KernelStat& a, const KernelStat& b) {
    return a.exclusive_ns > b.exclusive_ns || (a.exclusive_ns == b.exclusive_ns && a.name < b.name);
  });
  return out;
}

std::string format_kernel_trace_summary(const KernelTraceSummary& s, int64_t steps, int top) {
  const double per = steps > 0 ? 1e-3 / static_cast<double>(steps) : 1e-3;  // ns → µs per step
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line,
                "kernel trace: %lld kernels in %lld steps; per step %.1f µs, GPU busy %.1f µs "
                "(%.1f%%), idle %.1f µs\n",
                static_cast<long long>(s.kernels), static_cast<long long>(steps), s.window_ns * per,
                s.busy_ns * per, s.window_ns > 0 ? 100.0 * s.busy_ns / s.window_ns : 0.0,
                (s.window_ns - s.busy_ns) * per);
  out += line;
  std::snprintf(line, sizeof line, "  %-64s %9s %12s %12s %8s %8s\n", "kernel", "per step",
                "excl µs/st", "mean dur µs", "max µs", "CTAs");
  out += line;
  const int shown = std::min<int>(top, static_cast<int>(s.by_name.size()));
  for (int i = 0; i < shown; ++i) {
    const KernelStat& k = s.by_name[i];
    std::string name = k.name.size() > 64 ? k.name.substr(0, 61) + "..." : k.name;
    std::snprintf(line, sizeof line, "  %-64s %9.1f %12.1f %12.2f %8.2f %8lld\n", name.c_str(),
                  static_cast<double>(k.count) * (steps > 0 ? 1.0 / steps : 1.0),
                  k.exclusive_ns * per, k.duration_ns / k.count * 1e-3, k.max_duration_ns * 1e-3,
                  static_cast<long long>(k.ctas));
    out += line;
  }
  if (shown < static_cast<int>(s.by_name.size())) {
    double rest = 0;
    for (size_t i = shown; i < s.by_name.size(); ++i) rest += s.by_name[i].exclusive_ns;
    std::snprintf(line, sizeof line, "  (%zu more kernels: %.1f µs per step)\n",
                  s.by_name.size() - shown, rest * per);
    out += line;
  }
  return out;
}

Status write_chrome_trace(const KernelTrace& trace, const std::string& label,
                          const std::string& path) {
  const std::vector<KernelRecord>& records = trace.records;
  const uint64_t begin_ns = trace.begin_ns;
  boost::json::array events;
  events.push_back(
      {{"name", "process_name"}, {"ph", "M"}, {"pid", 0}, {"args", {{"name", label}}}});
  std::vector<uint32_t> named;
  for (const KernelRecord& r : records) {
    if (std::find(named.begin(), named.end(), r.stream) == named.end()) {
      named.push_back(r.stream);
      events.push_back({{"name", "thread_name"},
                        {"ph", "M"},
                        {"pid", 0},
                        {"tid", r.stream},
                        {"args",
                         {{"name", "GPU " + std::to_string(r.device) + " stream " +
                                       std::to_string(r.stream)}}}});
    }
    const auto us = [&](uint64_t ns) {
      return ns >= begin_ns ? static_cast<double>(ns - begin_ns) * 1e-3
                            : -static_cast<double>(begin_ns - ns) * 1e-3;
    };
    events.push_back({{"name", short_kernel_name(r.name)},
                      {"ph", "X"},
                      {"pid", 0},
                      {"tid", r.stream},
                      {"ts", us(r.start_ns)},
                      {"dur", r.end_ns > r.start_ns ? (r.end_ns - r.start_ns) * 1e-3 : 0.0},
                      {"args", {{"ctas", r.ctas}, {"threads", r.threads}}}});
  }
  boost::json::object doc;
  doc["traceEvents"] = std::move(events);
  doc["displayTimeUnit"] = "ns";
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return invalid_argument("kernel trace: cannot write " + path);
  const std::string text = boost::json::serialize(doc);
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !written) return internal_error("kernel trace: writing " + path);
  return ok_status();
}

}  // namespace dshpc
