// CHECK: broken invariants stop the job. The message carries host, rank, device and file:line;
// the abort handler (MPI_Abort once MPI is up, std::abort before) makes the launcher see a
// non-zero exit quickly. Request- or file-level problems use Status instead.
#pragma once

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
