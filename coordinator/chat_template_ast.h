// Syntax tree of a parsed chat template (Jinja subset). Internal to coordinator/chat_template*.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "coordinator/chat_template_value.h"

namespace dshpc::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,       // literal
    kName,          // name
    kList,          // [args...]
    kDict,          // {keyword_args...} (string keys) -- name unused
    kAttribute,     // args[0].name
    kIndex,         // args[0][args[1]]
    kSlice,         // args[0][args[1]:args[2]:args[3]] (null children are omitted bounds)
    kCall,          // args[0](args[1..], keyword_args)
    kFilter,        // args[0] | name(args[1..], keyword_args)
    kTest,          // args[0] is [not] name(args[1..])
    kUnary,         // name in {"not", "-", "+"} applied to args[0]
    kBinary,        // args[0] name args[1]; name is the operator ("+", "==", "in", "not in", ...)
    kCompareChain,  // args[0] operators[0] args[1] operators[1] args[2] ... (a < b <= c)
    kConditional,   // args[0] if args[1] else args[2] (args[2] may be null)
  };

  Kind kind;
  size_t position = 0;  // byte offset in the template source, for error messages
  Value literal;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> keyword_args;
  std::vector<std::string> operators;  // kCompareChain
  bool negated = false;                // kTest: "is not"
};

struct Node;
using Body = std::vector<Node>;

struct Node {
  enum class Kind {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // branches (condition, body); else_body
    kFor,       // {% for targets in expr [if filter] %} body {% else %} else_body
    kSet,       // {% set targets = expr %} or {% set name.attribute = expr %}
    kSetBlock,  // {% set target %} body {% endset %}
    kBreak,
    kContinue,
  };

  Node(Kind node_kind, size_t source_position) : kind(node_kind), position(source_position) {}

  Kind kind;
  size_t position = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::string> targets;
  std::string attribute;  // kSet on a namespace: targets[0].attribute
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
};

// Jinja's view of template source: line breaks (as Python's str.splitlines sees them) become
// "\n" and one trailing line break is dropped (keep_trailing_newline is off).
std::string normalize_newlines(std::string_view source);

// Parses normalized template source with transformers' settings (trim_blocks, lstrip_blocks).
StatusOr<Body> parse_template(const std::string& source);

// "line L, column C" of a byte offset in `source`.
std::string describe_position(const std::string& source, size_t position);

}  // namespace dshpc::jinja
