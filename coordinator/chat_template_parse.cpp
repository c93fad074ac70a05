// Chat-template parser, part 1: the source split into text and tags, the tokenizer of a tag,
// and statements. Expressions are in chat_template_parse_expr.cpp.
#include <cstdlib>

#include "coordinator/chat_template_parser.h"
#include "coordinator/unicode.h"

namespace dshpc::jinja {
namespace detail {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// Finds the closing "}}" / "%}" of a tag, skipping string literals that could contain it.
size_t find_tag_close(const std::string& source, size_t from, char kind) {
  const char closer[3] = {kind == '{' ? '}' : kind, '}', '\0'};
  if (kind == '#') return source.find("#}", from);
  char quote = 0;
  for (size_t i = from; i + 1 < source.size(); ++i) {
    char c = source[i];
    if (quote != 0) {
      if (c == '\\') {
        ++i;
      } else if (c == quote) {
        quote = 0;
      }
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == closer[0] && source[i + 1] == closer[1]) {
      return i;
    }
  }
  return std::string::npos;
}

}  // namespace

StatusOr<std::vector<Segment>> split_segments(const std::string& source) {
  std::vector<Segment> segments;
  size_t i = 0;
  bool strip_leading = false;  // the previous tag ended with "-"
  bool trim_newline = false;   // the previous tag was a block or comment (trim_blocks)
  while (true) {
    size_t tag = std::string::npos;
    for (size_t search = i; search + 1 < source.size(); ++search) {
      search = source.find('{', search);
      if (search == std::string::npos || search + 1 >= source.size()) break;
      char next = source[search + 1];
      if (next == '{' || next == '%' || next == '#') {
        tag = search;
        break;
      }
    }
    size_t text_begin = i;
    size_t text_end = tag == std::string::npos ? source.size() : tag;
    if (strip_leading) {
      while (text_begin < text_end && is_space(source[text_begin])) ++text_begin;
    } else if (trim_newline && text_begin < text_end && source[text_begin] == '\n') {
      ++text_begin;
    }
    if (tag == std::string::npos) {
      if (text_end > text_begin) {
        segments.push_back(
            {Segment::Kind::kText, text_begin, source.substr(text_begin, text_end - text_begin)});
      }
      return segments;
    }

    char kind = source[tag + 1];
    size_t content_begin = tag + 2;
    char modifier = content_begin < source.size() ? source[content_begin] : '\0';
    if (modifier == '-') {
      while (text_end > text_begin && is_space(source[text_end - 1])) --text_end;
      ++content_begin;
    } else if (modifier == '+' && kind != '{') {
      ++content_begin;
    } else if (kind != '{') {
      // lstrip_blocks: spaces and tabs between a line start and a block tag go.
      size_t line_begin = text_end;
      while (line_begin > text_begin &&
             (source[line_begin - 1] == ' ' || source[line_begin - 1] == '\t')) {
        --line_begin;
      }
      if (line_begin == 0 || source[line_begin - 1] == '\n') text_end = line_begin;
    }
    if (text_end > text_begin) {
      segments.push_back(
          {Segment::Kind::kText, text_begin, source.substr(text_begin, text_end - text_begin)});
    }

    size_t close = find_tag_close(source, content_begin, kind);
    if (close == std::string::npos) {
      return invalid_argument("chat template, " + describe_position(source, tag) +
                              ": tag is never closed");
    }
    size_t content_end = close;
    strip_leading = false;
    trim_newline = kind != '{';
    if (content_end > content_begin && source[content_end - 1] == '-') {
      --content_end;
      strip_leading = true;
    } else if (content_end > content_begin && source[content_end - 1] == '+' && kind != '{') {
      --content_end;
      trim_newline = false;
    }
    if (kind != '#') {
      segments.push_back({kind == '{' ? Segment::Kind::kExpression : Segment::Kind::kStatement,
                          content_begin, "", content_end});
    }
    i = close + 2;
  }
}

namespace {

// Python string-literal escapes (what Jinja applies to its string literals).
void unescape_into(std::string_view body, std::string* out) {
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c != '\\' || i + 1 >= body.size()) {
      out->push_back(c);
      continue;
    }
    char e = body[++i];
    auto hex_code = [&](size_t digits) -> bool {
      if (i + digits >= body.size()) return false;  // needs body[i + 1 .. i + digits]
      std::string hex(body.substr(i + 1, digits));
      char* end = nullptr;
      unsigned long cp = std::strtoul(hex.c_str(), &end, 16);
      if (end != hex.c_str() + digits || cp > 0x10FFFF) return false;
      append_utf8(static_cast<uint32_t>(cp), out);
      i += digits;
      return true;
    };
    switch (e) {
      case 'n':
        out->push_back('\n');
        break;
      case 't':
        out->push_back('\t');
        break;
      case 'r':
        out->push_back('\r');
        break;
      case 'b':
        out->push_back('\b');
        break;
      case 'f':
        out->push_back('\f');
        break;
      case 'v':
        out->push_back('\v');
        break;
      case 'a':
        out->push_back('\a');
        break;
      case '0':
        out->push_back('\0');
        break;
      case '\\':
      case '\'':
      case '"':
        out->push_back(e);
        break;
      case '\n':
        break;  // line continuation
      case 'x':
        if (!hex_code(2)) out->append("\\x");
        break;
      case 'u':
        if (!hex_code(4)) out->append("\\u");
        break;
      case 'U':
        if (!hex_code(8)) out->append("\\U");
        break;
      default:
        out->push_back('\\');
        out->push_back(e);
    }
  }
}

}  // namespace

StatusOr<std::vector<Token>> tokenize(const std::string& source, size_t begin, size_t end) {
  std::vector<Token> tokens;
  auto error = [&](size_t at, const std::string& what) {
    return invalid_argument("chat template, " + describe_position(source, at) + ": " + what);
  };
  size_t i = begin;
  while (i < end) {
    char c = source[i];
    if (is_space(c)) {
      ++i;
      continue;
    }
    size_t start = i;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      while (i < end && (std::isalnum(static_cast<unsigned char>(source[i])) || source[i] == '_')) {
        ++i;
      }
      tokens.push_back({Token::Type::kName, source.substr(start, i - start), Value(), start});
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      while (i < end && (std::isdigit(static_cast<unsigned char>(source[i])) || source[i] == '_')) {
        ++i;
      }
      bool is_float = false;
      if (i + 1 < end && source[i] == '.' &&
          std::isdigit(static_cast<unsigned char>(source[i + 1]))) {
        is_float = true;
        ++i;
        while (i < end && std::isdigit(static_cast<unsigned char>(source[i]))) ++i;
      }
      if (i < end && (source[i] == 'e' || source[i] == 'E')) {
        size_t j = i + 1;
        if (j < end && (source[j] == '+' || source[j] == '-')) ++j;
        if (j < end && std::isdigit(static_cast<unsigned char>(source[j]))) {
          is_float = true;
          i = j;
          while (i < end && std::isdigit(static_cast<unsigned char>(source[i]))) ++i;
        }
      }
      std::string digits = source.substr(start, i - start);
      digits.erase(std::remove(digits.begin(), digits.end(), '_'), digits.end());
      Token token{is_float ? Token::Type::kFloat : Token::Type::kInteger, digits, Value(), start};
      token.value = is_float
                        ? Value(std::strtod(digits.c_str(), nullptr))
                        : Value(static_cast<int64_t>(std::strtoll(digits.c_str(), nullptr, 10)));
      tokens.push_back(std::move(token));
    } else if (c == '\'' || c == '"') {
      size_t j = i + 1;
      while (j < end && source[j] != c) j += source[j] == '\\' ? 2 : 1;
      if (j >= end) return error(start, "unterminated string literal");
      std::string text;
      unescape_into(std::string_view(source).substr(i + 1, j - i - 1), &text);
      tokens.push_back({Token::Type::kString, std::move(text), Value(), start});
      i = j + 1;
    } else {
      static constexpr std::string_view kTwoChar[] = {"//", "**", "==", "!=", "<=", ">="};
      std::string op(1, c);
      for (std::string_view two : kTwoChar) {
        if (source.compare(i, 2, two) == 0) op = std::string(two);
      }
      if (op.size() == 1 &&
          std::string_view("+-*/%~<>()[]{},.:|=").find(c) == std::string_view::npos) {
        return error(start, std::string("unexpected character '") + c + "'");
      }
      i += op.size();
      tokens.push_back({Token::Type::kOperator, op, Value(), start});
    }
  }
  tokens.push_back({Token::Type::kEnd, "", Value(), end});
  return tokens;
}

Status Parser::error(size_t position, const std::string& what) const {
  return invalid_argument("chat template, " + describe_position(source_, position) + ": " + what);
}

Status Parser::expect_operator(std::string_view op) {
  if (!at_operator(op)) return error(peek().position, "expected '" + std::string(op) + "'");
  advance();
  return ok_status();
}

Status Parser::expect_end() {
  if (peek().type != Token::Type::kEnd) {
    return error(peek().position, "unexpected '" + peek().text + "' at the end of the tag");
  }
  return ok_status();
}

StatusOr<std::string> Parser::expect_name() {
  if (peek().type != Token::Type::kName) return error(peek().position, "expected a name");
  return advance().text;
}

ExprPtr Parser::make(Expr::Kind kind, size_t position, std::string name) {
  auto expr = std::make_unique<Expr>();
  expr->kind = kind;
  expr->position = position;
  expr->name = std::move(name);
  return expr;
}

Status Parser::check_depth(size_t position) const {
  if (depth_ <= kMaxDepth) return ok_status();
  return error(position, "nested more than " + std::to_string(kMaxDepth) + " levels deep");
}

Status Parser::load_tag(const Segment& segment) {
  ASSIGN_OR_RETURN(tokens_, tokenize(source_, segment.begin, segment.content_end));
  cursor_ = 0;
  return ok_status();
}

StatusOr<Body> Parser::parse() {
  std::string ended;
  return parse_body({}, &ended);
}

// Parses nodes until a statement tag whose keyword is in `end_keywords`; that tag's tokens stay
// loaded, positioned after the keyword, and *ended names it.
StatusOr<Body> Parser::parse_body(const std::vector<std::string>& end_keywords,
                                  std::string* ended) {
  DepthGuard guard(this);
  RETURN_IF_ERROR(check_depth(segment_index_ < segments_.size() ? segments_[segment_index_].begin
                                                                : source_.size()));
  Body body;
  while (segment_index_ < segments_.size()) {
    const Segment& segment = segments_[segment_index_++];
    if (segment.kind == Segment::Kind::kText) {
      Node node{Node::Kind::kText, segment.begin};
      node.text = segment.text;
      body.push_back(std::move(node));
      continue;
    }
    RETURN_IF_ERROR(load_tag(segment));
    if (segment.kind == Segment::Kind::kExpression) {
      Node node{Node::Kind::kOutput, segment.begin};
      ASSIGN_OR_RETURN(node.expr, parse_expression());
      RETURN_IF_ERROR(expect_end());
      body.push_back(std::move(node));
      continue;
    }
    if (peek().type != Token::Type::kName) return error(segment.begin, "expected a tag name");
    const std::string& keyword = peek().text;
    if (std::find(end_keywords.begin(), end_keywords.end(), keyword) != end_keywords.end()) {
      *ended = keyword;
      advance();
      return body;
    }
    RETURN_IF_ERROR(parse_statement(&body));
  }
  if (!end_keywords.empty()) {
    return error(source_.size(), "missing {% " + end_keywords.back() + " %}");
  }
  ended->clear();
  return body;
}

Status Parser::parse_statement(Body* body) {
  size_t position = peek().position;
  std::string keyword = advance().text;
  if (keyword == "if") return parse_if(position, body);
  if (keyword == "for") return parse_for(position, body);
  if (keyword == "set") return parse_set(position, body);
  if (keyword == "break" || keyword == "continue") {
    RETURN_IF_ERROR(expect_end());
    body->push_back(
        Node{keyword == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, position});
    return ok_status();
  }
  if (keyword == "generation") {
    // transformers' {% generation %} marks assistant text for masks; it renders its body as is.
    RETURN_IF_ERROR(expect_end());
    std::string ended;
    ASSIGN_OR_RETURN(Body inner, parse_body({"endgeneration"}, &ended));
    RETURN_IF_ERROR(expect_end());
    for (Node& node : inner) body->push_back(std::move(node));
    return ok_status();
  }
  static const char* const kEndTags[] = {"elif",   "else",   "endif",
                                         "endfor", "endset", "endgeneration"};
  for (const char* end_tag : kEndTags) {
    if (keyword == end_tag) return error(position, "unexpected {% " + keyword + " %}");
  }
  return unimplemented("chat template, " + describe_position(source_, position) + ": the tag '" +
                       keyword + "' is not supported by this Jinja subset");
}

Status Parser::parse_if(size_t position, Body* body) {
  Node node{Node::Kind::kIf, position};
  ASSIGN_OR_RETURN(ExprPtr condition, parse_expression());
  RETURN_IF_ERROR(expect_end());
  while (true) {
    std::string ended;
    ASSIGN_OR_RETURN(Body branch, parse_body({"elif", "else", "endif"}, &ended));
    node.branches.emplace_back(std::move(condition), std::move(branch));
    if (ended == "elif") {
      ASSIGN_OR_RETURN(condition, parse_expression());
      RETURN_IF_ERROR(expect_end());
      continue;
    }
    RETURN_IF_ERROR(expect_end());
    if (ended == "else") {
      ASSIGN_OR_RETURN(node.else_body, parse_body({"endif"}, &ended));
      RETURN_IF_ERROR(expect_end());
    }
    break;
  }
  body->push_back(std::move(node));
  return ok_status();
}

Status Parser::parse_for(size_t position, Body* body) {
  Node node{Node::Kind::kFor, position};
  do {
    if (!node.targets.empty()) advance();  // the ','
    ASSIGN_OR_RETURN(std::string target, expect_name());
    node.targets.push_back(std::move(target));
  } while (at_operator(","));
  if (!at_name("in")) return error(peek().position, "expected 'in' in the for tag");
  advance();
  // Jinja parses the iterable without a conditional so that "if" introduces the loop filter.
  ASSIGN_OR_RETURN(node.expr, parse_or());
  if (at_name("if")) {
    advance();
    ASSIGN_OR_RETURN(node.filter, parse_expression());
  }
  if (at_name("recursive")) {
    return unimplemented("chat template, " + describe_position(source_, peek().position) +
                         ": recursive loops are not supported");
  }
  RETURN_IF_ERROR(expect_end());
  std::string ended;
  ASSIGN_OR_RETURN(node.body, parse_body({"else", "endfor"}, &ended));
  RETURN_IF_ERROR(expect_end());
  if (ended == "else") {
    ASSIGN_OR_RETURN(node.else_body, parse_body({"endfor"}, &ended));
    RETURN_IF_ERROR(expect_end());
  }
  body->push_back(std::move(node));
  return ok_status();
}

Status Parser::parse_set(size_t position, Body* body) {
  Node node{Node::Kind::kSet, position};
  ASSIGN_OR_RETURN(std::string name, expect_name());
  node.targets.push_back(std::move(name));
  if (at_operator(".")) {
    advance();
    ASSIGN_OR_RETURN(node.attribute, expect_name());
  } else {
    while (at_operator(",")) {
      advance();
      ASSIGN_OR_RETURN(std::string target, expect_name());
      node.targets.push_back(std::move(target));
    }
  }
  if (at_operator("=")) {
    advance();
    ASSIGN_OR_RETURN(node.expr, parse_expression());
    if (at_operator(",")) {  // set a, b = x, y: the right side is a tuple
      ExprPtr tuple = make(Expr::Kind::kList, node.expr->position);
      tuple->args.push_back(std::move(node.expr));
      while (at_operator(",")) {
        advance();
        ASSIGN_OR_RETURN(ExprPtr item, parse_expression());
        tuple->args.push_back(std::move(item));
      }
      node.expr = std::move(tuple);
    }
    RETURN_IF_ERROR(expect_end());
    body->push_back(std::move(node));
    return ok_status();
  }
  if (node.targets.size() != 1 || !node.attribute.empty()) {
    return error(peek().position, "expected '=' in the set tag");
  }
  RETURN_IF_ERROR(expect_end());
  node.kind = Node::Kind::kSetBlock;
  std::string ended;
  ASSIGN_OR_RETURN(node.body, parse_body({"endset"}, &ended));
  RETURN_IF_ERROR(expect_end());
  body->push_back(std::move(node));
  return ok_status();
}

}  // namespace detail

std::string describe_position(const std::string& source, size_t position) {
  size_t line = 1, column = 1;
  for (size_t i = 0; i < position && i < source.size(); ++i) {
    if (source[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

std::string normalize_newlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  size_t i = 0;
  bool ended_with_break = false;
  while (i < source.size()) {
    // Line boundaries of Python's str.splitlines: \n \r \r\n \v \f \x1c-\x1e U+0085 U+2028 U+2029.
    auto c = static_cast<unsigned char>(source[i]);
    size_t length = 0;
    if (c == '\r') {
      length = i + 1 < source.size() && source[i + 1] == '\n' ? 2 : 1;
    } else if (c == '\n' || c == '\v' || c == '\f' || (c >= 0x1C && c <= 0x1E)) {
      length = 1;
    } else if (source.compare(i, 2, "\xC2\x85") == 0) {
      length = 2;
    } else if (source.compare(i, 3, "\xE2\x80\xA8") == 0 ||
               source.compare(i, 3, "\xE2\x80\xA9") == 0) {
      length = 3;
    }
    if (length > 0) {
      out.push_back('\n');
      i += length;
      ended_with_break = true;
    } else {
      out.push_back(source[i++]);
      ended_with_break = false;
    }
  }
  if (ended_with_break) out.pop_back();
  return out;
}

StatusOr<Body> parse_template(const std::string& source) {
  ASSIGN_OR_RETURN(std::vector<detail::Segment> segments, detail::split_segments(source));
  detail::Parser parser(source, std::move(segments));
  return parser.parse();
}

}  // namespace dshpc::jinja
