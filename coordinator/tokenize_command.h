// `dshpc tokenize --tokenizer DIR` and `dshpc detokenize --tokenizer DIR` (DESIGN.md contract).
//
// Input: JSON lines on `in`. Blank lines are skipped; every other line gives exactly one output
// line, so outputs pair with inputs in order.
//   tokenize:    {"text": "...", "add_special_tokens": false}  ->  {"ids": [1, 2, 3]}
//   detokenize:  {"ids": [1, 2, 3], "skip_special_tokens": false}  ->  {"text": "..."}
// (the boolean fields are optional and default to false: the ids are exactly tokenizers'
// encode(text, add_special_tokens=False), the text exactly decode(ids)).
// A bad line (not JSON, not an object, missing or mistyped field, unknown id) produces
// {"error": "line N: ..."} on `out` and "dshpc tokenize: line N: ..." on `err`, and the command
// goes on with the next line.
//
// Exit code: kTokenizeExitOk when every line was converted, kTokenizeExitBadInput when at least
// one line was reported as bad, kTokenizeExitLoadError when the tokenizer could not be loaded
// (the message goes to `err` and no input is read).
#pragma once

#include <iosfwd>
#include <string>

namespace dshpc {

inline constexpr int kTokenizeExitOk = 0;
inline constexpr int kTokenizeExitBadInput = 1;
inline constexpr int kTokenizeExitLoadError = 2;

int run_tokenize_command(const std::string& tokenizer_dir, bool detokenize, std::istream& in,
                         std::ostream& out, std::ostream& err);

}  // namespace dshpc
