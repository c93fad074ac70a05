#include "app/job_failure.h"

#include <pthread.h>
#include <unistd.h>

#include <cerrno>

#include <fstream>

#include "common/check.h"
#include "common/log.h"
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

sigset_t block_stop_signals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

StopSignals::StopSignals(const sigset_t& signals, Actions actions)
    : signals_(signals), actions_(std::move(actions)) {
  thread_ = std::thread([this] { wait_for_signals(); });
}

StopSignals::~StopSignals() {
  done_ = true;
  pthread_kill(thread_.native_handle(), SIGTERM);  // wakes sigwaitinfo; the thread sees done_
  thread_.join();
}

void StopSignals::wait_for_signals() {
  int received = 0;
  siginfo_t info;
  for (;;) {
    const int signal_number = sigwaitinfo(&signals_, &info);
    if (signal_number < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (done_) return;
    if (signal_number == SIGTERM) {
      if (std::string launcher = signal_from_mpi_launcher(info); !launcher.empty()) {
        process_logger().error(actions_.command + ": SIGTERM from " + launcher + " (pid " +
                                   std::to_string(info.si_pid) +
                                   "): the launcher is ending the job; " +
                                   actions_.launcher_consequence,
                               {{"event.action", actions_.event_prefix + ".launcher_stop"}});
        fatal_abort(143, "SIGTERM from " + launcher);
      }
    }
    if (++received == 1) {
      actions_.on_first(signal_number);
    } else {
      actions_.on_again(signal_number);
    }
  }
}

}  // namespace dshpc
