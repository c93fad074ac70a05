// CHECK: broken invariants stop the job. The message carries host, rank, device and file:line;
// the abort handler (MPI_Abort once MPI is up, std::abort before) makes the launcher see a
// non-zero exit quickly. Request- or file-level problems use Status instead.
#pragma once

#include <chrono>
#include <functional>
#include <sstream>
#include <string>

namespace dshpc {

// Who this process is, for error messages. Set once at start-up (rank after MPI_Init, device
// after the GPU is chosen); read by every fatal error.
void set_process_identity(int rank, int device);
std::string process_identity();  // "host=… rank=… device=…"

// Called after a fatal message has been printed; must not return. The parallel layer installs
// one that calls MPI_Abort.
using AbortHandler = void (*)(int exit_code);
void set_abort_handler(AbortHandler handler);
[[noreturn]] void fatal_abort(int exit_code);

// Last words before the abort: e.g. rank 0 of `dshpc serve` ends every open HTTP request with an
// error, so that clients learn of the failure instead of seeing a reset connection. The hook runs
// at most once, on a thread of its own, and gets at most `limit`; the job is aborted then even if
// it has not returned (it may wait on the very thread that failed). `reason` is the fatal
// message. Installing an empty hook removes it; its captures must outlive the installation.
using FatalHook = std::function<void(const std::string& reason)>;
void set_fatal_hook(FatalHook hook, std::chrono::milliseconds limit = std::chrono::seconds(3));
// Runs the hook (if any, once) with `reason`, then the abort handler with `exit_code`.
[[noreturn]] void fatal_abort(int exit_code, const std::string& reason);

class FatalMessage {
 public:
  FatalMessage(const char* file, int line, const char* what);
  [[noreturn]] ~FatalMessage();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Swallows the stream expression when the check passes.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace dshpc

#define DSHPC_CHECK(cond)       \
  (cond) ? (void)0              \
         : ::dshpc::Voidify() & \
               ::dshpc::FatalMessage(__FILE__, __LINE__, "CHECK(" #cond ") failed").stream()

#define DSHPC_CHECK_EQ(a, b) DSHPC_CHECK((a) == (b)) << "(" << (a) << " vs " << (b) << ") "
#define DSHPC_CHECK_LE(a, b) DSHPC_CHECK((a) <= (b)) << "(" << (a) << " vs " << (b) << ") "
#define DSHPC_CHECK_LT(a, b) DSHPC_CHECK((a) < (b)) << "(" << (a) << " vs " << (b) << ") "
#define DSHPC_FATAL() ::dshpc::FatalMessage(__FILE__, __LINE__, "fatal").stream()
