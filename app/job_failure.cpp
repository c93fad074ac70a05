#include "app/job_failure.h"

#include <unistd.h>

#include <fstream>

#include "common/check.h"
#include "coordinator/gateway.h"
#include "parallel/launcher.h"

namespace dshpc {

RequestFailer::RequestFailer(Gateway& gateway) {
  set_fatal_hook([&gateway](const std::string&) {
    // The reason (host, rank, file:line) is in the job's log; clients get the outline.
    gateway.fail_all(
        "the job serving this model failed (a rank stopped or stopped responding); "
        "retry once it has been restarted");
  });
}

RequestFailer::~RequestFailer() {
  set_fatal_hook(nullptr);
}

std::string signal_from_mpi_launcher(const siginfo_t& info) {
  if (info.si_code != SI_USER || info.si_pid <= 1 || info.si_pid != getppid()) return "";
  std::ifstream comm("/proc/" + std::to_string(info.si_pid) + "/comm");
  std::string name;
  if (!std::getline(comm, name)) return "";
  const Launcher launcher = detect_launch(process_environment()).launcher;
  return is_teardown_signal_sender(launcher, name) ? name : "";
}

}  // namespace dshpc
