// Chat-template parser, part 2: expressions, by recursive descent with Jinja's precedence.
#include "coordinator/chat_template_parser.h"

namespace dshpc::jinja::detail {
namespace {

bool is_comparison(std::string_view op) {
  return op == "==" || op == "!=" || op == "<" || op == "<=" || op == ">" || op == ">=";
}

}  // namespace

// expression := or ["if" or ["else" expression]]
StatusOr<ExprPtr> Parser::parse_expression() {
  DepthGuard guard(this);
  RETURN_IF_ERROR(check_depth(peek().position));
  ASSIGN_OR_RETURN(ExprPtr node, parse_or());
  while (at_name("if")) {
    size_t position = advance().position;
    ExprPtr conditional = make(Expr::Kind::kConditional, position);
    ASSIGN_OR_RETURN(ExprPtr condition, parse_or());
    ExprPtr otherwise;
    if (at_name("else")) {
      advance();
      ASSIGN_OR_RETURN(otherwise, parse_expression());
    }
    conditional->args.push_back(std::move(node));
    conditional->args.push_back(std::move(condition));
    conditional->args.push_back(std::move(otherwise));
    node = std::move(conditional);
  }
  return node;
}

StatusOr<ExprPtr> Parser::parse_or() {
  ASSIGN_OR_RETURN(ExprPtr node, parse_and());
  while (at_name("or")) {
    ExprPtr binary = make(Expr::Kind::kBinary, advance().position, "or");
    ASSIGN_OR_RETURN(ExprPtr right, parse_and());
    binary->args.push_back(std::move(node));
    binary->args.push_back(std::move(right));
    node = std::move(binary);
  }
  return node;
}

StatusOr<ExprPtr> Parser::parse_and() {
  ASSIGN_OR_RETURN(ExprPtr node, parse_not());
  while (at_name("and")) {
    ExprPtr binary = make(Expr::Kind::kBinary, advance().position, "and");
    ASSIGN_OR_RETURN(ExprPtr right, parse_not());
    binary->args.push_back(std::move(node));
    binary->args.push_back(std::move(right));
    node = std::move(binary);
  }
  return node;
}

StatusOr<ExprPtr> Parser::parse_not() {
  DepthGuard guard(this);
  RETURN_IF_ERROR(check_depth(peek().position));
  if (at_name("not")) {
    ExprPtr unary = make(Expr::Kind::kUnary, advance().position, "not");
    ASSIGN_OR_RETURN(ExprPtr operand, parse_not());
    unary->args.push_back(std::move(operand));
    return unary;
  }
  return parse_compare();
}

// Comparisons chain as in Python: a < b <= c means a < b and b <= c.
StatusOr<ExprPtr> Parser::parse_compare() {
  ASSIGN_OR_RETURN(ExprPtr first, parse_math1());
  ExprPtr chain = make(Expr::Kind::kCompareChain, first->position);
  chain->args.push_back(std::move(first));
  while (true) {
    std::string op;
    if (peek().type == Token::Type::kOperator && is_comparison(peek().text)) {
      op = peek().text;
    } else if (at_name("in")) {
      op = "in";
    } else if (at_name("not") && at_name("in", 1)) {
      op = "not in";
      advance();
    } else {
      break;
    }
    advance();
    ASSIGN_OR_RETURN(ExprPtr right, parse_math1());
    chain->operators.push_back(std::move(op));
    chain->args.push_back(std::move(right));
  }
  if (chain->operators.empty()) return std::move(chain->args[0]);
  if (chain->operators.size() == 1) {
    chain->kind = Expr::Kind::kBinary;
    chain->name = chain->operators[0];
    chain->position = chain->args[1]->position;
  }
  return chain;
}

StatusOr<ExprPtr> Parser::parse_math1() {
  ASSIGN_OR_RETURN(ExprPtr node, parse_concat());
  while (at_operator("+") || at_operator("-")) {
    const Token& op = advance();
    ExprPtr binary = make(Expr::Kind::kBinary, op.position, op.text);
    ASSIGN_OR_RETURN(ExprPtr right, parse_concat());
    binary->args.push_back(std::move(node));
    binary->args.push_back(std::move(right));
    node = std::move(binary);
  }
  return node;
}

StatusOr<ExprPtr> Parser::parse_concat() {
  ASSIGN_OR_RETURN(ExprPtr node, parse_math2());
  while (at_operator("~")) {
    ExprPtr binary = make(Expr::Kind::kBinary, advance().position, "~");
    ASSIGN_OR_RETURN(ExprPtr right, parse_math2());
    binary->args.push_back(std::move(node));
    binary->args.push_back(std::move(right));
    node = std::move(binary);
  }
  return node;
}

StatusOr<ExprPtr> Parser::parse_math2() {
  ASSIGN_OR_RETURN(ExprPtr node, parse_pow());
  while (at_operator("*") || at_operator("/") || at_operator("//") || at_operator("%")) {
    const Token& op = advance();
    ExprPtr binary = make(Expr::Kind::kBinary, op.position, op.text);
    ASSIGN_OR_RETURN(ExprPtr right, parse_pow());
    binary->args.push_back(std::move(node));
    binary->args.push_back(std::move(right));
    node = std::move(binary);
  }
  return node;
}

StatusOr<ExprPtr> Parser::parse_pow() {
  ASSIGN_OR_RETURN(ExprPtr node, parse_unary());
  while (at_operator("**")) {
    ExprPtr binary = make(Expr::Kind::kBinary, advance().position, "**");
    ASSIGN_OR_RETURN(ExprPtr right, parse_unary());
    binary->args.push_back(std::move(node));
    binary->args.push_back(std::move(right));
    node = std::move(binary);
  }
  return node;
}

StatusOr<ExprPtr> Parser::parse_unary() {
  DepthGuard guard(this);
  RETURN_IF_ERROR(check_depth(peek().position));
  ExprPtr node;
  if (at_operator("-") || at_operator("+")) {
    const Token& op = advance();
    node = make(Expr::Kind::kUnary, op.position, op.text);
    ASSIGN_OR_RETURN(ExprPtr operand, parse_unary());
    node->args.push_back(std::move(operand));
  } else {
    ASSIGN_OR_RETURN(node, parse_primary());
  }
  ASSIGN_OR_RETURN(node, parse_postfix(std::move(node)));
  return parse_filters_and_tests(std::move(node));
}

StatusOr<ExprPtr> Parser::parse_primary() {
  const Token& token = peek();
  size_t position = token.position;
  switch (token.type) {
    case Token::Type::kName: {
      std::string name = advance().text;
      ExprPtr node = make(Expr::Kind::kLiteral, position);
      if (name == "true" || name == "True") {
        node->literal = Value(true);
      } else if (name == "false" || name == "False") {
        node->literal = Value(false);
      } else if (name == "none" || name == "None") {
        node->literal = Value(Value::None{});
      } else {
        node->kind = Expr::Kind::kName;
        node->name = std::move(name);
      }
      return node;
    }
    case Token::Type::kString: {
      std::string text = advance().text;
      while (peek().type == Token::Type::kString) text += advance().text;  // "a" "b" == "ab"
      ExprPtr node = make(Expr::Kind::kLiteral, position);
      node->literal = Value(std::move(text));
      return node;
    }
    case Token::Type::kInteger:
    case Token::Type::kFloat: {
      ExprPtr node = make(Expr::Kind::kLiteral, position);
      node->literal = advance().value;
      return node;
    }
    case Token::Type::kEnd:
      return error(position, "expected an expression");
    case Token::Type::kOperator:
      break;
  }
  if (at_operator("(")) {
    advance();
    ASSIGN_OR_RETURN(ExprPtr inner, parse_expression());
    if (at_operator(",")) {  // a tuple, which behaves as a list here
      ExprPtr tuple = make(Expr::Kind::kList, position);
      tuple->args.push_back(std::move(inner));
      while (at_operator(",")) {
        advance();
        if (at_operator(")")) break;
        ASSIGN_OR_RETURN(ExprPtr item, parse_expression());
        tuple->args.push_back(std::move(item));
      }
      inner = std::move(tuple);
    }
    RETURN_IF_ERROR(expect_operator(")"));
    return inner;
  }
  if (at_operator("[")) {
    advance();
    ExprPtr list = make(Expr::Kind::kList, position);
    while (!at_operator("]")) {
      ASSIGN_OR_RETURN(ExprPtr item, parse_expression());
      list->args.push_back(std::move(item));
      if (!at_operator(",")) break;
      advance();
    }
    RETURN_IF_ERROR(expect_operator("]"));
    return list;
  }
  if (at_operator("{")) {
    advance();
    ExprPtr dict = make(Expr::Kind::kDict, position);
    while (!at_operator("}")) {
      if (peek().type != Token::Type::kString) {
        return error(peek().position, "dict keys must be string literals");
      }
      std::string key = advance().text;
      RETURN_IF_ERROR(expect_operator(":"));
      ASSIGN_OR_RETURN(ExprPtr value, parse_expression());
      dict->keyword_args.emplace_back(std::move(key), std::move(value));
      if (!at_operator(",")) break;
      advance();
    }
    RETURN_IF_ERROR(expect_operator("}"));
    return dict;
  }
  return error(position, "unexpected '" + token.text + "'");
}

StatusOr<ExprPtr> Parser::parse_postfix(ExprPtr node) {
  while (true) {
    if (at_operator(".")) {
      size_t position = advance().position;
      ASSIGN_OR_RETURN(std::string name, expect_name());
      ExprPtr attribute = make(Expr::Kind::kAttribute, position, std::move(name));
      attribute->args.push_back(std::move(node));
      node = std::move(attribute);
    } else if (at_operator("[")) {
      size_t position = advance().position;
      // Index x[i], or slice x[a:b:c] with any bound left out.
      ExprPtr bounds[3];
      int part = 0;
      bool is_slice = false;
      while (!at_operator("]")) {
        if (at_operator(":")) {
          advance();
          is_slice = true;
          if (++part > 2) return error(position, "a slice has at most three parts");
          continue;
        }
        if (bounds[part]) return error(peek().position, "expected ':' or ']'");
        ASSIGN_OR_RETURN(bounds[part], parse_expression());
      }
      advance();
      ExprPtr subscript = make(is_slice ? Expr::Kind::kSlice : Expr::Kind::kIndex, position);
      subscript->args.push_back(std::move(node));
      if (!is_slice && !bounds[0]) return error(position, "empty subscript");
      subscript->args.push_back(std::move(bounds[0]));
      if (is_slice) {
        subscript->args.push_back(std::move(bounds[1]));
        subscript->args.push_back(std::move(bounds[2]));
      }
      node = std::move(subscript);
    } else if (at_operator("(")) {
      ExprPtr call = make(Expr::Kind::kCall, peek().position);
      call->args.push_back(std::move(node));
      RETURN_IF_ERROR(parse_call_arguments(call.get()));
      node = std::move(call);
    } else {
      return node;
    }
  }
}

StatusOr<ExprPtr> Parser::parse_filters_and_tests(ExprPtr node) {
  while (true) {
    if (at_operator("|")) {
      size_t position = advance().position;
      ASSIGN_OR_RETURN(std::string name, expect_name());
      ExprPtr filter = make(Expr::Kind::kFilter, position, std::move(name));
      filter->args.push_back(std::move(node));
      if (at_operator("(")) RETURN_IF_ERROR(parse_call_arguments(filter.get()));
      node = std::move(filter);
    } else if (at_name("is")) {
      size_t position = advance().position;
      bool negated = false;
      if (at_name("not")) {
        advance();
        negated = true;
      }
      ASSIGN_OR_RETURN(std::string name, expect_name());
      ExprPtr test = make(Expr::Kind::kTest, position, std::move(name));
      test->negated = negated;
      test->args.push_back(std::move(node));
      if (at_operator("(")) {
        RETURN_IF_ERROR(parse_call_arguments(test.get()));
      } else {
        // One argument without parentheses: "is divisibleby 3", "is sameas false".
        const Token& next = peek();
        bool argument = next.type == Token::Type::kString || next.type == Token::Type::kInteger ||
                        next.type == Token::Type::kFloat ||
                        (next.type == Token::Type::kName && next.text != "else" &&
                         next.text != "or" && next.text != "and" && next.text != "if" &&
                         next.text != "in" && next.text != "not" && next.text != "is");
        if (argument) {
          ASSIGN_OR_RETURN(ExprPtr value, parse_primary());
          ASSIGN_OR_RETURN(value, parse_postfix(std::move(value)));
          test->args.push_back(std::move(value));
        }
      }
      node = std::move(test);
    } else {
      return node;
    }
  }
}

// "(" [argument {"," argument}] ")" where argument is an expression or name=expression.
Status Parser::parse_call_arguments(Expr* call) {
  RETURN_IF_ERROR(expect_operator("("));
  while (!at_operator(")")) {
    if (peek().type == Token::Type::kName && at_operator("=", 1)) {
      std::string key = advance().text;
      advance();
      ASSIGN_OR_RETURN(ExprPtr value, parse_expression());
      call->keyword_args.emplace_back(std::move(key), std::move(value));
    } else {
      if (!call->keyword_args.empty()) {
        return error(peek().position, "positional argument after keyword argument");
      }
      ASSIGN_OR_RETURN(ExprPtr value, parse_expression());
      call->args.push_back(std::move(value));
    }
    if (!at_operator(",")) break;
    advance();
  }
  return expect_operator(")");
}

}  // namespace dshpc::jinja::detail
