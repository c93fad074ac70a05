#include "coordinator/chat_template.h"

#include "coordinator/chat_template_ast.h"
#include "coordinator/chat_template_eval.h"
#include "coordinator/tokenizer.h"

namespace dshpc {

const char kDeepSeekLlmChatTemplate[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'Assistant:' }}{% endif %}";

StatusOr<ChatTemplate> ChatTemplate::compile(std::string source) {
  auto shared_source = std::make_shared<const std::string>(jinja::normalize_newlines(source));
  ASSIGN_OR_RETURN(jinja::Body body, jinja::parse_template(*shared_source));
  ChatTemplate compiled;
  compiled.source_ = std::move(shared_source);
  compiled.body_ = std::make_shared<const jinja::Body>(std::move(body));
  return compiled;
}

StatusOr<std::string> ChatTemplate::render(const boost::json::object& variables) const {
  return jinja::render_template(*source_, *body_, variables);
}

StatusOr<std::string> render_deepseek_llm_chat(const boost::json::array& messages,
                                               bool add_generation_prompt,
                                               std::string_view bos_token,
                                               std::string_view eos_token) {
  std::string text(bos_token);
  for (size_t i = 0; i < messages.size(); ++i) {
    std::string where = "messages[" + std::to_string(i) + "]";
    const boost::json::object* message = messages[i].if_object();
    if (message == nullptr) return invalid_argument(where + " must be an object");
    const boost::json::value* role = message->if_contains("role");
    if (role == nullptr || !role->is_string()) {
      return invalid_argument(where + ".role must be a string");
    }
    std::string_view role_name = role->get_string();
    const boost::json::value* content = message->if_contains("content");
    if (role_name != "user" && role_name != "assistant" && role_name != "system") continue;
    if (content == nullptr || !content->is_string()) {
      return invalid_argument(where + ".content must be a string for the DeepSeek-LLM format");
    }
    std::string_view body = content->get_string();
    if (role_name == "user") {
      text.append("User: ").append(body).append("\n\n");
    } else if (role_name == "assistant") {
      text.append("Assistant: ").append(body).append(eos_token);
    } else {
      text.append(body).append("\n\n");
    }
  }
  if (add_generation_prompt) text += "Assistant:";
  return text;
}

StatusOr<ChatRenderer> ChatRenderer::for_tokenizer(const Tokenizer& tokenizer) {
  if (tokenizer.chat_template().empty()) {
    return deepseek_llm_native(tokenizer.bos_token(), tokenizer.eos_token());
  }
  StatusOr<ChatRenderer> renderer =
      from_template(tokenizer.chat_template(), tokenizer.bos_token(), tokenizer.eos_token());
  if (!renderer.ok()) return renderer.status().with_context("tokenizer_config.json chat_template");
  return renderer;
}

ChatRenderer ChatRenderer::deepseek_llm_native(std::string bos_token, std::string eos_token) {
  ChatRenderer renderer;
  renderer.format_ = ChatFormat::kDeepSeekLlmNative;
  renderer.bos_token_ = std::move(bos_token);
  renderer.eos_token_ = std::move(eos_token);
  return renderer;
}

StatusOr<ChatRenderer> ChatRenderer::from_template(std::string source, std::string bos_token,
                                                   std::string eos_token) {
  ASSIGN_OR_RETURN(ChatTemplate compiled, ChatTemplate::compile(std::move(source)));
  ChatRenderer renderer;
  renderer.format_ = ChatFormat::kTemplate;
  renderer.template_ = std::make_shared<const ChatTemplate>(std::move(compiled));
  renderer.bos_token_ = std::move(bos_token);
  renderer.eos_token_ = std::move(eos_token);
  return renderer;
}

StatusOr<std::string> ChatRenderer::render(const boost::json::array& messages,
                                           const ChatOptions& options) const {
  if (format_ == ChatFormat::kDeepSeekLlmNative) {
    return render_deepseek_llm_chat(messages, options.add_generation_prompt, bos_token_,
                                    eos_token_);
  }
  // The variables transformers' apply_chat_template passes: the special tokens, messages,
  // tools and documents (None unless given), add_generation_prompt, then any extra kwargs.
  boost::json::object variables;
  variables["bos_token"] = bos_token_;
  variables["eos_token"] = eos_token_;
  variables["messages"] = messages;
  variables["tools"] = nullptr;
  variables["documents"] = nullptr;
  variables["add_generation_prompt"] = options.add_generation_prompt;
  for (const auto& [key, value] : options.extra_variables) variables[key] = value;
  return template_->render(variables);
}

StatusOr<std::vector<int32_t>> ChatRenderer::render_ids(const Tokenizer& tokenizer,
                                                        const boost::json::array& messages,
                                                        const ChatOptions& options) const {
  ASSIGN_OR_RETURN(std::string text, render(messages, options));
  return tokenizer.encode(text, /*add_special_tokens=*/false);
}

}  // namespace dshpc
