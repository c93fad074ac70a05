// The kernel trace's CUPTI collector on a real GPU: launches made directly and those replayed
// from a captured graph are all recorded, once, inside their window.
#include "gpu_test_util.h"
#include "kernels/kernel_trace.h"

namespace dshpc::gpu_test {
namespace {

TEST(GpuKernelTrace, RecordsDirectAndReplayedLaunchesInTheWindow) {
  if (!kernel_trace_built()) GTEST_SKIP() << "built without CUPTI";
  std::unique_ptr<Backend> gpu = cuda_backend(DType::kF32);
  ASSERT_NE(gpu, nullptr);
  const int64_t rows = 4, dim = 1024;
  Tensor x = upload_tensor(*gpu, random_values(rows * dim, 1), rows, dim, DType::kF32);
  Tensor w = upload_tensor(*gpu, random_values(dim, 2), dim, 1, DType::kF32);
  Tensor out = upload_tensor(*gpu, std::vector<float>(rows * dim), rows, dim, DType::kF32);
  auto norm = [&] { gpu->rmsnorm(x.mat, w.buffer.data(), 1e-6f, out.mat); };
  norm();  // loaded before the trace
  ASSERT_TRUE(kernel_trace_start().ok());
  struct Stop {
    ~Stop() { kernel_trace_stop(); }  // CUPTI off for the other tests, whatever happens here
  } stop;
  norm();  // before the window: kernel_trace_begin drops it

  const uint64_t begin = kernel_trace_begin();
  for (int i = 0; i < 3; ++i) norm();
  ASSERT_TRUE(gpu->begin_capture());
  norm();
  norm();
  ASSERT_TRUE(gpu->end_capture(42));
  ASSERT_TRUE(gpu->launch_graph(42));
  ASSERT_TRUE(gpu->launch_graph(42));
  // From 0, so that a record kernel_trace_begin failed to drop would be counted.
  auto trace = kernel_trace_collect(0);  // waits for the replays
  ASSERT_TRUE(trace.ok()) << trace.status().message();
  const std::vector<KernelRecord>& records = trace->records;
  int norms = 0;
  for (const KernelRecord& r : records) {
    EXPECT_GE(r.start_ns, begin) << r.name;
    EXPECT_LE(r.end_ns, trace->end_ns) << r.name;
    EXPECT_GT(r.end_ns, r.start_ns) << r.name;
    EXPECT_GT(r.ctas, 0) << r.name;
    if (short_kernel_name(r.name).find("rmsnorm") != std::string::npos) ++norms;
  }
  EXPECT_EQ(norms, 3 + 2 * 2) << records.size() << " kernels";  // eager three, two replays of two
  // A later window holds only its own kernels.
  const uint64_t again = kernel_trace_begin();
  norm();
  auto second = kernel_trace_collect(again);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->records.size(), 1u);
  kernel_trace_stop();
  EXPECT_FALSE(kernel_trace_collect(0).ok());  // stopped: says so
}

}  // namespace
}  // namespace dshpc::gpu_test
