// Launcher detection from environment tables (parallel/launcher.h): what Open MPI's mpirun,
// MPICH's Hydra and Slurm's srun set for a rank, the order in which they are recognised when a
// job nests them, Slurm's tasks-per-node lists, and which signal senders tear a job down.
#include <gtest/gtest.h>

#include "parallel/launcher.h"

namespace dshpc {
namespace {

struct Expected {
  Launcher launcher;
  std::optional<int> world_rank, world_size, local_rank, local_size;
};

void expect_launch(const Environment& env, const Expected& want, const std::string& what) {
  const LaunchInfo got = detect_launch(env);
  EXPECT_EQ(got.launcher, want.launcher) << what << ": " << launcher_name(got.launcher);
  EXPECT_EQ(got.world_rank, want.world_rank) << what;
  EXPECT_EQ(got.world_size, want.world_size) << what;
  EXPECT_EQ(got.local_rank, want.local_rank) << what;
  EXPECT_EQ(got.local_size, want.local_size) << what;
}

// What a batch script inside a Slurm allocation sees (no job step: not a task of srun).
Environment slurm_batch_script() {
  return {{"SLURM_JOB_ID", "4242"},     {"SLURM_PROCID", "0"},
          {"SLURM_LOCALID", "0"},       {"SLURM_NODEID", "0"},
          {"SLURM_NTASKS", "16"},       {"SLURM_TASKS_PER_NODE", "8(x2)"},
          {"SLURM_CPUS_ON_NODE", "96"}, {"SLURM_JOB_NODELIST", "gpu[01-02]"}};
}

TEST(Launcher, EachLauncherFromItsOwnVariables) {
  expect_launch({}, {Launcher::kNone}, "no launcher");
  expect_launch({{"PATH", "/usr/bin"}, {"HOME", "/root"}}, {Launcher::kNone}, "a shell");

  expect_launch({{"OMPI_COMM_WORLD_RANK", "3"},
                 {"OMPI_COMM_WORLD_SIZE", "8"},
                 {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                 {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                 {"OMPI_COMM_WORLD_NODE_RANK", "1"}},
                {Launcher::kOpenMpi, 3, 8, 1, 2}, "mpirun");

  expect_launch({{"PMI_RANK", "5"},
                 {"PMI_SIZE", "8"},
                 {"PMI_FD", "6"},
                 {"MPI_LOCALRANKID", "1"},
                 {"MPI_LOCALNRANKS", "4"}},
                {Launcher::kMpichHydra, 5, 8, 1, 4}, "MPICH mpiexec (Hydra)");
  expect_launch({{"PMI_RANK", "2"}, {"PMI_SIZE", "4"}, {"HYDRA_PROXY_RETRY_COUNT", "3"}},
                {Launcher::kMpichHydra, 2, 4, std::nullopt, std::nullopt},
                "Hydra without the local variables");
  expect_launch({{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}},
                {Launcher::kMpichHydra, 1, 2, std::nullopt, std::nullopt}, "PMI_RANK alone");

  Environment srun = slurm_batch_script();
  srun.insert({{"SLURM_STEP_ID", "0"},
               {"SLURM_PROCID", "11"},
               {"SLURM_LOCALID", "3"},
               {"SLURM_NODEID", "1"},
               {"SLURM_STEP_NUM_TASKS", "12"},
               {"SLURM_STEP_TASKS_PER_NODE", "8,4"}});
  srun["SLURM_PROCID"] = "11";
  srun["SLURM_LOCALID"] = "3";
  srun["SLURM_NODEID"] = "1";
  expect_launch(srun, {Launcher::kSlurm, 11, 12, 3, 4}, "srun task");

  // Older Slurm spells the step SLURM_STEPID; without a step tasks-per-node list, the job's.
  Environment old_srun = slurm_batch_script();
  old_srun["SLURM_STEPID"] = "2";
  old_srun["SLURM_PROCID"] = "9";
  old_srun["SLURM_LOCALID"] = "1";
  old_srun["SLURM_NODEID"] = "1";
  expect_launch(old_srun, {Launcher::kSlurm, 9, 16, 1, 8}, "srun task, job-wide lists");
}

TEST(Launcher, NestedLaunchersResolveToTheInnermost) {
  // The batch script itself (SLURM_PROCID=0, but no step) is no srun task.
  expect_launch(slurm_batch_script(), {Launcher::kNone}, "sbatch script");

  // mpirun inside an allocation: its ranks carry the script's SLURM_* variables too.
  Environment mpirun_in_slurm = slurm_batch_script();
  mpirun_in_slurm.insert({{"OMPI_COMM_WORLD_RANK", "6"},
                          {"OMPI_COMM_WORLD_SIZE", "16"},
                          {"OMPI_COMM_WORLD_LOCAL_RANK", "6"},
                          {"OMPI_COMM_WORLD_LOCAL_SIZE", "8"},
                          {"SLURM_STEP_ID", "0"}});  // orted was started by srun
  expect_launch(mpirun_in_slurm, {Launcher::kOpenMpi, 6, 16, 6, 8}, "mpirun under Slurm");

  // Hydra's proxies started by srun (bootstrap slurm): the ranks see the proxy's task variables.
  Environment hydra_in_slurm = slurm_batch_script();
  hydra_in_slurm.insert({{"SLURM_STEP_ID", "1"},
                         {"PMI_RANK", "13"},
                         {"PMI_SIZE", "16"},
                         {"MPI_LOCALRANKID", "5"},
                         {"MPI_LOCALNRANKS", "8"}});
  hydra_in_slurm["SLURM_PROCID"] = "1";  // the proxy's task id, not the rank
  expect_launch(hydra_in_slurm, {Launcher::kMpichHydra, 13, 16, 5, 8}, "Hydra under Slurm");

  // srun --mpi=pmi2 sets PMI_RANK as well; it is still Slurm's task.
  Environment pmi2 = slurm_batch_script();
  pmi2.insert({{"SLURM_STEP_ID", "0"}, {"PMI_RANK", "4"}, {"PMI_SIZE", "16"}});
  pmi2["SLURM_PROCID"] = "4";
  pmi2["SLURM_LOCALID"] = "4";
  expect_launch(pmi2, {Launcher::kSlurm, 4, 16, 4, 8}, "srun --mpi=pmi2");
}

TEST(Launcher, MalformedNumbersAreNotGuessed) {
  expect_launch({{"OMPI_COMM_WORLD_RANK", "x"}, {"OMPI_COMM_WORLD_SIZE", "-2"}},
                {Launcher::kOpenMpi}, "garbage");
  expect_launch({{"OMPI_COMM_WORLD_RANK", "3 "}, {"OMPI_COMM_WORLD_LOCAL_RANK", ""}},
                {Launcher::kOpenMpi}, "trailing space, empty");
  Environment srun = {{"SLURM_PROCID", "1"},
                      {"SLURM_STEP_ID", "0"},
                      {"SLURM_NODEID", "5"},
                      {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"}};
  expect_launch(srun, {Launcher::kSlurm, 1, std::nullopt, std::nullopt, std::nullopt},
                "node beyond the list");
}

TEST(Launcher, SlurmTasksPerNodeLists) {
  using V = std::vector<int>;
  EXPECT_EQ(parse_slurm_tasks_per_node("4"), V({4}));
  EXPECT_EQ(parse_slurm_tasks_per_node("2(x3),1"), V({2, 2, 2, 1}));
  EXPECT_EQ(parse_slurm_tasks_per_node("1,8(x2),3(x1)"), V({1, 8, 8, 3}));
  for (const char* bad :
       {"", ",", "2,", "x", "2(x)", "2(x0)", "2(x3", "(x2)", "2(y3)", "-1", "2(x3),,1"}) {
    EXPECT_FALSE(parse_slurm_tasks_per_node(bad).has_value()) << bad;
  }
}

TEST(Launcher, WhichParentsTearTheJobDown) {
  for (const char* name : {"mpirun", "mpiexec", "orterun", "orted", "prterun", "prted"}) {
    EXPECT_TRUE(is_teardown_signal_sender(Launcher::kOpenMpi, name)) << name;
    EXPECT_TRUE(is_teardown_signal_sender(Launcher::kNone, name)) << name;
    EXPECT_FALSE(is_teardown_signal_sender(Launcher::kSlurm, name)) << name;
  }
  for (const char* name : {"hydra_pmi_proxy", "pmi_proxy", "mpiexec.hydra", "mpiexec"}) {
    EXPECT_TRUE(is_teardown_signal_sender(Launcher::kMpichHydra, name)) << name;
    EXPECT_TRUE(is_teardown_signal_sender(Launcher::kNone, name)) << name;
  }
  EXPECT_FALSE(is_teardown_signal_sender(Launcher::kOpenMpi, "hydra_pmi_proxy"));
  EXPECT_FALSE(is_teardown_signal_sender(Launcher::kMpichHydra, "orted"));
  // slurmstepd's SIGTERM is scancel --signal=TERM (the Slurm scripts' drain) or a step kill with
  // KillWait to spare: a drain either way. Shells, supervise.sh, kubelet: drain.
  for (Launcher launcher :
       {Launcher::kNone, Launcher::kOpenMpi, Launcher::kMpichHydra, Launcher::kSlurm}) {
    for (const char* name : {"slurmstepd", "bash", "supervise.sh", "python3", "", "mpirunner"}) {
      EXPECT_FALSE(is_teardown_signal_sender(launcher, name))
          << launcher_name(launcher) << " " << name;
    }
  }
}

TEST(Launcher, ThisProcessEnvironmentIsReadWhole) {
  ASSERT_EQ(setenv("DSHPC_LAUNCHER_TEST", "a=b", 1), 0);
  const Environment env = process_environment();
  unsetenv("DSHPC_LAUNCHER_TEST");
  auto it = env.find("DSHPC_LAUNCHER_TEST");
  ASSERT_NE(it, env.end());
  EXPECT_EQ(it->second, "a=b");  // split at the first '=' only
}

}  // namespace
}  // namespace dshpc
