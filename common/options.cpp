#include "common/options.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace dshpc {

StatusOr<Options> Options::parse(const std::string& command, const std::vector<OptionSpec>& specs,
                                 int argc, char** argv, int first) {
  Options options;
  options.command_ = command;
  std::map<std::string, const OptionSpec*> by_name;
  for (const OptionSpec& spec : specs) {
    by_name[spec.name] = &spec;
    options.defaults_[spec.name] = spec.default_value;
  }
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      options.help_ = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      return invalid_argument(command + ": unexpected argument '" + arg + "' (see --help)");
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_inline_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline_value = true;
    }
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return invalid_argument(command + ": unknown option --" + name + " (see --help)");
    }
    const OptionSpec& spec = *it->second;
    if (spec.value_name.empty()) {
      if (has_inline_value) return invalid_argument(command + ": --" + name + " takes no value");
      value = "1";
    } else if (!has_inline_value) {
      if (i + 1 >= argc) {
        return invalid_argument(command + ": --" + name + " needs a value " + spec.value_name);
      }
      value = argv[++i];
    }
    options.values_[name] = value;
  }
  return options;
}

std::string Options::help_text(const std::string& command, const std::string& summary,
                               const std::vector<OptionSpec>& specs) {
  std::ostringstream out;
  out << "usage: " << command << " [options]\n\n" << summary << "\n\noptions:\n";
  for (const OptionSpec& spec : specs) {
    std::string left = "  --" + spec.name + (spec.value_name.empty() ? "" : " " + spec.value_name);
    out << left;
    if (left.size() < 28) {
      out << std::string(28 - left.size(), ' ');
    } else {
      out << "\n" << std::string(28, ' ');
    }
    out << spec.help;
    if (!spec.default_value.empty()) out << " (default: " << spec.default_value << ")";
    out << "\n";
  }
  out << "  --help                    show this text\n";
  return out.str();
}

std::string Options::get(const std::string& name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  if (auto it = defaults_.find(name); it != defaults_.end()) return it->second;
  return "";
}

StatusOr<int64_t> Options::get_int(const std::string& name) const {
  std::string text = get(name);
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || end == nullptr || *end != '\0' || errno == ERANGE) {
    return invalid_argument(command_ + ": --" + name + " must be an integer, got '" + text + "'");
  }
  return static_cast<int64_t>(v);
}

StatusOr<double> Options::get_double(const std::string& name) const {
  std::string text = get(name);
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end == nullptr || *end != '\0' || errno == ERANGE || !std::isfinite(v)) {
    return invalid_argument(command_ + ": --" + name + " must be a number, got '" + text + "'");
  }
  return v;
}

StatusOr<std::vector<int64_t>> Options::get_int_list(const std::string& name) const {
  std::string text = get(name);
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string item =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    errno = 0;
    char* end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno == ERANGE) {
      return invalid_argument(command_ + ": --" + name +
                              " must be a comma-separated list of integers, got '" + text + "'");
    }
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace dshpc
