// SHA-256 against the NIST FIPS 180-4 example vectors, against coreutils' sha256sum on random
// data, and streaming (any split of the message) against one-shot hashing.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/sha256.h"
#include "safetensors_writer.h"

namespace dshpc {
namespace {

// Each test runs on the portable code and, where the CPU has them, on the SHA extensions.
class Sha256Test : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!GetParam() && !Sha256::hardware_accelerated()) {
      GTEST_SKIP() << "this CPU has no SHA extensions";
    }
    Sha256::force_portable(GetParam());
  }
  void TearDown() override { Sha256::force_portable(false); }
};
INSTANTIATE_TEST_SUITE_P(Paths, Sha256Test, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "portable" : "accelerated"; });

TEST_P(Sha256Test, NistExampleVectors) {
  // FIPS 180-4 examples (csrc.nist.gov, "SHA256.pdf" and "SHA2_Additional.pdf").
  EXPECT_EQ(Sha256::hex_of("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256::hex_of(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256::hex_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256::hex_of("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                           "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(Sha256::hex_of(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_P(Sha256Test, PaddingBoundaries) {
  // Lengths around the 55/56/64-byte padding edges, each against the streaming path fed one byte
  // at a time (a different code path through update()).
  for (size_t n : {55u, 56u, 57u, 63u, 64u, 65u, 119u, 120u, 128u}) {
    const std::string message(n, 'x');
    Sha256 bytewise;
    for (char c : message) bytewise.update(&c, 1);
    EXPECT_EQ(bytewise.finish_hex(), Sha256::hex_of(message)) << n;
  }
}

TEST_P(Sha256Test, AnySplitOfTheMessageGivesTheSameDigest) {
  std::mt19937 rng(7);
  std::vector<uint8_t> data(100003);
  for (uint8_t& b : data) b = static_cast<uint8_t>(rng());
  const std::string whole = Sha256::to_hex(Sha256::of(data.data(), data.size()));
  for (int trial = 0; trial < 5; ++trial) {
    Sha256 sha;
    size_t at = 0;
    while (at < data.size()) {
      const size_t n = std::min<size_t>(data.size() - at, rng() % 300);
      sha.update(data.data() + at, n);
      at += n;
    }
    EXPECT_EQ(sha.finish_hex(), whole);
  }
  // finish() resets: the object hashes a new message afterwards.
  Sha256 sha;
  sha.update("ab", 2);
  (void)sha.finish();
  sha.update("abc", 3);
  EXPECT_EQ(sha.finish_hex(), Sha256::hex_of("abc"));
}

TEST_P(Sha256Test, AgreesWithCoreutilsOnRandomData) {
  test_util::TempDir dir;
  std::mt19937 rng(11);
  std::vector<uint8_t> data(1 << 20 | 77);
  for (uint8_t& b : data) b = static_cast<uint8_t>(rng());
  const std::string path = dir.file("random.bin");
  test_util::write_bytes(path, data);
  FILE* pipe = popen(("sha256sum " + path + " 2>/dev/null").c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char line[128] = {};
  const bool got = std::fgets(line, sizeof(line), pipe) != nullptr;
  pclose(pipe);
  if (!got) GTEST_SKIP() << "sha256sum not available";
  EXPECT_EQ(std::string(line, 64), Sha256::to_hex(Sha256::of(data.data(), data.size())));
}

TEST(Sha256, AcceleratedAndPortableAgreeOnEveryLength) {
  if (!Sha256::hardware_accelerated()) GTEST_SKIP() << "this CPU has no SHA extensions";
  std::mt19937 rng(5);
  std::vector<uint8_t> data(4096);
  for (uint8_t& b : data) b = static_cast<uint8_t>(rng());
  for (size_t n = 0; n <= data.size(); n += 1 + n / 16) {
    Sha256::force_portable(true);
    const std::string portable = Sha256::to_hex(Sha256::of(data.data(), n));
    Sha256::force_portable(false);
    EXPECT_EQ(Sha256::to_hex(Sha256::of(data.data(), n)), portable) << n;
  }
}

TEST(Sha256, HexFormCheck) {
  EXPECT_TRUE(is_sha256_hex(Sha256::hex_of("abc")));
  EXPECT_FALSE(is_sha256_hex("abc"));
  EXPECT_FALSE(is_sha256_hex(std::string(64, 'A')));  // uppercase is not the form we write
  EXPECT_FALSE(is_sha256_hex(std::string(63, '0') + "g"));
}

}  // namespace
}  // namespace dshpc
