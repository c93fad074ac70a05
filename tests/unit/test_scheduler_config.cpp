// SchedulerConfig: every rule's message names its field; the command-line options resolve into a
// config; the example deployment files in configs/deploy show every batching field with values
// that pass validation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "coordinator/scheduler_config.h"

namespace dshpc {
namespace {

SchedulerConfig valid_config() {
  SchedulerConfig c;
  c.max_batch_size = 16;
  c.max_num_batched_tokens = 64;
  c.kv_blocks = 100;
  c.max_model_len = 4096;
  return c;
}

std::string error_of(const SchedulerConfig& c) {
  const Status s = validate_scheduler_config(c);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  return s.message();
}

TEST(SchedulerConfig, EveryRuleNamesItsField) {
  EXPECT_TRUE(validate_scheduler_config(valid_config()).ok());
  SchedulerConfig c = valid_config();
  c.max_batch_size = 0;
  EXPECT_EQ(error_of(c), "max_batch_size (0) must be at least 1");

  c = valid_config();
  c.preferred_batch_sizes = {4, 32};
  EXPECT_EQ(error_of(c), "preferred_batch_sizes[1] (32) must be in [1, max_batch_size (16)]");
  c.preferred_batch_sizes = {0};
  EXPECT_EQ(error_of(c), "preferred_batch_sizes[0] (0) must be in [1, max_batch_size (16)]");
  c.preferred_batch_sizes = {8, 4};
  EXPECT_EQ(error_of(c),
            "preferred_batch_sizes[1] (4) must be larger than preferred_batch_sizes[0] (8): list "
            "them in increasing order");
  c.preferred_batch_sizes = {4, 8, 16};
  EXPECT_TRUE(validate_scheduler_config(c).ok());

  c = valid_config();
  c.max_queue_delay_us = -1;
  EXPECT_EQ(error_of(c), "max_queue_delay_us (-1) must be at least 0");

  c = valid_config();
  c.max_num_batched_tokens = 8;
  EXPECT_EQ(error_of(c),
            "max_num_batched_tokens (8) must be at least max_batch_size (16): every running "
            "sequence needs one token per step");
  c.max_num_batched_tokens = 16;
  EXPECT_TRUE(validate_scheduler_config(c).ok());

  c = valid_config();
  c.max_queue_len = 0;
  EXPECT_EQ(error_of(c), "max_queue_len (0) must be at least 1");

  c = valid_config();
  c.kv_block_size = 0;
  EXPECT_EQ(error_of(c), "kv_block_size (0) must be in [1, 1024]");
  c.kv_block_size = 2048;
  EXPECT_EQ(error_of(c), "kv_block_size (2048) must be in [1, 1024]");

  c = valid_config();
  c.kv_blocks = 0;
  EXPECT_EQ(error_of(c), "kv_blocks (0) must be at least 1");

  c = valid_config();
  c.max_model_len = 1;
  EXPECT_EQ(error_of(c),
            "max_model_len (1) must be at least 2 (one prompt and one completion token)");
}

StatusOr<Options> parse(std::vector<std::string> args) {
  args.insert(args.begin(), "dshpc");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return Options::parse("dshpc serve", scheduler_option_specs(), static_cast<int>(argv.size()),
                        argv.data(), 1);
}

TEST(SchedulerConfig, OptionsResolveAgainstTheClusterAndTheModel) {
  StatusOr<Options> options = parse({"--max-batch-size", "8", "--preferred-batch-sizes", "2,4",
                                     "--max-queue-delay-us=500", "--max-num-batched-tokens", "32"});
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  StatusOr<SchedulerConfig> c = scheduler_config_from_options(*options, 300, 16, 4096);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->max_batch_size, 8);
  EXPECT_EQ(c->preferred_batch_sizes, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(c->max_queue_delay_us, 500);
  EXPECT_EQ(c->max_num_batched_tokens, 32);
  EXPECT_EQ(c->max_queue_len, SchedulerConfig{}.max_queue_len);
  EXPECT_EQ(c->kv_blocks, 300);
  EXPECT_EQ(c->kv_block_size, 16);
  EXPECT_EQ(c->max_model_len, 4096);  // 0: the model's
  EXPECT_EQ(describe_scheduler_config(*c),
            "max_batch_size=8 preferred_batch_sizes=[2,4] max_queue_delay_us=500 "
            "max_num_batched_tokens=32 max_queue_len=1024 kv_block_size=16 kv_blocks=300 "
            "max_model_len=4096");

  options = parse({"--max-model-len", "8192"});
  ASSERT_TRUE(options.ok());
  c = scheduler_config_from_options(*options, 300, 16, 4096);
  EXPECT_EQ(c.status().message(), "max_model_len (8192) is longer than the model's context (4096)");

  options = parse({"--max-batch-size", "4096"});
  ASSERT_TRUE(options.ok());
  c = scheduler_config_from_options(*options, 300, 16, 4096);
  EXPECT_THAT(c.status().message(), ::testing::HasSubstr("max_num_batched_tokens (2048)"));
}

// The deployment files are flat `key: value` maps (lists as [a, b]); this reads them without a
// YAML library, enough to check the keys and values the scheduler owns.
std::map<std::string, std::string> read_flat_yaml(const std::filesystem::path& path) {
  std::map<std::string, std::string> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    line = line.substr(0, line.find('#'));
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    auto trim = [](std::string s) {
      s.erase(0, s.find_first_not_of(" \t"));
      s.erase(s.find_last_not_of(" \t") + 1);
      return s;
    };
    std::string key = trim(line.substr(0, colon));
    std::string value = trim(line.substr(colon + 1));
    if (!value.empty() && value.front() == '[') {
      value.erase(std::remove_if(value.begin(), value.end(),
                                 [](char ch) { return ch == '[' || ch == ']' || ch == ' '; }),
                  value.end());
    }
    out[key] = value;
  }
  return out;
}

TEST(SchedulerConfig, DeploymentExamplesShowEveryBatchingFieldWithValidValues) {
  const std::filesystem::path dir = std::filesystem::path(DSHPC_SOURCE_DIR) / "configs" / "deploy";
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    ++files;
    SCOPED_TRACE(entry.path().filename().string());
    const std::map<std::string, std::string> keys = read_flat_yaml(entry.path());
    std::vector<std::string> args;
    for (const OptionSpec& spec : scheduler_option_specs()) {
      std::string key = spec.name;
      std::replace(key.begin(), key.end(), '-', '_');
      auto it = keys.find(key);
      ASSERT_NE(it, keys.end()) << "missing " << key;
      args.push_back("--" + spec.name + "=" + it->second);
    }
    ASSERT_TRUE(keys.count("kv_blocks") && keys.count("kv_block_size"));
    StatusOr<Options> options = parse(args);
    ASSERT_TRUE(options.ok()) << options.status().to_string();
    const int64_t kv_blocks = std::max<int64_t>(1000, std::stoll(keys.at("kv_blocks")));
    StatusOr<SchedulerConfig> c = scheduler_config_from_options(
        *options, kv_blocks, std::stoll(keys.at("kv_block_size")), 4096);
    EXPECT_TRUE(c.ok()) << c.status().to_string();
  }
  EXPECT_GE(files, 3);
}

}  // namespace
}  // namespace dshpc
