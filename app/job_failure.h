// Rank 0 of `dshpc serve` when the job goes down under it (issue 9): clients learn of the failure
// — an SSE error event then "data: [DONE]" for a stream, a 503 otherwise — before the job aborts.
//
// Two ways down reach rank 0:
//   - a fatal error on rank 0 itself: an MPI wait that timed out (a peer hung or died), a failed
//     MPI call, a broken invariant. The fatal-error hook (common/check.h) ends the requests.
//   - Open MPI's launcher tearing the job down because another rank died (kill -9, a crash) or
//     because mpirun itself got SIGTERM/SIGINT: it sends SIGTERM and, odls_base_sigkill_timeout
//     (1 s) later, SIGKILL. There is no time for a drain, so a SIGTERM that comes from the
//     launcher ends the requests at once and aborts the job. MPICH's Hydra proxy is treated the
//     same (it tears down with SIGKILL, in old versions right after a SIGTERM). A SIGTERM from
//     anyone else (Slurm's slurmstepd, an operator, Kubernetes) still drains, as does SIGUSR1,
//     which launch/mpirun.sh sends for a stop on purpose. Which launcher started the rank comes
//     from its environment (parallel/launcher.h).
#pragma once

#include <signal.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>

namespace dshpc {

class Gateway;

// Installs the fatal-error hook that fails every open request of `gateway`; the returned guard
// removes it (the gateway must outlive the guard).
class RequestFailer {
 public:
  explicit RequestFailer(Gateway& gateway);
  ~RequestFailer();
  RequestFailer(const RequestFailer&) = delete;
  RequestFailer& operator=(const RequestFailer&) = delete;
};

// When `info` (from sigwaitinfo) is a signal sent by this process's parent and that parent is
// the launcher of this job in the role that tears jobs down (is_teardown_signal_sender: Open
// MPI's mpirun/orted/…, Hydra's hydra_pmi_proxy/mpiexec; never Slurm's slurmstepd), its name;
// else "".
std::string signal_from_mpi_launcher(const siginfo_t& info);

// The signals that stop `dshpc serve` and `dshpc batch`: SIGTERM, SIGINT and SIGUSR1 (what
// launch/mpirun.sh sends, since mpirun does not forward SIGTERM without a SIGKILL after it),
// blocked in the calling thread and so in every thread it starts later: call it before any
// thread starts, so that they reach only StopSignals' thread (rank 0) or nobody (other ranks).
sigset_t block_stop_signals();

// One thread waiting for the signals of block_stop_signals(). A SIGTERM from the MPI launcher
// (signal_from_mpi_launcher: it kills the job a second later) is logged as
// `<event_prefix>.launcher_stop` with `launcher_consequence` and aborts the job at once (exit 143);
// the first other signal calls on_first, every later one on_again. The destructor wakes the
// thread and joins it.
class StopSignals {
 public:
  struct Actions {
    std::string command;               // "dshpc serve", for the log
    std::string event_prefix;          // "server", "batch"
    std::string launcher_consequence;  // what the launcher's SIGTERM does, for the log
    std::function<void(int signal_number)> on_first;
    std::function<void(int signal_number)> on_again;
  };
  StopSignals(const sigset_t& signals, Actions actions);
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  void wait_for_signals();

  sigset_t signals_;
  Actions actions_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace dshpc
