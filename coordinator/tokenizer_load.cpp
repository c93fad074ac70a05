// Reads tokenizer.json and tokenizer_config.json into Tokenizer::Data, checking every field it
// uses and naming the file and field in each error.
#include <algorithm>
#include <filesystem>

#include "coordinator/tokenizer_data.h"
#include "coordinator/tokenizer_json.h"

namespace dshpc {
namespace {

namespace tj = tokenizer_json;

// Rust regex's Unicode \w (Alphabetic, M, Nd, Pc, Join_Control), for single_word tokens.
constexpr std::string_view kWordCharacterPattern =
    R"(^[\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])";

Status check_normalizer(const boost::json::object& root, const std::string& file) {
  const boost::json::value* normalizer = tj::find(root, "normalizer");
  if (normalizer == nullptr) return ok_status();
  // Only the identity is supported: null, or a Sequence with no normalizers (DeepSeek's files).
  if (normalizer->is_object()) {
    const boost::json::object& object = normalizer->get_object();
    const boost::json::value* type = tj::find(object, "type");
    const boost::json::value* list = tj::find(object, "normalizers");
    if (type != nullptr && type->is_string() && type->get_string() == "Sequence" &&
        list != nullptr && list->is_array() && list->get_array().empty()) {
      return ok_status();
    }
  }
  return unimplemented(file +
                       ": field 'normalizer' is not supported (only null or an empty "
                       "Sequence); normalizing tokenizers are not implemented");
}

Status check_decoder(const boost::json::object& root, const std::string& file) {
  const boost::json::value* decoder = tj::find(root, "decoder");
  if (decoder != nullptr && decoder->is_object()) {
    const boost::json::value* type = tj::find(decoder->get_object(), "type");
    if (type != nullptr && type->is_string() && type->get_string() == "ByteLevel") {
      return ok_status();
    }
  }
  return unimplemented(file + ": field 'decoder' must be {\"type\": \"ByteLevel\", ...}");
}

Status read_added_tokens(const boost::json::object& root, const std::string& file,
                         Tokenizer::Data* data) {
  const boost::json::value* list = tj::find(root, "added_tokens");
  if (list != nullptr && !list->is_array()) {
    return tj::field_error(file, "added_tokens", "must be an array");
  }
  size_t count = list == nullptr ? 0 : list->get_array().size();
  for (size_t i = 0; i < count; ++i) {
    const boost::json::value& entry = list->get_array()[i];
    std::string field = "added_tokens[" + std::to_string(i) + "]";
    if (!entry.is_object()) return tj::field_error(file, field, "must be an object");
    const boost::json::object& object = entry.get_object();
    AddedToken token;
    const boost::json::value* id = tj::find(object, "id");
    if (id == nullptr || !(id->is_int64() || id->is_uint64()) || id->to_number<int64_t>() < 0 ||
        id->to_number<int64_t>() > INT32_MAX) {
      return tj::field_error(file, field + ".id", "is missing or not a non-negative integer");
    }
    token.id = static_cast<int32_t>(id->to_number<int64_t>());
    const boost::json::value* content = tj::find(object, "content");
    if (content == nullptr || !content->is_string() || content->get_string().empty()) {
      return tj::field_error(file, field + ".content", "is missing or not a non-empty string");
    }
    token.content = std::string(content->get_string());
    RETURN_IF_ERROR(tj::read_bool(object, "single_word", file, field + ".", &token.single_word));
    RETURN_IF_ERROR(tj::read_bool(object, "lstrip", file, field + ".", &token.lstrip));
    RETURN_IF_ERROR(tj::read_bool(object, "rstrip", file, field + ".", &token.rstrip));
    RETURN_IF_ERROR(tj::read_bool(object, "normalized", file, field + ".", &token.normalized));
    RETURN_IF_ERROR(tj::read_bool(object, "special", file, field + ".", &token.special));
    if (data->added_id_by_content.count(token.content) != 0) {
      return tj::field_error(file, field + ".content",
                             "repeats added token \"" + token.content + "\"");
    }
    data->added_id_by_content.emplace(token.content, token.id);
    data->added_tokens.push_back(std::move(token));
  }

  int32_t max_added = -1;
  for (const AddedToken& token : data->added_tokens) max_added = std::max(max_added, token.id);
  data->id_limit = std::max(data->model.id_limit(), max_added + 1);
  data->added_index_by_id.assign(static_cast<size_t>(data->id_limit), -1);
  for (size_t i = 0; i < data->added_tokens.size(); ++i) {
    const AddedToken& token = data->added_tokens[i];
    int32_t& slot = data->added_index_by_id[static_cast<size_t>(token.id)];
    if (slot >= 0) {
      return tj::field_error(file, "added_tokens[" + std::to_string(i) + "].id",
                             "repeats id " + std::to_string(token.id));
    }
    slot = static_cast<int32_t>(i);
    // The normalizer is the identity, so "normalized" tokens match the raw text as well; they
    // are still searched in a second pass, after the non-normalized ones, as tokenizers does.
    AddedTokenMatcher& matcher =
        token.normalized ? data->normalized_matcher : data->non_normalized_matcher;
    matcher.add(token.content, static_cast<int32_t>(i));
  }
  return ok_status();
}

// "bos_token": "<s>" or {"content": "<s>", ...} (transformers' serialized AddedToken).
Status read_special_token(const boost::json::object& config, std::string_view key,
                          const std::string& file, std::string* out) {
  const boost::json::value* value = tj::find(config, key);
  if (value == nullptr) return ok_status();
  if (value->is_string()) {
    *out = std::string(value->get_string());
    return ok_status();
  }
  if (value->is_object()) {
    const boost::json::value* content = tj::find(value->get_object(), "content");
    if (content != nullptr && content->is_string()) {
      *out = std::string(content->get_string());
      return ok_status();
    }
  }
  return tj::field_error(file, key, "must be a string or an object with a string \"content\"");
}

Status read_config(const std::string& file, Tokenizer::Data* data) {
  ASSIGN_OR_RETURN(boost::json::value root, tj::read_file(file));
  if (!root.is_object()) return invalid_argument(file + ": top level must be a JSON object");
  const boost::json::object& config = root.get_object();
  RETURN_IF_ERROR(read_special_token(config, "bos_token", file, &data->bos_token));
  RETURN_IF_ERROR(read_special_token(config, "eos_token", file, &data->eos_token));
  RETURN_IF_ERROR(tj::read_bool(config, "add_bos_token", file, "", &data->add_bos_token));
  RETURN_IF_ERROR(tj::read_bool(config, "add_eos_token", file, "", &data->add_eos_token));

  const boost::json::value* chat_template = tj::find(config, "chat_template");
  if (chat_template == nullptr) return ok_status();
  if (chat_template->is_string()) {
    data->chat_template = std::string(chat_template->get_string());
    return ok_status();
  }
  // Several named templates: [{"name": "default", "template": "..."}, ...]; take "default".
  if (chat_template->is_array()) {
    for (const boost::json::value& entry : chat_template->get_array()) {
      if (!entry.is_object()) continue;
      const boost::json::value* name = tj::find(entry.get_object(), "name");
      const boost::json::value* text = tj::find(entry.get_object(), "template");
      if (name != nullptr && name->is_string() && name->get_string() == "default" &&
          text != nullptr && text->is_string()) {
        data->chat_template = std::string(text->get_string());
        return ok_status();
      }
    }
  }
  return tj::field_error(file, "chat_template",
                         "must be a string or a list holding {\"name\": \"default\", "
                         "\"template\": ...}");
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer::Data>> load_tokenizer_data(const std::string& tokenizer_json,
                                                               const std::string& config_json) {
  auto data = std::make_unique<Tokenizer::Data>();
  data->tokenizer_path = tokenizer_json;
  data->config_path = config_json;
  const std::string& file = tokenizer_json;

  ASSIGN_OR_RETURN(boost::json::value root_value, tj::read_file(file));
  if (!root_value.is_object()) return invalid_argument(file + ": top level must be a JSON object");
  const boost::json::object& root = root_value.get_object();

  const boost::json::value* model = tj::find(root, "model");
  if (model == nullptr) return tj::field_error(file, "model", "is missing");
  ASSIGN_OR_RETURN(data->model, BpeModel::from_json(*model, file));
  RETURN_IF_ERROR(check_normalizer(root, file));
  ASSIGN_OR_RETURN(data->pre_tokenizer,
                   PreTokenizer::from_json(tj::find(root, "pre_tokenizer"), file));
  RETURN_IF_ERROR(check_decoder(root, file));
  RETURN_IF_ERROR(read_added_tokens(root, file, data.get()));
  // "post_processor" only matters for add_special_tokens, which follows tokenizer_config.json's
  // add_bos_token / add_eos_token as transformers does for DeepSeek's LlamaTokenizerFast.

  ASSIGN_OR_RETURN(data->word_character, UnicodeRegex::compile(kWordCharacterPattern));
  if (!config_json.empty()) RETURN_IF_ERROR(read_config(config_json, data.get()));
  return data;
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::load(const std::string& dir) {
  std::filesystem::path base(dir);
  std::filesystem::path tokenizer_json = base / "tokenizer.json";
  std::filesystem::path config_json = base / "tokenizer_config.json";
  std::error_code error;
  if (!std::filesystem::is_directory(base, error)) {
    return not_found(dir + ": tokenizer directory does not exist");
  }
  bool has_config = std::filesystem::exists(config_json, error);
  return load_files(tokenizer_json.string(), has_config ? config_json.string() : std::string());
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::load_files(const std::string& tokenizer_json_path,
                                                           const std::string& config_json_path) {
  ASSIGN_OR_RETURN(std::unique_ptr<Data> data,
                   load_tokenizer_data(tokenizer_json_path, config_json_path));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(data)));
}

}  // namespace dshpc
