// libFuzzer target: the DeepSeek-V3 tokenizer (configs/tokenizers/deepseek-v3) on arbitrary
// input. The first byte picks what the rest is:
//   even: text to encode (any bytes, valid UTF-8 or not), with add_special_tokens = bit 1;
//   odd:  token ids to decode, 3 bytes each (little endian), spread over [0, id_limit + 64) so
//         that unknown ids are exercised too.
//
// Oracles beyond "no crash, no sanitizer report":
//   - every encoded id is inside the vocabulary, and decoding them gives back the text with its
//     ill-formed UTF-8 replaced by U+FFFD (byte-level BPE loses nothing else);
//   - decode either fails (only for unknown ids) or gives valid UTF-8;
//   - StreamDecoder's pieces are each valid UTF-8 and concatenate to decode() of the same ids.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/tokenizer.h"
#include "coordinator/unicode.h"
#include "fuzz_check.h"

namespace {

using namespace dshpc;

const Tokenizer& tokenizer() {
  static const Tokenizer* loaded = [] {
    StatusOr<std::unique_ptr<Tokenizer>> t =
        Tokenizer::load(DSHPC_SOURCE_DIR "/configs/tokenizers/deepseek-v3");
    if (!t.ok()) {
      std::fprintf(stderr, "fuzz_tokenizer: %s\n", t.status().to_string().c_str());
      std::abort();
    }
    return std::move(t).value().release();
  }();
  return *loaded;
}

// Streams `ids` through a StreamDecoder; nullopt when an id is unknown.
std::optional<std::string> stream_decode(std::span<const int32_t> ids, bool skip_special) {
  StreamDecoder decoder(tokenizer(), skip_special);
  std::string text;
  for (int32_t id : ids) {
    StatusOr<std::string> piece = decoder.push(id);
    if (!piece.ok()) return std::nullopt;
    FUZZ_CHECK(is_valid_utf8(*piece));
    text += *piece;
  }
  std::string rest = decoder.finish();
  FUZZ_CHECK(is_valid_utf8(rest));
  return text + rest;
}

void check_decode(std::span<const int32_t> ids, bool skip_special) {
  StatusOr<std::string> text = tokenizer().decode(ids, skip_special);
  std::optional<std::string> streamed = stream_decode(ids, skip_special);
  if (!text.ok()) {
    FUZZ_CHECK(!streamed.has_value());  // both refuse an unknown id
    bool unknown = false;
    for (int32_t id : ids) unknown |= !tokenizer().id_to_token(id).has_value();
    FUZZ_CHECK(unknown);
    return;
  }
  FUZZ_CHECK(is_valid_utf8(*text));
  FUZZ_CHECK(streamed.has_value());
  FUZZ_CHECK(*streamed == *text);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const Tokenizer& t = tokenizer();
  if ((mode & 1) == 0) {
    const bool add_special = (mode & 2) != 0;
    StatusOr<std::vector<int32_t>> ids = t.encode(rest, add_special);
    FUZZ_CHECK(ids.ok());  // any bytes are text: ill-formed UTF-8 is replaced, not refused
    for (int32_t id : *ids) FUZZ_CHECK(id >= 0 && id < t.id_limit());
    if (!add_special) {
      StatusOr<std::string> back = t.decode(*ids);
      FUZZ_CHECK(back.ok());
      FUZZ_CHECK(*back == utf8_lossy(rest));
    }
    check_decode(*ids, /*skip_special=*/(mode & 4) != 0);
    return 0;
  }
  std::vector<int32_t> ids;
  const uint32_t span = static_cast<uint32_t>(t.id_limit()) + 64;
  for (size_t i = 0; i + 3 <= rest.size(); i += 3) {
    const uint32_t raw = static_cast<uint8_t>(rest[i]) | static_cast<uint8_t>(rest[i + 1]) << 8 |
                         static_cast<uint32_t>(static_cast<uint8_t>(rest[i + 2])) << 16;
    ids.push_back(static_cast<int32_t>(raw % span));
  }
  if ((mode & 2) != 0 && !ids.empty()) ids.back() = -1 - static_cast<int32_t>(ids.back() % 7);
  check_decode(ids, /*skip_special=*/(mode & 4) != 0);
  return 0;
}
