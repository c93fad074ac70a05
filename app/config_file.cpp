#include "app/config_file.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>

namespace dshpc {

Status apply_config_file(const std::string& path, const std::vector<OptionSpec>& specs,
                         Options& options) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return not_found(path + ": cannot open the deployment file");
  } catch (const YAML::Exception& e) {
    return invalid_argument(path + ": invalid YAML at line " + std::to_string(e.mark.line + 1) +
                            ": " + e.msg);
  }
  if (root.IsNull()) return ok_status();  // an empty file sets nothing
  if (!root.IsMap()) return invalid_argument(path + ": the top level must be a map of options");
  for (const auto& entry : root) {
    std::string key;
    try {
      key = entry.first.as<std::string>();
    } catch (const YAML::Exception&) {
      return invalid_argument(path + ": a key is not a string");
    }
    std::string name = key;
    std::replace(name.begin(), name.end(), '_', '-');
    auto spec = std::find_if(specs.begin(), specs.end(),
                             [&](const OptionSpec& s) { return s.name == name; });
    if (spec == specs.end() || name == "config") {
      return invalid_argument(path + ": unknown key '" + key + "'");
    }
    if (options.given(name)) continue;  // the command line wins
    const YAML::Node& value = entry.second;
    std::string text;
    try {
      if (value.IsSequence()) {
        for (size_t i = 0; i < value.size(); ++i) {
          if (!value[i].IsScalar()) {
            return invalid_argument(path + ": '" + key + "' must be a list of scalars");
          }
          text += (i ? "," : "") + value[i].as<std::string>();
        }
      } else if (value.IsScalar()) {
        text = value.as<std::string>();
      } else if (value.IsNull()) {
        continue;
      } else {
        return invalid_argument(path + ": '" + key + "' must be a value or a list, not a map");
      }
    } catch (const YAML::Exception& e) {
      return invalid_argument(path + ": '" + key + "': " + e.msg);
    }
    if (spec->value_name.empty()) {  // a flag
      if (text == "true" || text == "yes" || text == "on") {
        options.set(name, "1");
      } else if (!(text == "false" || text == "no" || text == "off")) {
        return invalid_argument(path + ": '" + key + "' must be true or false, got '" + text + "'");
      }
      continue;
    }
    options.set(name, text);
  }
  return ok_status();
}

}  // namespace dshpc
