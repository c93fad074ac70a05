#include "coordinator/unicode.h"

namespace dshpc {
namespace {

// Length of the sequence that `lead` starts (1..4) and the allowed range of its second byte
// (Unicode Table 3-7, which rules out overlongs, surrogates and values above U+10FFFF).
// length 0 marks a byte that can never start a character.
struct LeadInfo {
  uint8_t length;
  uint8_t second_lo;
  uint8_t second_hi;
};

LeadInfo lead_info(uint8_t lead) {
  if (lead < 0x80) return {1, 0, 0};
  if (lead < 0xC2) return {0, 0, 0};
  if (lead < 0xE0) return {2, 0x80, 0xBF};
  if (lead == 0xE0) return {3, 0xA0, 0xBF};
  if (lead == 0xED) return {3, 0x80, 0x9F};
  if (lead < 0xF0) return {3, 0x80, 0xBF};
  if (lead == 0xF0) return {4, 0x90, 0xBF};
  if (lead < 0xF4) return {4, 0x80, 0xBF};
  if (lead == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

struct ByteLevelTables {
  std::array<uint32_t, 256> byte_to_char{};
  std::array<int16_t, 324> char_to_byte{};  // code points below 324 cover the whole alphabet

  ByteLevelTables() {
    char_to_byte.fill(-1);
    // Printable bytes keep their Latin-1 code point; the others get U+0100 + n in byte order.
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      byte_to_char[b] = printable(b) ? static_cast<uint32_t>(b) : next++;
      char_to_byte[byte_to_char[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& byte_level_tables() {
  static const ByteLevelTables tables;
  return tables;
}

}  // namespace

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t next_code_point(std::string_view text, size_t* pos) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t i = *pos;
  uint32_t lead = s[i];
  if (lead < 0x80) {
    *pos = i + 1;
    return lead;
  }
  int length = lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
  uint32_t cp = lead & (0x7F >> length);
  for (int k = 1; k < length && i + k < text.size(); ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
  *pos = i + length;
  return cp;
}

bool is_valid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, eight bytes at a time.
    while (i + 8 <= n) {
      uint64_t word;
      __builtin_memcpy(&word, s + i, 8);
      if (word & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    LeadInfo info = lead_info(s[i]);
    if (info.length == 0 || i + info.length > n) return false;
    if (s[i + 1] < info.second_lo || s[i + 1] > info.second_hi) return false;
    for (int k = 2; k < info.length; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
    }
    i += info.length;
  }
  return true;
}

size_t append_utf8_lossy(std::string_view bytes, bool final, std::string* out) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    size_t ascii_end = i;
    while (ascii_end < n && s[ascii_end] < 0x80) ++ascii_end;
    out->append(bytes.data() + i, ascii_end - i);
    i = ascii_end;
    if (i >= n) break;

    LeadInfo info = lead_info(s[i]);
    if (info.length == 0) {
      append_utf8(kReplacementCharacter, out);
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool ill_formed = false;
    for (int k = 1; k < info.length; ++k, ++j) {
      if (j >= n) {
        if (!final) return i;  // a valid prefix cut by the end of the input: keep it for later
        break;
      }
      uint8_t lo = k == 1 ? info.second_lo : 0x80;
      uint8_t hi = k == 1 ? info.second_hi : 0xBF;
      if (s[j] < lo || s[j] > hi) {
        ill_formed = true;
        break;
      }
    }
    if (ill_formed || j - i < info.length) {
      // The maximal subpart s[i, j) becomes one replacement character; s[j] starts afresh.
      append_utf8(kReplacementCharacter, out);
      i = j;
      continue;
    }
    out->append(bytes.data() + i, info.length);
    i = j;
  }
  return n;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  append_utf8_lossy(bytes, /*final=*/true, &out);
  return out;
}

bool is_unicode_whitespace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

uint32_t byte_level_char(uint8_t byte) {
  return byte_level_tables().byte_to_char[byte];
}

int byte_level_byte(uint32_t cp) {
  const auto& table = byte_level_tables().char_to_byte;
  return cp < table.size() ? table[cp] : -1;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_utf8(byte_level_char(b), &out);
  return out;
}

std::string byte_level_decode(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    int b = byte_level_byte(next_code_point(token, &pos));
    if (b < 0) return std::string(token);
    out.push_back(static_cast<char>(b));
  }
  return out;
}

}  // namespace dshpc
