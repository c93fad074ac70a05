// A compiled Unicode regular expression (PCRE2, UTF + UCP, JIT when available) with the
// matching semantics of Oniguruma, the engine Hugging Face tokenizers uses for its patterns.
//
// Oniguruma and PCRE2 agree on the syntax DeepSeek and GPT-2 style patterns use; they differ in
// two shorthand classes, which compile() rewrites before handing the pattern to PCRE2:
//   \s  Oniguruma: White_Space (TAB..CR, U+0085, Z)    PCRE2+UCP: Z and TAB..CR (no U+0085)
//   \w  Oniguruma: L, M, Nd, Pc                        PCRE2+UCP: L, N and '_'
// (\S, \W outside a character class are rewritten too; inside a class they are left to PCRE2.)
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace dshpc {

class UnicodeRegex {
 public:
  UnicodeRegex();
  ~UnicodeRegex();
  UnicodeRegex(UnicodeRegex&&) noexcept;
  UnicodeRegex& operator=(UnicodeRegex&&) noexcept;
  UnicodeRegex(const UnicodeRegex&) = delete;
  UnicodeRegex& operator=(const UnicodeRegex&) = delete;

  // Compiles `pattern`; an error names the offset and PCRE2's message.
  static StatusOr<UnicodeRegex> compile(std::string_view pattern);
  // A pattern that matches `literal` exactly (Split with a String pattern).
  static StatusOr<UnicodeRegex> compile_literal(std::string_view literal);

  struct Match {
    bool found = false;
    size_t begin = 0;
    size_t end = 0;
  };

  // Finds the leftmost match in `subject` that starts at or after `start`. `subject` must be valid
  // UTF-8 and `start` a character boundary; lookarounds see the whole subject. Fails only when
  // PCRE2 gives up (match or stack limit).
  StatusOr<Match> find(std::string_view subject, size_t start) const;

  // Calls on_match(begin, end) for each successive non-overlapping match, as an iterator over
  // matches does (an empty match advances the search by one character).
  template <typename OnMatch>
  Status for_each_match(std::string_view subject, OnMatch&& on_match) const;

  const std::string& pattern() const { return pattern_; }
  bool jit_compiled() const { return jit_compiled_; }

 private:
  struct Code;
  std::unique_ptr<Code> code_;
  std::string pattern_;
  bool jit_compiled_ = false;
};

// Rewrites Oniguruma shorthand classes into PCRE2 classes with the same meaning (see above).
std::string oniguruma_to_pcre2(std::string_view pattern);

template <typename OnMatch>
Status UnicodeRegex::for_each_match(std::string_view subject, OnMatch&& on_match) const {
  size_t start = 0;
  while (start <= subject.size()) {
    StatusOr<Match> match = find(subject, start);
    if (!match.ok()) return match.status();
    if (!match->found) break;
    on_match(match->begin, match->end);
    if (match->end > match->begin) {
      start = match->end;
    } else {
      if (match->end >= subject.size()) break;
      start = match->end + 1;
      while (start < subject.size() &&
             (static_cast<unsigned char>(subject[start]) & 0xC0) == 0x80) {
        ++start;
      }
    }
  }
  return ok_status();
}

}  // namespace dshpc
