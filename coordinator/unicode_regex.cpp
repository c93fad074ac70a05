#include "coordinator/unicode_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace dshpc {
namespace {

// Oniguruma's \s and \w as PCRE2 class items (without the brackets).
constexpr std::string_view kSpaceItems = "\\t-\\r\\x{85}\\p{Z}";
constexpr std::string_view kWordItems = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

std::string pcre2_message(int error_code) {
  PCRE2_UCHAR buffer[256];
  int length = pcre2_get_error_message(error_code, buffer, sizeof(buffer));
  if (length < 0) return "PCRE2 error " + std::to_string(error_code);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(length));
}

// Per-thread match state, shared by all patterns: one ovector pair is enough because only the
// whole match is used, and a JIT stack larger than PCRE2's 32 KiB default keeps long
// whitespace runs on the JIT path.
struct ThreadMatchState {
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;

  ThreadMatchState() {
    match_data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(64 * 1024, 4 * 1024 * 1024, nullptr);
    if (context != nullptr && jit_stack != nullptr) {
      pcre2_jit_stack_assign(context, nullptr, jit_stack);
    }
  }
  ~ThreadMatchState() {
    pcre2_match_data_free(match_data);
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(jit_stack);
  }
  ThreadMatchState(const ThreadMatchState&) = delete;
  ThreadMatchState& operator=(const ThreadMatchState&) = delete;
};

ThreadMatchState& thread_match_state() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

struct UnicodeRegex::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

UnicodeRegex::UnicodeRegex() = default;
UnicodeRegex::~UnicodeRegex() = default;
UnicodeRegex::UnicodeRegex(UnicodeRegex&&) noexcept = default;
UnicodeRegex& UnicodeRegex::operator=(UnicodeRegex&&) noexcept = default;

std::string oniguruma_to_pcre2(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  bool in_class = false;
  size_t i = 0;
  while (i < pattern.size()) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char escaped = pattern[i + 1];
      std::string_view items;
      if (escaped == 's' || escaped == 'S') items = kSpaceItems;
      if (escaped == 'w' || escaped == 'W') items = kWordItems;
      bool negated = escaped == 'S' || escaped == 'W';
      if (items.empty() || (in_class && negated)) {
        out.append(pattern.substr(i, 2));
      } else if (in_class) {
        out.append(items);
      } else {
        out.append(negated ? "[^" : "[").append(items).append("]");
      }
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      // A class opens; '^' and a ']' right after the opening are part of it, not its end.
      in_class = true;
      out.push_back(c);
      ++i;
      if (i < pattern.size() && pattern[i] == '^') out.push_back(pattern[i++]);
      if (i < pattern.size() && pattern[i] == ']') out.push_back(pattern[i++]);
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      size_t close = pattern.find(":]", i + 2);
      if (close != std::string_view::npos) {
        out.append(pattern.substr(i, close + 2 - i));  // POSIX class such as [:alpha:]
        i = close + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
    ++i;
  }
  return out;
}

StatusOr<UnicodeRegex> UnicodeRegex::compile(std::string_view pattern) {
  std::string translated = oniguruma_to_pcre2(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    return invalid_argument("regex /" + std::string(pattern) +
                            "/ does not compile: " + pcre2_message(error_code) + " at offset " +
                            std::to_string(error_offset) + " of the translated pattern /" +
                            translated + "/");
  }
  UnicodeRegex regex;
  regex.code_ = std::make_unique<Code>();
  regex.code_->code = code;
  regex.pattern_ = std::string(pattern);
  regex.jit_compiled_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

StatusOr<UnicodeRegex> UnicodeRegex::compile_literal(std::string_view literal) {
  std::string escaped;
  for (char c : literal) {
    unsigned char u = static_cast<unsigned char>(c);
    bool plain =
        u >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!plain) escaped.push_back('\\');
    escaped.push_back(c);
  }
  return compile(escaped);
}

StatusOr<UnicodeRegex::Match> UnicodeRegex::find(std::string_view subject, size_t start) const {
  if (!code_) return internal_error("UnicodeRegex::find on an empty regex");
  ThreadMatchState& state = thread_match_state();
  if (state.match_data == nullptr) return resource_exhausted("cannot allocate PCRE2 match data");
  static const char kEmpty[] = "";
  const char* data = subject.data() != nullptr ? subject.data() : kEmpty;
  // pcre2_jit_match skips pcre2_match's option and UTF checks; the caller guarantees valid UTF-8.
  auto subject_data = reinterpret_cast<PCRE2_SPTR>(data);
  int rc = jit_compiled_ ? pcre2_jit_match(code_->code, subject_data, subject.size(), start, 0,
                                           state.match_data, state.context)
                         : pcre2_match(code_->code, subject_data, subject.size(), start,
                                       PCRE2_NO_UTF_CHECK, state.match_data, state.context);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // retry with the interpreter, which uses the heap
    rc = pcre2_match(code_->code, subject_data, subject.size(), start,
                     PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, state.match_data, state.context);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return Match{};
  if (rc < 0) {
    return resource_exhausted("regex /" + pattern_ + "/ failed on a subject of " +
                              std::to_string(subject.size()) + " bytes: " + pcre2_message(rc));
  }
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.match_data);
  return Match{true, static_cast<size_t>(ovector[0]), static_cast<size_t>(ovector[1])};
}

}  // namespace dshpc
