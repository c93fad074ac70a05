#include "coordinator/tokenize_command.h"

#include <boost/json.hpp>
#include <istream>
#include <ostream>

#include "coordinator/tokenizer.h"

namespace dshpc {
namespace {

// An optional boolean member; absent or null is false.
StatusOr<bool> optional_flag(const boost::json::object& object, std::string_view key) {
  const boost::json::value* value = object.if_contains(key);
  if (value == nullptr || value->is_null()) return false;
  if (!value->is_bool()) return invalid_argument("\"" + std::string(key) + "\" must be a boolean");
  return value->get_bool();
}

StatusOr<boost::json::object> tokenize_line(const Tokenizer& tokenizer,
                                            const boost::json::object& request) {
  const boost::json::value* text = request.if_contains("text");
  if (text == nullptr || !text->is_string()) {
    return invalid_argument("expected {\"text\": string}");
  }
  ASSIGN_OR_RETURN(bool add_special_tokens, optional_flag(request, "add_special_tokens"));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                   tokenizer.encode(text->get_string(), add_special_tokens));
  boost::json::array id_array;
  id_array.reserve(ids.size());
  for (int32_t id : ids) id_array.emplace_back(id);
  boost::json::object response;
  response["ids"] = std::move(id_array);
  return response;
}

StatusOr<boost::json::object> detokenize_line(const Tokenizer& tokenizer,
                                              const boost::json::object& request) {
  const boost::json::value* ids_value = request.if_contains("ids");
  if (ids_value == nullptr || !ids_value->is_array()) {
    return invalid_argument("expected {\"ids\": [integers]}");
  }
  const boost::json::array& id_array = ids_value->get_array();
  std::vector<int32_t> ids;
  ids.reserve(id_array.size());
  for (size_t i = 0; i < id_array.size(); ++i) {
    const boost::json::value& id = id_array[i];
    bool integral = id.is_int64() || id.is_uint64();
    if (!integral || id.to_number<int64_t>() < INT32_MIN || id.to_number<int64_t>() > INT32_MAX) {
      return invalid_argument("ids[" + std::to_string(i) + "] is not a 32-bit integer");
    }
    ids.push_back(static_cast<int32_t>(id.to_number<int64_t>()));
  }
  ASSIGN_OR_RETURN(bool skip_special_tokens, optional_flag(request, "skip_special_tokens"));
  ASSIGN_OR_RETURN(std::string text, tokenizer.decode(ids, skip_special_tokens));
  boost::json::object response;
  response["text"] = text;
  return response;
}

}  // namespace

int run_tokenize_command(const std::string& tokenizer_dir, bool detokenize, std::istream& in,
                         std::ostream& out, std::ostream& err) {
  const char* command = detokenize ? "dshpc detokenize" : "dshpc tokenize";
  StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::load(tokenizer_dir);
  if (!tokenizer.ok()) {
    err << command << ": cannot load tokenizer: " << tokenizer.status().to_string() << "\n";
    return kTokenizeExitLoadError;
  }

  int exit_code = kTokenizeExitOk;
  std::string line;
  for (size_t line_number = 1; std::getline(in, line); ++line_number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;

    StatusOr<boost::json::object> response = invalid_argument("not a JSON object");
    boost::system::error_code parse_error;
    boost::json::value request = boost::json::parse(line, parse_error);
    if (parse_error) {
      response = invalid_argument("invalid JSON: " + parse_error.message());
    } else if (request.is_object()) {
      response = detokenize ? detokenize_line(**tokenizer, request.get_object())
                            : tokenize_line(**tokenizer, request.get_object());
    }
    if (!response.ok()) {
      std::string message =
          "line " + std::to_string(line_number) + ": " + response.status().message();
      err << command << ": " << message << "\n";
      boost::json::object error;
      error["error"] = message;
      out << boost::json::serialize(error) << "\n";
      exit_code = kTokenizeExitBadInput;
    } else {
      out << boost::json::serialize(*response) << "\n";
    }
    out.flush();
  }
  return exit_code;
}

}  // namespace dshpc
