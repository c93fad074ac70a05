// Evaluator of parsed chat templates: walks the tree of chat_template_ast.h with Jinja's scoping
// (a for loop's body gets its own scope per iteration; if does not; namespace() objects are shared
// and mutable) and writes the output into one string.
#include "coordinator/chat_template_eval.h"

#include <unordered_map>

#include "coordinator/chat_template_builtins.h"

namespace dshpc::jinja {
namespace {

class Renderer {
 public:
  Renderer(const std::string& source, std::string* out) : source_(source), out_(out) {}

  Status run(const Body& body, std::unordered_map<std::string, Value> globals) {
    scopes_.push_back(std::move(globals));
    scopes_.emplace_back();  // template-level {% set %}
    ASSIGN_OR_RETURN(Flow flow, exec(body));
    (void)flow;
    return ok_status();
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Status error_at(size_t position, const Status& status) const {
    return Status(status.code(), "chat template, " + describe_position(source_, position) + ": " +
                                     status.message());
  }
  Status error_at(size_t position, const std::string& what) const {
    return error_at(position, invalid_argument(what));
  }

  Value lookup(const std::string& name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      auto it = scope->find(name);
      if (it != scope->end()) return it->second;
    }
    return Value();
  }
  void assign(const std::string& name, Value value) { scopes_.back()[name] = std::move(value); }

  Status assign_targets(const std::vector<std::string>& targets, const Value& value,
                        size_t position) {
    if (targets.size() == 1) {
      assign(targets[0], value);
      return ok_status();
    }
    if (!value.is_list() || value.as_list().size() != targets.size()) {
      return error_at(position, "cannot unpack " + value.repr() + " into " +
                                    std::to_string(targets.size()) + " names");
    }
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], value.as_list()[i]);
    return ok_status();
  }

  StatusOr<Flow> exec(const Body& body) {
    for (const Node& node : body) {
      ASSIGN_OR_RETURN(Flow flow, exec_node(node));
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  StatusOr<Flow> exec_node(const Node& node) {
    switch (node.kind) {
      case Node::Kind::kText:
        *out_ += node.text;
        return Flow::kNormal;
      case Node::Kind::kOutput: {
        ASSIGN_OR_RETURN(Value value, eval(*node.expr));
        *out_ += value.to_string();
        return Flow::kNormal;
      }
      case Node::Kind::kIf:
        for (const auto& [condition, branch] : node.branches) {
          ASSIGN_OR_RETURN(Value test, eval(*condition));
          if (test.truthy()) return exec(branch);
        }
        return exec(node.else_body);
      case Node::Kind::kFor:
        return exec_for(node);
      case Node::Kind::kSet: {
        ASSIGN_OR_RETURN(Value value, eval(*node.expr));
        if (node.attribute.empty()) {
          RETURN_IF_ERROR(assign_targets(node.targets, value, node.position));
          return Flow::kNormal;
        }
        Value target = lookup(node.targets[0]);
        if (!target.is_dict() || !target.as_dict().is_namespace) {
          return error_at(node.position, "cannot set attribute '" + node.attribute + "' on '" +
                                             node.targets[0] + "', which is not a namespace()");
        }
        target.mutable_dict().set(node.attribute, std::move(value));
        return Flow::kNormal;
      }
      case Node::Kind::kSetBlock: {
        std::string captured;
        std::swap(captured, *out_);
        StatusOr<Flow> flow = exec(node.body);
        std::swap(captured, *out_);
        if (!flow.ok()) return flow.status();
        assign(node.targets[0], Value(std::move(captured)));
        return Flow::kNormal;
      }
      case Node::Kind::kBreak:
        return Flow::kBreak;
      case Node::Kind::kContinue:
        return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  StatusOr<Flow> exec_for(const Node& node) {
    ASSIGN_OR_RETURN(Value iterable, eval(*node.expr));
    StatusOr<List> listed = iterate(iterable);
    if (!listed.ok()) return error_at(node.expr->position, listed.status());
    List items = std::move(listed).value();
    if (node.filter) {  // {% for x in xs if cond %}: the loop sees only the items that pass
      List kept;
      for (const Value& item : items) {
        scopes_.emplace_back();
        Status bound = assign_targets(node.targets, item, node.position);
        StatusOr<Value> keep = bound.ok() ? eval(*node.filter) : StatusOr<Value>(bound);
        scopes_.pop_back();
        if (!keep.ok()) return keep.status();
        if (keep->truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec(node.else_body);

    const auto length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      auto loop = std::make_shared<Dict>();
      loop->set("index", Value(i + 1));
      loop->set("index0", Value(i));
      loop->set("revindex", Value(length - i));
      loop->set("revindex0", Value(length - i - 1));
      loop->set("first", Value(i == 0));
      loop->set("last", Value(i == length - 1));
      loop->set("length", Value(length));
      if (i > 0) loop->set("previtem", items[static_cast<size_t>(i - 1)]);
      if (i + 1 < length) loop->set("nextitem", items[static_cast<size_t>(i + 1)]);

      scopes_.emplace_back();
      assign("loop", Value(std::move(loop)));
      Status bound = assign_targets(node.targets, items[static_cast<size_t>(i)], node.position);
      StatusOr<Flow> flow = bound.ok() ? exec(node.body) : StatusOr<Flow>(bound);
      scopes_.pop_back();
      if (!flow.ok()) return flow.status();
      if (*flow == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  StatusOr<Value> eval(const Expr& expr) {
    switch (expr.kind) {
      case Expr::Kind::kLiteral:
        return expr.literal;
      case Expr::Kind::kName:
        return lookup(expr.name);
      case Expr::Kind::kList: {
        List list;
        for (const ExprPtr& item : expr.args) {
          ASSIGN_OR_RETURN(Value value, eval(*item));
          list.push_back(std::move(value));
        }
        return Value(std::move(list));
      }
      case Expr::Kind::kDict: {
        auto dict = std::make_shared<Dict>();
        for (const auto& [key, item] : expr.keyword_args) {
          ASSIGN_OR_RETURN(Value value, eval(*item));
          dict->set(key, std::move(value));
        }
        return Value(std::move(dict));
      }
      case Expr::Kind::kAttribute: {
        ASSIGN_OR_RETURN(Value object, eval(*expr.args[0]));
        return located(expr, attribute(object, expr.name));
      }
      case Expr::Kind::kIndex: {
        ASSIGN_OR_RETURN(Value object, eval(*expr.args[0]));
        ASSIGN_OR_RETURN(Value key, eval(*expr.args[1]));
        return located(expr, subscript(object, key));
      }
      case Expr::Kind::kSlice: {
        ASSIGN_OR_RETURN(Value object, eval(*expr.args[0]));
        Value bounds[3];
        for (int k = 0; k < 3; ++k) {
          if (expr.args[static_cast<size_t>(k) + 1]) {
            ASSIGN_OR_RETURN(bounds[k], eval(*expr.args[static_cast<size_t>(k) + 1]));
          }
        }
        return located(expr, slice(object, bounds[0], bounds[1], bounds[2]));
      }
      case Expr::Kind::kCall:
        return eval_call(expr);
      case Expr::Kind::kFilter: {
        ASSIGN_OR_RETURN(Value input, eval(*expr.args[0]));
        Args args;
        KeywordArgs keyword_args;
        RETURN_IF_ERROR(eval_arguments(expr, 1, &args, &keyword_args));
        return located(expr, apply_filter(expr.name, input, args, keyword_args));
      }
      case Expr::Kind::kTest: {
        ASSIGN_OR_RETURN(Value input, eval(*expr.args[0]));
        Args args;
        KeywordArgs keyword_args;
        RETURN_IF_ERROR(eval_arguments(expr, 1, &args, &keyword_args));
        StatusOr<bool> passed = apply_test(expr.name, input, args);
        if (!passed.ok()) return error_at(expr.position, passed.status());
        return Value(*passed != expr.negated);
      }
      case Expr::Kind::kUnary: {
        ASSIGN_OR_RETURN(Value operand, eval(*expr.args[0]));
        if (expr.name == "not") return Value(!operand.truthy());
        if (operand.is_int()) return Value(expr.name == "-" ? -operand.as_int() : operand.as_int());
        if (operand.is_float()) {
          return Value(expr.name == "-" ? -operand.as_float() : operand.as_float());
        }
        return error_at(expr.position,
                        "unary " + expr.name + " needs a number, not " + operand.type_name());
      }
      case Expr::Kind::kBinary: {
        ASSIGN_OR_RETURN(Value left, eval(*expr.args[0]));
        // "and" / "or" short-circuit and return an operand, as in Python.
        if (expr.name == "and") return left.truthy() ? eval(*expr.args[1]) : left;
        if (expr.name == "or") return left.truthy() ? left : eval(*expr.args[1]);
        ASSIGN_OR_RETURN(Value right, eval(*expr.args[1]));
        return located(expr, binary_operator(expr.name, left, right));
      }
      case Expr::Kind::kCompareChain: {
        ASSIGN_OR_RETURN(Value left, eval(*expr.args[0]));
        for (size_t i = 0; i < expr.operators.size(); ++i) {
          ASSIGN_OR_RETURN(Value right, eval(*expr.args[i + 1]));
          ASSIGN_OR_RETURN(Value passed,
                           located(expr, binary_operator(expr.operators[i], left, right)));
          if (!passed.truthy()) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::kConditional: {
        ASSIGN_OR_RETURN(Value condition, eval(*expr.args[1]));
        if (condition.truthy()) return eval(*expr.args[0]);
        if (expr.args[2]) return eval(*expr.args[2]);
        return Value();
      }
    }
    return error_at(expr.position, "unknown expression");
  }

  StatusOr<Value> located(const Expr& expr, StatusOr<Value> result) const {
    if (!result.ok()) return error_at(expr.position, result.status());
    return result;
  }

  Status eval_arguments(const Expr& expr, size_t first, Args* args, KeywordArgs* keyword_args) {
    for (size_t i = first; i < expr.args.size(); ++i) {
      ASSIGN_OR_RETURN(Value value, eval(*expr.args[i]));
      args->push_back(std::move(value));
    }
    for (const auto& [key, item] : expr.keyword_args) {
      ASSIGN_OR_RETURN(Value value, eval(*item));
      keyword_args->emplace_back(key, std::move(value));
    }
    return ok_status();
  }

  StatusOr<Value> eval_call(const Expr& expr) {
    const Expr& callee = *expr.args[0];
    Args args;
    KeywordArgs keyword_args;
    if (callee.kind == Expr::Kind::kAttribute) {  // object.method(...)
      ASSIGN_OR_RETURN(Value object, eval(*callee.args[0]));
      if (object.is_undefined()) {
        return error_at(expr.position, "cannot call '" + callee.name + "' on an undefined value");
      }
      RETURN_IF_ERROR(eval_arguments(expr, 1, &args, &keyword_args));
      return located(expr, call_method(object, callee.name, args, keyword_args));
    }
    if (callee.kind == Expr::Kind::kName) {
      RETURN_IF_ERROR(eval_arguments(expr, 1, &args, &keyword_args));
      return located(expr, call_global(callee.name, args, keyword_args));
    }
    return error_at(expr.position, "only functions and methods can be called");
  }

  const std::string& source_;
  std::string* out_;
  std::vector<std::unordered_map<std::string, Value>> scopes_;
};

}  // namespace

StatusOr<std::string> render_template(const std::string& source, const Body& body,
                                      const boost::json::object& variables) {
  std::unordered_map<std::string, Value> globals;
  for (const auto& [key, value] : variables) globals[std::string(key)] = Value::from_json(value);
  std::string out;
  Renderer renderer(source, &out);
  RETURN_IF_ERROR(renderer.run(body, std::move(globals)));
  return out;
}

}  // namespace dshpc::jinja
