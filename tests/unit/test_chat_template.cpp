// Chat templates: the DeepSeek-V3 template from tokenizer_config.json against chat_golden.json,
// the Jinja subset against outputs of real Jinja, DeepSeek-LLM's native format, and errors.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <fstream>
#include <sstream>

#include "coordinator/chat_template.h"
#include "coordinator/tokenizer.h"

namespace dshpc {
namespace {

constexpr char kTokenizerDir[] = DSHPC_SOURCE_DIR "/configs/tokenizers/deepseek-v3";
constexpr char kChatGolden[] = DSHPC_FIXTURES_DIR "/tokenizer/deepseek-v3/chat_golden.json";
constexpr char kBos[] = "<｜begin▁of▁sentence｜>";
constexpr char kEos[] = "<｜end▁of▁sentence｜>";

boost::json::value read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return boost::json::parse(buffer.str());
}

class ChatTemplateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::load(kTokenizerDir);
    ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
    tokenizer_ = std::move(loaded).value().release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  static const Tokenizer* tokenizer_;
};
const Tokenizer* ChatTemplateTest::tokenizer_ = nullptr;

TEST_F(ChatTemplateTest, GoldenConversationsRenderAndEncodeExactly) {
  StatusOr<ChatRenderer> renderer = ChatRenderer::for_tokenizer(*tokenizer_);
  ASSERT_TRUE(renderer.ok()) << renderer.status().to_string();
  EXPECT_EQ(renderer->format(), ChatFormat::kTemplate);
  boost::json::value golden = read_json(kChatGolden);
  ASSERT_TRUE(golden.is_array());
  ASSERT_FALSE(golden.as_array().empty());
  for (size_t i = 0; i < golden.as_array().size(); ++i) {
    const boost::json::object& entry = golden.as_array()[i].as_object();
    ChatOptions options;
    options.add_generation_prompt = entry.at("add_generation_prompt").as_bool();
    const boost::json::array& messages = entry.at("messages").as_array();
    StatusOr<std::string> rendered = renderer->render(messages, options);
    ASSERT_TRUE(rendered.ok()) << "case " << i << ": " << rendered.status().to_string();
    ASSERT_EQ(*rendered, std::string(entry.at("rendered").as_string())) << "case " << i;
    std::vector<int32_t> expected_ids;
    for (const auto& id : entry.at("ids").as_array()) {
      expected_ids.push_back(static_cast<int32_t>(id.as_int64()));
    }
    StatusOr<std::vector<int32_t>> ids = renderer->render_ids(*tokenizer_, messages, options);
    ASSERT_TRUE(ids.ok()) << ids.status().to_string();
    ASSERT_EQ(*ids, expected_ids) << "case " << i;
  }
}

// Expected text from Jinja2 3.1.6 with DeepSeek-V3's template and transformers' settings.
TEST_F(ChatTemplateTest, DeepSeekV3ToolCallsRenderAsTheTemplateSays) {
  StatusOr<ChatRenderer> renderer = ChatRenderer::for_tokenizer(*tokenizer_);
  ASSERT_TRUE(renderer.ok());
  boost::json::array messages = boost::json::parse(R"([
    {"role": "system", "content": "S1"}, {"role": "system", "content": "S2"},
    {"role": "user", "content": "What is the weather?"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"type": "function",
       "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
      {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
    {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "12:00"},
    {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "Thanks"}])")
                                    .as_array();
  StatusOr<std::string> rendered = renderer->render(messages);
  ASSERT_TRUE(rendered.ok()) << rendered.status().to_string();
  EXPECT_EQ(
      *rendered,
      "<｜begin▁of▁sentence｜>S1\n\nS2<｜User｜>What is the "
      "weather?<｜Assistant｜><｜tool▁calls▁begin｜>"
      "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```"
      "<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```"
      "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜>"
      "<｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>\n<｜tool▁output▁begin｜>12:00"
      "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>It is sunny.<｜end▁of▁sentence｜><｜User｜>Thanks"
      "<｜Assistant｜>");
}

TEST_F(ChatTemplateTest, MissingContentIsAClearError) {
  StatusOr<ChatRenderer> renderer = ChatRenderer::for_tokenizer(*tokenizer_);
  ASSERT_TRUE(renderer.ok());
  boost::json::array messages = boost::json::parse(R"([{"role": "user"}])").as_array();
  StatusOr<std::string> rendered = renderer->render(messages);
  ASSERT_FALSE(rendered.ok());
  EXPECT_NE(rendered.status().message().find("undefined"), std::string::npos)
      << rendered.status().message();
  EXPECT_NE(rendered.status().message().find("chat template, line "), std::string::npos);
}

struct JinjaCase {
  const char* source;
  const char* expected;
};

// Expected outputs produced by Jinja2 3.1.6 in transformers' chat-template environment
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, its tojson).
const JinjaCase kJinjaCases[] = {
    {"a  {%- if true -%}  b  {%- endif -%}  c", "abc"},
    {"line1\n  {% if x %}\n"
     "    yes\n  {% endif %}\n"
     "line2\n",
     "line1\n    yes\nline2"},
    {"{% for m in xs %}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endf"
     "or %}",
     "1/3,2/3,3/3"},
    {"{% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}{% endf"
     "or %}{{ ns.n }}",
     "10"},
    {"{% set y = 1 %}{% for i in [1, 2] %}{% set y = y + i %}{{ y }}{% endfor %}{{ y }}", "231"},
    {"{{ xs|length }} {{ 'Hi'|upper }} {{ ' pad '|trim }} {{ xs|join('-') }} {{ none|defau"
     "lt('d') }} {{ missing|default('d') }} {{ xs|first }} {{ xs|last }}",
     "3 HI pad 1-2-3 None d 1 3"},
    {"{{ obj|tojson }}\n{{ obj|tojson(indent=2) }}\n"
     "{{ d|tojson(sort_keys=true) }}",
     "{\"name\": \"f\", \"args\": {\"a\": [1, 2.5, null, true], \"u\": \"é\\\"\\n"
     "\"}}\n{\n  \"name\": \"f\",\n"
     "  \"args\": {\n    \"a\": [\n"
     "      1,\n      2.5,\n"
     "      null,\n      true\n"
     "    ],\n    \"u\": \"é\\\"\\n"
     "\"\n  }\n}\n{\"k\": \"v\", \"n\": 2}"},
    {"{{ x is defined }} {{ y is defined }} {{ none is none }} {{ 'a' is string }} {{ d is"
     " mapping }} {{ 3 is odd }} {{ x is not none }}",
     "True False True True True True True"},
    {"{{ s.strip() }}|{{ s.split('</think>')[-1] }}|{{ s.startswith(' a') }}|{{ s[1:4] }}|"
     "{{ s|replace('a', 'b') }}|{{ s.split() }}|{{ s[::-1] }}",
     "a</think>b|b |True|a</| b</think>b |['a</think>b']| b>kniht/<a "},
    {"{{ 'a' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in d }} {{ 'z' not in d }}",
     "True True True True"},
    {"{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 +"
     " 2 * 3 }} {{ 'a' ~ 1 ~ none }} {{ 1 < 2 <= 2 }}",
     "3 -4 1 2 3.5 1024 7 a1None True"},
    {"{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif"
     " %}{% endfor %}",
     "onetwomany"},
    {"{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{{ d.get('n') }}{{ d.get('zz'"
     ", 'dflt') }}",
     "k=v;n=2;2dflt"},
    {"{% for x in xs if x > 1 %}{{ x }}{% else %}empty{% endfor %}|{% for x in [] %}{{ x }"
     "}{% else %}empty{% endfor %}",
     "23|empty"},
    {"{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% br"
     "eak %}{% endif %}{{ x }}{% endfor %}",
     "0134"},
    {"{% set greeting %}Hello {{ name }}{% endset %}{{ greeting|upper }}", "HELLO ANN"},
    {"{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(',')"
     " }}",
     "u1,u2"},
    {"{{ [1, 'a', none, true] }} {{ {'k': 1.5} }} {{ 1.0 }} {{ \"it's\" }}",
     "[1, 'a', None, True] {'k': 1.5} 1.0 it's"},
    {"a{# comment #}b { not a tag }", "ab { not a tag }"},
    {"{{ 'tab\\there' }} {{ \"q'\" }} {{ '\\u00e9' }}", "tab\there q' é"},
    {"{%- for message in messages -%}\n"
     "  {%- if loop.first and message.role == 'system' -%}\n"
     "    [{{ message.content }}]\n"
     "  {%- else -%}\n    <{{ message['role'] }}>{{ message.content | trim }}\n"
     "  {% endif -%}\n{%- endfor %}\n",
     "[S]<user>u1\n<assistant>a1\n"
     "<user>u2\n"},
    {"{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set"
     " rest = messages[1:] %}{% else %}{% set sys = '' %}{% set rest = messages %}{% endif"
     " %}{{ sys }}:{{ rest|length }}",
     "S:3"},
    {"{{ (xs|list + [4])|join }} {{ 'x' * 3 }} {{ -xs[0] }} {{ not x }} {{ x and 'yes' or "
     "'no' }}",
     "1234 xxx -1 False yes"},
    {"  {% for i in xs %}\n"
     "    item {{ i }}\n  {% endfor %}\n"
     "  done",
     "    item 1\n    item 2\n"
     "    item 3\n  done"},
    {"{{ 'A' if x else 'B' }}{{ 'C' if not x }}!", "A!"},
};

TEST(ChatJinjaSubset, MatchesJinjaOnCommonConstructs) {
  boost::json::object variables = boost::json::parse(R"({
    "xs": [1, 2, 3], "d": {"k": "v", "n": 2}, "s": " a</think>b ", "x": true, "name": "Ann",
    "obj": {"name": "f", "args": {"a": [1, 2.5, null, true], "u": "é\"\n"}},
    "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                 {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}]})")
                                      .as_object();
  for (const JinjaCase& c : kJinjaCases) {
    StatusOr<ChatTemplate> compiled = ChatTemplate::compile(c.source);
    ASSERT_TRUE(compiled.ok()) << c.source << "\n" << compiled.status().to_string();
    StatusOr<std::string> rendered = compiled->render(variables);
    ASSERT_TRUE(rendered.ok()) << c.source << "\n" << rendered.status().to_string();
    EXPECT_EQ(*rendered, c.expected) << "template: " << c.source;
  }
}

TEST(ChatJinjaSubset, ErrorsNameTheLineAndColumn) {
  StatusOr<ChatTemplate> unclosed = ChatTemplate::compile("ok\n{% if x %}never closed");
  ASSERT_FALSE(unclosed.ok());
  EXPECT_NE(unclosed.status().message().find("endif"), std::string::npos);

  StatusOr<ChatTemplate> bad = ChatTemplate::compile("line one\n  {{ 1 + }}");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("line 2, column"), std::string::npos)
      << bad.status().message();

  StatusOr<ChatTemplate> macro = ChatTemplate::compile("{% macro f() %}x{% endmacro %}");
  ASSERT_FALSE(macro.ok());
  EXPECT_EQ(macro.status().code(), StatusCode::kUnimplemented);

  StatusOr<ChatTemplate> raising =
      ChatTemplate::compile("{{ raise_exception('Conversation roles must alternate') }}");
  ASSERT_TRUE(raising.ok());
  StatusOr<std::string> raised = raising->render({});
  ASSERT_FALSE(raised.ok());
  EXPECT_NE(raised.status().message().find("Conversation roles must alternate"), std::string::npos);

  // Hostile nesting is an error, not a stack overflow.
  StatusOr<ChatTemplate> deep = ChatTemplate::compile("{{ " + std::string(100000, '(') + "1" +
                                                      std::string(100000, ')') + " }}");
  EXPECT_FALSE(deep.ok());
  std::string nested_ifs;
  for (int i = 0; i < 5000; ++i) nested_ifs += "{% if true %}";
  EXPECT_FALSE(ChatTemplate::compile(nested_ifs).ok());

  StatusOr<ChatTemplate> undefined_add = ChatTemplate::compile("{{ 'a' + nothing }}");
  ASSERT_TRUE(undefined_add.ok());
  EXPECT_FALSE(undefined_add->render({}).ok());
}

// A multi-line template with indentation, comments, whitespace control, slicing, tool calls,
// tojson(indent=2) and tests; expected output from Jinja2 3.1.6 as above.
constexpr char kMultiLineTemplate[] =
    R"J({#- A template in the style of instruction models: system first, then turns. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] | trim %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system = "" %}
    {%- set turns = messages %}
{%- endif %}
{{- bos_token }}
{%- if system %}
<<SYS>>{{ system }}<</SYS>>
{% endif %}
{%- for message in turns %}
    {%- if message.role not in ['user', 'assistant', 'tool'] %}
        {{- raise_exception('unknown role ' ~ message.role) }}
    {%- endif %}
    {%- if message.role == 'user' %}
[{{ loop.index }}] user: {{ message.content | trim }}
    {%- elif message.tool_calls is defined and message.tool_calls %}
        {%- for call in message.tool_calls %}
call {{ call.function.name }}({{ call.function.arguments | tojson(indent=2) }})
        {%- endfor %}
    {%- elif message.role == 'tool' %}
result: {% if message.content is mapping %}{{ message.content | tojson }}
{%- else %}{{ message.content }}{% endif %}

    {%- else %}
assistant: {{ message.content.split('</think>')[-1] | trim }}{{ eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
assistant:
{%- endif %}
)J";

TEST(ChatJinjaSubset, MultiLineTemplateWithToolCalls) {
  StatusOr<ChatTemplate> compiled = ChatTemplate::compile(kMultiLineTemplate);
  ASSERT_TRUE(compiled.ok()) << compiled.status().to_string();
  boost::json::object variables = boost::json::parse(R"({"bos_token": "<s>", "eos_token": "</s>",
    "add_generation_prompt": true, "tools": null, "messages": [
      {"role": "system", "content": "  Be exact. "}, {"role": "user", "content": " Weather? "},
      {"role": "assistant", "content": null, "tool_calls": [{"type": "function",
        "function": {"name": "get", "arguments": {"city": "Zürich", "days": [1, 2]}}}]},
      {"role": "tool", "content": {"temp": 21.5}}, {"role": "tool", "content": "ok"},
      {"role": "assistant", "content": "<think>x</think> Sunny. "},
      {"role": "user", "content": "Thanks"}]})")
                                      .as_object();
  StatusOr<std::string> rendered = compiled->render(variables);
  ASSERT_TRUE(rendered.ok()) << rendered.status().to_string();
  EXPECT_EQ(*rendered,
            "<s><<SYS>>Be exact.<</SYS>>\n[1] user: Weather?call get({\n  \"city\": \"Zürich\",\n"
            "  \"days\": [\n    1,\n    2\n  ]\n})result: {\"temp\": 21.5}result: okassistant: "
            "Sunny.</s>[6] user: Thanksassistant:");

  variables["messages"] = boost::json::parse(R"([{"role": "robot", "content": "x"}])");
  StatusOr<std::string> raised = compiled->render(variables);
  ASSERT_FALSE(raised.ok());
  EXPECT_NE(raised.status().message().find("unknown role robot"), std::string::npos);
}

const char* const kDeepSeekLlmConversations[] = {
    R"([{"role": "user", "content": "Hello, how are you?"}])",
    R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}])",
    R"([{"role": "user", "content": "a"}, {"role": "tool", "content": "ignored"},
        {"role": "assistant", "content": "b"}])",
    R"([])",
};

TEST(ChatDeepSeekLlm, NativeFormatEqualsItsTemplate) {
  StatusOr<ChatRenderer> interpreted =
      ChatRenderer::from_template(kDeepSeekLlmChatTemplate, kBos, kEos);
  ASSERT_TRUE(interpreted.ok()) << interpreted.status().to_string();
  ChatRenderer native = ChatRenderer::deepseek_llm_native(kBos, kEos);
  EXPECT_EQ(native.format(), ChatFormat::kDeepSeekLlmNative);
  for (const char* conversation : kDeepSeekLlmConversations) {
    boost::json::array messages = boost::json::parse(conversation).as_array();
    for (bool generation_prompt : {false, true}) {
      ChatOptions options;
      options.add_generation_prompt = generation_prompt;
      StatusOr<std::string> expected = interpreted->render(messages, options);
      StatusOr<std::string> actual = native.render(messages, options);
      ASSERT_TRUE(expected.ok()) << expected.status().to_string();
      ASSERT_TRUE(actual.ok()) << actual.status().to_string();
      EXPECT_EQ(*actual, *expected) << conversation;
    }
  }
  // The documented shape, spelled out once.
  StatusOr<std::string> text =
      native.render(boost::json::parse(kDeepSeekLlmConversations[1]).as_array(), ChatOptions{});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, std::string(kBos) + "Be brief.\n\nUser: Hi\n\nAssistant: Hello!" + kEos +
                       "User: Why?\n\nAssistant:");
}

TEST(ChatDeepSeekLlm, RejectsMalformedMessages) {
  ChatRenderer native = ChatRenderer::deepseek_llm_native(kBos, kEos);
  EXPECT_FALSE(native.render(boost::json::parse(R"([42])").as_array()).ok());
  EXPECT_FALSE(native.render(boost::json::parse(R"([{"content": "x"}])").as_array()).ok());
  EXPECT_FALSE(
      native.render(boost::json::parse(R"([{"role": "user", "content": [1]}])").as_array()).ok());
}

}  // namespace
}  // namespace dshpc
