// Parser of the chat-template Jinja subset. Internal to coordinator/chat_template*:
// chat_template_parse.cpp splits the source into text and tags and parses statements;
// chat_template_parse_expr.cpp parses expressions by recursive descent with Jinja's precedence
// (or < and < not < comparisons < + - < ~ < * / // % < ** < unary < postfix and filters).
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/chat_template_ast.h"

namespace dshpc::jinja::detail {

struct Segment {
  enum class Kind { kText, kExpression, kStatement } kind;
  size_t begin;  // text: offset of the text; tags: offset of the tag's content
  std::string text;
  size_t content_end = 0;  // tags: end of the content
};

// Text and tags after whitespace control ("{%-", "-%}"), trim_blocks and lstrip_blocks.
StatusOr<std::vector<Segment>> split_segments(const std::string& source);

struct Token {
  enum class Type { kName, kString, kInteger, kFloat, kOperator, kEnd } type;
  std::string text;  // name, operator, or the unescaped string literal
  Value value;       // numbers
  size_t position;
};

// Tokens of source[begin, end), ending with a kEnd token.
StatusOr<std::vector<Token>> tokenize(const std::string& source, size_t begin, size_t end);

class Parser {
 public:
  Parser(const std::string& source, std::vector<Segment> segments)
      : source_(source), segments_(std::move(segments)) {}

  StatusOr<Body> parse();

 private:
  // Statements (chat_template_parse.cpp).
  StatusOr<Body> parse_body(const std::vector<std::string>& end_keywords, std::string* ended);
  Status parse_statement(Body* body);
  Status parse_if(size_t position, Body* body);
  Status parse_for(size_t position, Body* body);
  Status parse_set(size_t position, Body* body);
  Status load_tag(const Segment& segment);

  // Expressions (chat_template_parse_expr.cpp).
  StatusOr<ExprPtr> parse_expression();
  StatusOr<ExprPtr> parse_or();
  StatusOr<ExprPtr> parse_and();
  StatusOr<ExprPtr> parse_not();
  StatusOr<ExprPtr> parse_compare();
  StatusOr<ExprPtr> parse_math1();
  StatusOr<ExprPtr> parse_concat();
  StatusOr<ExprPtr> parse_math2();
  StatusOr<ExprPtr> parse_pow();
  StatusOr<ExprPtr> parse_unary();
  StatusOr<ExprPtr> parse_primary();
  StatusOr<ExprPtr> parse_postfix(ExprPtr node);
  StatusOr<ExprPtr> parse_filters_and_tests(ExprPtr node);
  Status parse_call_arguments(Expr* call);

  const Token& peek(size_t ahead = 0) const {
    return tokens_[std::min(cursor_ + ahead, tokens_.size() - 1)];
  }
  bool at_operator(std::string_view op, size_t ahead = 0) const {
    return peek(ahead).type == Token::Type::kOperator && peek(ahead).text == op;
  }
  bool at_name(std::string_view name, size_t ahead = 0) const {
    return peek(ahead).type == Token::Type::kName && peek(ahead).text == name;
  }
  const Token& advance() { return tokens_[std::min(cursor_++, tokens_.size() - 1)]; }
  Status error(size_t position, const std::string& what) const;
  Status expect_operator(std::string_view op);
  Status expect_end();
  StatusOr<std::string> expect_name();
  static ExprPtr make(Expr::Kind kind, size_t position, std::string name = {});

  // Bounds recursion so that a hostile template (thousands of nested brackets or blocks) is an
  // error, not a stack overflow.
  static constexpr int kMaxDepth = 256;
  class DepthGuard {
   public:
    explicit DepthGuard(Parser* parser) : parser_(parser) { ++parser_->depth_; }
    ~DepthGuard() { --parser_->depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

   private:
    Parser* parser_;
  };
  Status check_depth(size_t position) const;

  const std::string& source_;
  std::vector<Segment> segments_;
  size_t segment_index_ = 0;
  std::vector<Token> tokens_;
  size_t cursor_ = 0;
  int depth_ = 0;
};

}  // namespace dshpc::jinja::detail
