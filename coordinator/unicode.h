// UTF-8 helpers for the tokenizer: validation, lossy decoding that matches Rust's
// String::from_utf8_lossy (and Python's errors="replace"), and the GPT-2 byte-level alphabet.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dshpc {

inline constexpr uint32_t kReplacementCharacter = 0xFFFD;

// Appends the UTF-8 encoding of `code_point` (which must be a Unicode scalar value).
void append_utf8(uint32_t code_point, std::string* out);

// Decodes the code point at `text[*pos]`, advancing *pos past it. `text` must be valid UTF-8.
uint32_t next_code_point(std::string_view text, size_t* pos);

// True when `text` is well-formed UTF-8 (no overlongs, surrogates or values above U+10FFFF).
bool is_valid_utf8(std::string_view text);

// Appends `bytes` to *out as UTF-8, replacing each maximal ill-formed subsequence with U+FFFD
// (the Unicode "maximal subpart" practice used by Rust, Python and WHATWG). When `final` is false,
// a trailing sequence that is a valid but incomplete prefix of a character is not consumed, so a
// streaming caller can prepend it to the next bytes. Returns the number of bytes consumed.
size_t append_utf8_lossy(std::string_view bytes, bool final, std::string* out);

// append_utf8_lossy(bytes, /*final=*/true) into a new string.
std::string utf8_lossy(std::string_view bytes);

// Unicode White_Space property (what Rust's char::is_whitespace and regex \s test).
bool is_unicode_whitespace(uint32_t code_point);

// GPT-2 byte-level alphabet: every byte maps to one printable code point (printable Latin-1 maps
// to itself; the rest to U+0100..U+0143). byte_level_char(b) gives that code point;
// byte_level_byte(cp) inverts it, or returns -1 when cp is not in the alphabet.
uint32_t byte_level_char(uint8_t byte);
int byte_level_byte(uint32_t code_point);

// The byte-level string of `bytes` (each byte replaced by its alphabet character, as UTF-8).
std::string byte_level_encode(std::string_view bytes);

// Inverse of byte_level_encode for one vocabulary token: maps each character back to its byte.
// As Hugging Face's ByteLevel decoder does, a token holding any character outside the alphabet is
// returned unchanged (its own UTF-8 bytes).
std::string byte_level_decode(std::string_view token);

}  // namespace dshpc
