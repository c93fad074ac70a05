// A gtest fixture that runs a Gateway on 127.0.0.1 (ephemeral port) in front of the fake service.
#pragma once

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/gateway.h"
#include "coordinator/tokenizer.h"
#include "gateway_test_support.h"

namespace dshpc::gateway_test {

inline const Tokenizer& test_tokenizer() {
  static const Tokenizer* tokenizer = [] {
    StatusOr<std::unique_ptr<Tokenizer>> loaded =
        Tokenizer::load(DSHPC_SOURCE_DIR "/configs/tokenizers/deepseek-v3");
    if (!loaded.ok()) {
      ADD_FAILURE() << loaded.status().to_string();
      std::abort();
    }
    return std::move(loaded).value().release();
  }();
  return *tokenizer;
}

inline constexpr char kModel[] = "test-model";
inline constexpr char kScriptText[] = "Hello world! This is a test.";

class GatewayFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { test_tokenizer(); }

  void SetUp() override {
    config_.host = "127.0.0.1";
    config_.port = 0;
    config_.io_threads = 2;
    config_.served_model_name = kModel;
    config_.read_timeout = std::chrono::milliseconds(5000);
    service_ = std::make_unique<FakeInferenceService>();
    script_text(kScriptText);
  }

  void TearDown() override {
    gateway_.reset();  // before the service it talks to
    service_.reset();
  }

  void start() {
    gateway_ = std::make_unique<Gateway>(config_, *service_, test_tokenizer());
    Status started = gateway_->start();
    ASSERT_TRUE(started.ok()) << started.to_string();
    ASSERT_NE(gateway_->port(), 0);
  }

  uint16_t port() const { return gateway_->port(); }

  std::vector<int32_t> encode(const std::string& text, bool add_special = false) const {
    return test_tokenizer().encode(text, add_special).value();
  }

  // Every request generates `text`'s tokens, then finishes with `finish`.
  void script_text(const std::string& text, FinishReason finish = FinishReason::kStop,
                   size_t tokens_per_event = 1) {
    FakeScript script;
    script.tokens = encode(text);
    script.finish = finish;
    script.tokens_per_event = tokens_per_event;
    service_->set_script([script](const GenerationRequest&) { return script; });
  }

  HttpResult post(const std::string& target, const std::string& body,
                  const std::vector<std::string>& headers = {}) const {
    return http_call(port(), "POST", target, body, headers);
  }
  HttpResult get(const std::string& target) const { return http_call(port(), "GET", target); }

  static boost::json::value json_of(const HttpResult& result) {
    boost::system::error_code ec;
    boost::json::value value = boost::json::parse(result.body, ec);
    EXPECT_FALSE(ec) << "not JSON: " << result.body;
    return value;
  }

  // Checks the OpenAI error shape and returns the inner object.
  static boost::json::object expect_error(const HttpResult& result, int status,
                                          const std::string& param = {},
                                          const std::string& code = {}) {
    EXPECT_EQ(result.status, status) << result.body;
    boost::json::value body = json_of(result);
    if (!body.is_object() || !body.as_object().contains("error")) {
      ADD_FAILURE() << "no error object: " << result.body;
      return {};
    }
    boost::json::object error = body.at("error").as_object();
    EXPECT_TRUE(error.contains("message") && error.at("message").is_string()) << result.body;
    EXPECT_TRUE(error.contains("type") && error.at("type").is_string()) << result.body;
    EXPECT_TRUE(error.contains("param")) << result.body;
    EXPECT_TRUE(error.contains("code")) << result.body;
    if (!param.empty()) {
      EXPECT_EQ(error.at("param"), param.c_str()) << result.body;
    }
    if (!code.empty()) {
      EXPECT_EQ(error.at("code"), code.c_str()) << result.body;
    }
    return error;
  }

  GatewayConfig config_;
  std::unique_ptr<FakeInferenceService> service_;
  std::unique_ptr<Gateway> gateway_;
};

}  // namespace dshpc::gateway_test
