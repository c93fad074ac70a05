// How long the other ranks wait for rank 0 (worker/cluster.h, CoordinatorLiveness): the
// defaults, the environment variables that set them, and the values refused.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "worker/cluster.h"

namespace dshpc {
namespace {

class LivenessEnv : public ::testing::Test {
 protected:
  static constexpr const char* kNames[] = {"DSHPC_KEEPALIVE_INTERVAL_S", "DSHPC_CONTROL_TIMEOUT_S",
                                           "DSHPC_STARTUP_TIMEOUT_S"};
  void SetUp() override {
    for (const char* name : kNames) unsetenv(name);
  }
  void TearDown() override {
    for (const char* name : kNames) unsetenv(name);
  }
};

TEST_F(LivenessEnv, DefaultsFollowTheKeepaliveInterval) {
  StatusOr<CoordinatorLiveness> liveness = coordinator_liveness_from_env(300);
  ASSERT_TRUE(liveness.ok()) << liveness.status().to_string();
  EXPECT_EQ(liveness->keepalive_interval_s, 2.0);
  EXPECT_EQ(liveness->control_timeout_s, 10.0);  // five intervals
  EXPECT_EQ(liveness->startup_timeout_s, 3600.0);
  // Loading never gets less than a collective.
  EXPECT_EQ(coordinator_liveness_from_env(7200)->startup_timeout_s, 7200.0);

  setenv("DSHPC_KEEPALIVE_INTERVAL_S", "0.5", 1);
  liveness = coordinator_liveness_from_env(300);
  ASSERT_TRUE(liveness.ok()) << liveness.status().to_string();
  EXPECT_EQ(liveness->keepalive_interval_s, 0.5);
  EXPECT_EQ(liveness->control_timeout_s, 2.5);

  setenv("DSHPC_CONTROL_TIMEOUT_S", "3", 1);
  setenv("DSHPC_STARTUP_TIMEOUT_S", "120", 1);
  liveness = coordinator_liveness_from_env(300);
  ASSERT_TRUE(liveness.ok()) << liveness.status().to_string();
  EXPECT_EQ(liveness->control_timeout_s, 3.0);
  EXPECT_EQ(liveness->startup_timeout_s, 120.0);
}

TEST_F(LivenessEnv, BadValuesNameTheVariable) {
  for (const char* name : kNames) {
    for (const char* bad : {"soon", "0", "-1", "nan", "inf", "5s"}) {
      setenv(name, bad, 1);
      StatusOr<CoordinatorLiveness> liveness = coordinator_liveness_from_env(300);
      ASSERT_FALSE(liveness.ok()) << name << "=" << bad;
      EXPECT_NE(liveness.status().message().find(std::string(name) + "=\"" + bad + "\""),
                std::string::npos)
          << liveness.status().message();
      unsetenv(name);
    }
  }
  // One late keepalive must not bring the job down.
  setenv("DSHPC_KEEPALIVE_INTERVAL_S", "2", 1);
  setenv("DSHPC_CONTROL_TIMEOUT_S", "3", 1);
  StatusOr<CoordinatorLiveness> tight = coordinator_liveness_from_env(300);
  ASSERT_FALSE(tight.ok());
  EXPECT_NE(tight.status().message().find("at least twice DSHPC_KEEPALIVE_INTERVAL_S"),
            std::string::npos)
      << tight.status().message();
}

}  // namespace
}  // namespace dshpc
