// The fatal-error hook (common/check.h): it runs once with the fatal message before the process
// ends, and a hook that never returns cannot keep the process alive past its limit.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "common/check.h"

namespace dshpc {
namespace {

using namespace std::chrono_literals;

class FatalHookTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
  void TearDown() override { set_fatal_hook(nullptr); }
};

TEST_F(FatalHookTest, RunsWithTheFatalMessageBeforeTheProcessEnds) {
  EXPECT_DEATH(
      {
        set_fatal_hook([](const std::string& reason) {
          std::fprintf(stderr, "hook saw <%s>\n", reason.substr(0, 40).c_str());
        });
        DSHPC_CHECK(1 + 1 == 3) << "arithmetic";
      },
      "CHECK\\(1 \\+ 1 == 3\\) failed arithmetic(.|\n)*hook saw <dshpc fatal \\[host=");
}

TEST_F(FatalHookTest, RunsOnlyOnceWhenItFailsItself) {
  EXPECT_DEATH(
      {
        set_fatal_hook([](const std::string&) {
          std::fprintf(stderr, "hook ran\n");
          DSHPC_CHECK(false) << "inside the hook";
        });
        DSHPC_CHECK(false) << "first";
      },
      "first(.|\n)*hook ran(.|\n)*inside the hook");
}

TEST_F(FatalHookTest, AHookThatNeverReturnsIsCutOffAtItsLimit) {
  const auto started = std::chrono::steady_clock::now();
  EXPECT_DEATH(
      {
        set_fatal_hook([](const std::string&) { std::this_thread::sleep_for(1h); }, 200ms);
        DSHPC_CHECK(false) << "stuck hook";
      },
      "did not finish within 200 ms");
  EXPECT_LT(std::chrono::steady_clock::now() - started, 20s);
}

TEST_F(FatalHookTest, RemovedHookDoesNotRun) {
  EXPECT_DEATH(
      {
        set_fatal_hook([](const std::string&) { std::fprintf(stderr, "HOOK\n"); });
        set_fatal_hook(nullptr);
        std::fprintf(stderr, "no hook: ");
        DSHPC_CHECK(false) << "plain";
      },
      "no hook: dshpc fatal[^\n]*plain\n$");
}

}  // namespace
}  // namespace dshpc
