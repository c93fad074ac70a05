// Which launcher started this process and what it says about the process's place in the job,
// read from the environment the launcher sets — usable before MPI_Init and without MPI. Pure
// functions of an environment table, so that every launcher's layout is tested without it.
//
//   Open MPI (mpirun): OMPI_COMM_WORLD_RANK; rank, size, local rank, local size from
//     OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}.
//   MPICH Hydra (mpiexec; also Intel MPI): MPI_LOCALRANKID, or PMI_RANK with a HYDRA_* or HYDI_*
//     variable or outside a Slurm step; PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS.
//   Slurm (a task of srun): SLURM_PROCID with SLURM_STEP_ID (or SLURM_STEPID); the batch script
//     itself has no step. SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS), SLURM_LOCALID, and
//     this node's (SLURM_NODEID) entry of SLURM_STEP_TASKS_PER_NODE (or SLURM_TASKS_PER_NODE).
//
// The first that matches wins, in this order: mpirun inside a Slurm allocation leaves SLURM_*
// variables in its ranks' environment, and Hydra's proxies started by srun do too.
//
// What the launcher means for signals (app/job_failure.h): Open MPI's mpirun/orted and Hydra's
// proxy tear a job down with SIGTERM followed by SIGKILL moments later (Hydra normally with
// SIGKILL alone), so a SIGTERM from them is no time for a drain. Slurm's slurmstepd sends SIGTERM
// both for `scancel --signal=TERM` (the Slurm scripts' drain) and when it kills a step (then
// SIGKILL after KillWait, 30 s by default): a SIGTERM from it drains.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dshpc {

enum class Launcher { kNone, kOpenMpi, kMpichHydra, kSlurm };
const char* launcher_name(Launcher launcher);  // "none", "openmpi", "mpich-hydra", "slurm"

using Environment = std::map<std::string, std::string, std::less<>>;
// This process's environment (environ) as a table.
Environment process_environment();

struct LaunchInfo {
  Launcher launcher = Launcher::kNone;
  // What the launcher says; nullopt where it says nothing (or nothing that parses).
  std::optional<int> world_rank, world_size, local_rank, local_size;
};

LaunchInfo detect_launch(const Environment& env);

// Slurm's compressed tasks-per-node list, "2(x3),1" → {2, 2, 2, 1}; nullopt when malformed.
std::optional<std::vector<int>> parse_slurm_tasks_per_node(std::string_view text);

// True when a SIGTERM from a process named `sender_comm` (/proc/PID/comm, at most 15 characters)
// that is this rank's parent means `launcher` is tearing the job down (SIGKILL follows): Open
// MPI's mpirun, mpiexec, orterun, orted, prterun, prted; Hydra's hydra_pmi_proxy (pmi_proxy in
// old versions), mpiexec.hydra, mpiexec, mpirun. Never for Slurm (slurmstepd: drain). With
// kNone (the variables were not passed on) the Open MPI and Hydra names both count.
bool is_teardown_signal_sender(Launcher launcher, std::string_view sender_comm);

}  // namespace dshpc
