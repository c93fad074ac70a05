#include <gtest/gtest.h>

#include <cmath>

#include "common/dtype.h"
#include "common/status.h"

namespace dshpc {
namespace {

TEST(DType, ParsesSafetensorsNames) {
  EXPECT_EQ(parse_dtype("BF16"), DType::kBF16);
  EXPECT_EQ(parse_dtype("F8_E4M3"), DType::kF8E4M3);
  EXPECT_FALSE(parse_dtype("F4").has_value());
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kF8E4M3), 1u);
}

TEST(DType, Bf16RoundTripAndRounding) {
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-2.5f)), -2.5f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST(DType, F16Values) {
  EXPECT_EQ(f16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_float(0xc000), -2.0f);
  EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_float(0x7bff), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_float(0x7c00)));
}

TEST(DType, F8E4M3Values) {
  EXPECT_EQ(f8e4m3_to_float(0x38), 1.0f);    // exponent 7, mantissa 0
  EXPECT_EQ(f8e4m3_to_float(0x7e), 448.0f);  // largest finite
  EXPECT_EQ(f8e4m3_to_float(0xfe), -448.0f);
  EXPECT_EQ(f8e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_TRUE(std::isnan(f8e4m3_to_float(0x7f)));
}

TEST(Status, ContextAndMacros) {
  auto fails = []() -> Status { return invalid_argument("bad field"); };
  auto outer = [&]() -> Status {
    RETURN_IF_ERROR(fails());
    return ok_status();
  };
  Status s = outer();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.with_context("config.json").message(), "config.json: bad field");
  auto value = []() -> StatusOr<int> { return 7; };
  auto use = [&]() -> StatusOr<int> {
    ASSIGN_OR_RETURN(int v, value());
    return v + 1;
  };
  EXPECT_EQ(*use(), 8);
}

}  // namespace
}  // namespace dshpc
