// The kernel trace's summary (exclusive times, busy and overlapped time) and its Chrome trace
// file, on hand-made records; the CUPTI collector itself runs in dshpc bench --trace on GPUs.
#include <gtest/gtest.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "kernels/kernel_trace.h"

namespace dshpc {
namespace {

KernelRecord kernel(const std::string& name, uint64_t start, uint64_t end, uint32_t stream) {
  KernelRecord r;
  r.name = name;
  r.start_ns = start;
  r.end_ns = end;
  r.stream = stream;
  r.ctas = 8;
  r.threads = 256;
  return r;
}

const KernelStat* find(const KernelTraceSummary& s, const std::string& name) {
  for (const KernelStat& k : s.by_name) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

TEST(KernelTraceName, DemanglesAndDropsNamespacesAndParameters) {
  // void dshpc::cuda::(anonymous namespace)::moe_gate_kernel<float, false>(float const*, int)
  EXPECT_EQ(short_kernel_name("_ZN5dshpc4cuda12_GLOBAL__N_115moe_gate_kernelIfLb0EEEvPKfi"),
            "moe_gate_kernel<float, false>");
  // void dshpc::cuda::rms<float>(float*)
  EXPECT_EQ(short_kernel_name("_ZN5dshpc4cuda3rmsIfEEvPf"), "rms<float>");
  // Not a mangled name (cuBLAS's kernels often are plain C names): unchanged.
  EXPECT_EQ(short_kernel_name("nvjet_hsh_64x8_64x16_2x1_v_bz_TNT"),
            "nvjet_hsh_64x8_64x16_2x1_v_bz_TNT");
}

KernelTrace window(std::vector<KernelRecord> records, uint64_t begin, uint64_t end) {
  KernelTrace t;
  t.begin_ns = begin;
  t.end_ns = end;
  t.records = std::move(records);
  return t;
}

TEST(KernelTraceSummary, ExclusiveTimeSkipsTheEarlyStartedWait) {
  // a [0, 10); b starts early at 4 (programmatic launch), ends at 15; idle 15–20; a [20, 30).
  const KernelTraceSummary s = summarize_kernel_trace(
      window({kernel("a", 0, 10, 1), kernel("b", 4, 15, 1), kernel("a", 20, 30, 1)}, 0, 40));
  EXPECT_DOUBLE_EQ(s.window_ns, 40);
  EXPECT_DOUBLE_EQ(s.busy_ns, 25);  // [0, 15) and [20, 30)
  const KernelStat* a = find(s, "a");
  const KernelStat* b = find(s, "b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->count, 2);
  EXPECT_DOUBLE_EQ(a->exclusive_ns, 20);
  EXPECT_DOUBLE_EQ(b->exclusive_ns, 5);  // 10 → 15
  EXPECT_DOUBLE_EQ(b->duration_ns, 11);  // 4 → 15, the wait included
  EXPECT_DOUBLE_EQ(b->max_duration_ns, 11);
  EXPECT_EQ(s.by_name.front().name, "a");  // largest exclusive time first
}

TEST(KernelTraceSummary, AnOverlapGoesToTheKernelThatEndsFirst) {
  // gate [0, 30) on one stream; side kernels [5, 12) and [12, 20) beside it, then one [25, 40)
  // that outlasts it by 10; an idle gap, then [45, 50).
  const KernelTraceSummary s = summarize_kernel_trace(
      window({kernel("gate", 0, 30, 7), kernel("side1", 5, 12, 9), kernel("side2", 12, 20, 9),
              kernel("tail", 25, 40, 9), kernel("next", 45, 50, 7)},
             0, 60));
  EXPECT_DOUBLE_EQ(s.busy_ns, 45);                      // [0, 40) and [45, 50)
  EXPECT_DOUBLE_EQ(find(s, "side1")->exclusive_ns, 7);  // ends first: [5, 12) was its own then
  EXPECT_DOUBLE_EQ(find(s, "side2")->exclusive_ns, 8);
  EXPECT_DOUBLE_EQ(find(s, "gate")->exclusive_ns, 15);  // [0, 5) and [20, 30)
  EXPECT_DOUBLE_EQ(find(s, "tail")->exclusive_ns, 10);  // past the gate's end
  EXPECT_DOUBLE_EQ(find(s, "next")->exclusive_ns, 5);
  double total = 0;
  for (const KernelStat& k : s.by_name) total += k.exclusive_ns;
  EXPECT_DOUBLE_EQ(total, s.busy_ns);
  EXPECT_EQ(s.kernels, 5);
  const std::string text = format_kernel_trace_summary(s, 5, 2);
  EXPECT_NE(text.find("5 kernels in 5 steps; per step 0.0 µs"), std::string::npos) << text;
  EXPECT_NE(text.find("gate"), std::string::npos) << text;
  EXPECT_NE(text.find("(3 more kernels"), std::string::npos) << text;
}

// Random timelines against a slot-by-slot count: each busy nanosecond belongs to the kernel
// covering it that ends first (the earlier record on equal ends).
TEST(KernelTraceSummary, ExclusiveTimesMatchASlotBySlotCountOnRandomTimelines) {
  std::mt19937 rng(5);
  for (int round = 0; round < 300; ++round) {
    std::vector<KernelRecord> records;
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) {
      const uint64_t start = rng() % 180, length = rng() % 20;
      records.push_back(kernel("k" + std::to_string(i), start, start + length, rng() % 2));
    }
    std::map<std::string, double> expected;
    double busy = 0;
    for (uint64_t t = 0; t < 200; ++t) {
      int owner = -1;
      for (int i = 0; i < n; ++i) {
        const KernelRecord& r = records[i];
        if (r.start_ns <= t && t < r.end_ns && (owner < 0 || r.end_ns < records[owner].end_ns)) {
          owner = i;
        }
      }
      if (owner < 0) continue;
      expected[records[owner].name] += 1;
      busy += 1;
    }
    const KernelTraceSummary s = summarize_kernel_trace(window(records, 0, 200));
    ASSERT_DOUBLE_EQ(s.busy_ns, busy) << "round " << round;
    for (const KernelStat& k : s.by_name) {
      ASSERT_DOUBLE_EQ(k.exclusive_ns, expected[k.name]) << k.name << ", round " << round;
    }
  }
}

TEST(KernelTraceSummary, EmptyWindow) {
  const KernelTraceSummary s = summarize_kernel_trace(window({}, 100, 100));
  EXPECT_EQ(s.kernels, 0);
  EXPECT_DOUBLE_EQ(s.busy_ns, 0);
  EXPECT_TRUE(s.by_name.empty());
  EXPECT_NE(format_kernel_trace_summary(s, 0, 10).find("0 kernels"), std::string::npos);
}

TEST(KernelTraceFile, ChromeTraceEventsFromTheWindowStart) {
  const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                     ("dshpc_trace_" + std::to_string(::getpid()) + ".json");
  const KernelTrace trace =
      window({kernel("_ZN5dshpc4cuda3rmsIfEEvPf", 1500, 4000, 3), kernel("gemm", 2000, 9000, 4)},
             1000, 10000);
  ASSERT_TRUE(write_chrome_trace(trace, "bench b1", path.string()).ok());
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::filesystem::remove(path);
  const boost::json::array events = boost::json::parse(text.str()).at("traceEvents").as_array();
  int complete = 0, thread_names = 0;
  for (const auto& v : events) {
    const boost::json::object& e = v.as_object();
    const std::string ph(e.at("ph").as_string());
    if (ph == "M" && e.at("name") == "thread_name") ++thread_names;
    if (ph != "X") continue;
    ++complete;
    if (e.at("name") == "rms<float>") {
      EXPECT_DOUBLE_EQ(e.at("ts").as_double(), 0.5);
      EXPECT_DOUBLE_EQ(e.at("dur").as_double(), 2.5);
      EXPECT_EQ(e.at("tid").as_int64(), 3);
    } else {
      EXPECT_EQ(e.at("name"), "gemm");
      EXPECT_DOUBLE_EQ(e.at("ts").as_double(), 1.0);
    }
  }
  EXPECT_EQ(complete, 2);
  EXPECT_EQ(thread_names, 2);
  EXPECT_FALSE(write_chrome_trace(trace, "x", "/nonexistent-dir/t.json").ok());
}

}  // namespace
}  // namespace dshpc
