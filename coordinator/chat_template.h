// Chat templates: conversations rendered to prompt text exactly as the model's own template does.
//
// ChatTemplate is a small interpreter for the Jinja subset chat templates use, run with the
// settings transformers uses for apply_chat_template (trim_blocks, lstrip_blocks, loop controls,
// no autoescape, its tojson and raise_exception). Supported: text, {{ }}, {% if/elif/else %},
// {% for %} (tuple targets, loop filter, else, loop.index/index0/first/last/length/revindex,
// break/continue), {% set %} (names, tuples, namespace attributes, blocks), {% generation %},
// whitespace control, comments; expressions with literals, lists, dicts, attribute and item
// access, slices, calls, and/or/not, comparisons, in / not in, + - * / // % ** ~, conditional
// expressions; the tests defined, none, string, mapping, ... and the filters tojson, trim,
// length, default, join, map, selectattr, ... (see chat_template_builtins.cpp); namespace(),
// range(), raise_exception(), strftime_now(); str/dict methods such as strip, split,
// startswith, items, get. Macros, call blocks, includes and recursive loops are Unimplemented.
// Tool calls render as far as the template itself handles them (DeepSeek-V3's does).
//
// ChatRenderer picks the format for a tokenizer: its tokenizer_config.json chat_template through
// the interpreter when there is one, otherwise DeepSeek-LLM's "User: ...\n\nAssistant:" format,
// rendered natively.
#pragma once

#include <boost/json.hpp>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace dshpc {

class Tokenizer;
namespace jinja {
struct Node;
}

class ChatTemplate {
 public:
  // Parses `source`; a syntax error names the line and column.
  static StatusOr<ChatTemplate> compile(std::string source);

  // Renders with `variables` (messages, add_generation_prompt, bos_token, ...). Errors (an
  // undefined value used in +, raise_exception, an unsupported filter) name the line and column.
  StatusOr<std::string> render(const boost::json::object& variables) const;

  const std::string& source() const { return *source_; }

 private:
  std::shared_ptr<const std::string> source_;
  std::shared_ptr<const std::vector<jinja::Node>> body_;
};

// DeepSeek-LLM 7B/67B chat's template, as published in its tokenizer_config.json.
extern const char kDeepSeekLlmChatTemplate[];

// DeepSeek-LLM's chat format without the interpreter; equal to rendering kDeepSeekLlmChatTemplate:
//   BOS [system "\n\n"] ("User: " user "\n\n" | "Assistant: " assistant EOS)* ["Assistant:"]
// Messages need a string "role" and "content"; other roles are skipped, as the template does.
StatusOr<std::string> render_deepseek_llm_chat(const boost::json::array& messages,
                                               bool add_generation_prompt,
                                               std::string_view bos_token,
                                               std::string_view eos_token);

enum class ChatFormat { kTemplate, kDeepSeekLlmNative };

struct ChatOptions {
  bool add_generation_prompt = true;
  // More template variables (tools, documents, custom flags); they override the defaults.
  boost::json::object extra_variables;
};

class ChatRenderer {
 public:
  // The tokenizer's chat_template when it has one, else the native DeepSeek-LLM format.
  static StatusOr<ChatRenderer> for_tokenizer(const Tokenizer& tokenizer);
  static ChatRenderer deepseek_llm_native(std::string bos_token, std::string eos_token);
  static StatusOr<ChatRenderer> from_template(std::string source, std::string bos_token,
                                              std::string eos_token);

  ChatFormat format() const { return format_; }

  // `messages` is the OpenAI-style list of {"role", "content", ...} objects.
  StatusOr<std::string> render(const boost::json::array& messages,
                               const ChatOptions& options = {}) const;
  // render() then tokenizer.encode(text, add_special_tokens=false): templates write BOS.
  StatusOr<std::vector<int32_t>> render_ids(const Tokenizer& tokenizer,
                                            const boost::json::array& messages,
                                            const ChatOptions& options = {}) const;

 private:
  ChatFormat format_ = ChatFormat::kDeepSeekLlmNative;
  std::shared_ptr<const ChatTemplate> template_;
  std::string bos_token_;
  std::string eos_token_;
};

}  // namespace dshpc
