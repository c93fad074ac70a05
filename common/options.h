// Command-line options declared as a table: long names, a value placeholder, help text and the
// default shown in --help. `--name value` and `--name=value` are accepted; unknown options,
// missing values and malformed numbers are errors that name the option.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace dshpc {

struct OptionSpec {
  std::string name;        // without the leading "--"
  std::string value_name;  // "DIR", "N"; empty for a flag (no value)
  std::string help;
  std::string default_value;  // shown in --help; returned when the option is absent
};

class Options {
 public:
  // Parses argv[first..argc). `command` labels messages ("dshpc generate").
  static StatusOr<Options> parse(const std::string& command, const std::vector<OptionSpec>& specs,
                                 int argc, char** argv, int first);
  static std::string help_text(const std::string& command, const std::string& summary,
                               const std::vector<OptionSpec>& specs);

  bool help_requested() const { return help_; }
  bool given(const std::string& name) const { return values_.count(name) > 0; }
  bool flag(const std::string& name) const { return given(name); }
  std::string get(const std::string& name) const;
  StatusOr<int64_t> get_int(const std::string& name) const;
  StatusOr<double> get_double(const std::string& name) const;
  // Comma-separated integers ("1,2,3").
  StatusOr<std::vector<int64_t>> get_int_list(const std::string& name) const;
  // Sets a value as if given on the command line (used by config files, which the command line
  // overrides: call it only for options not given()).
  void set(const std::string& name, const std::string& value) { values_[name] = value; }

 private:
  std::string command_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> defaults_;
  bool help_ = false;
};

}  // namespace dshpc
