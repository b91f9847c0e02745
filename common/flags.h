// A small command-line parser shared by every subcommand: --name VALUE, --name=VALUE, boolean
// --name, positionals, and --help generated from the declarations.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sshring::common {

class Flags {
 public:
  // `usage` is the synopsis line, `description` a paragraph printed under it.
  Flags(std::string command, std::string usage, std::string description);

  // Declares --name taking a value. `placeholder` shows in --help (e.g. "ADDR:PORT").
  Flags& value(std::string name, std::string placeholder, std::string help,
               std::optional<std::string> def = {});
  // Declares a value flag that may be repeated (all values are kept in order).
  Flags& multi(std::string name, std::string placeholder, std::string help);
  // Declares boolean --name.
  Flags& boolean(std::string name, std::string help);
  // Free text appended to --help (examples, exit codes).
  Flags& epilog(std::string text);

  // Parses args (without the program and subcommand names). Returns false if --help was asked
  // (help already printed to stdout). Throws UsageError on unknown flags or missing values.
  bool parse(const std::vector<std::string>& args);

  [[nodiscard]] bool has(std::string_view name) const;
  [[nodiscard]] std::optional<std::string> get(std::string_view name) const;
  [[nodiscard]] std::string get_or(std::string_view name, std::string_view fallback) const;
  // Throws UsageError "--name is required" when absent.
  [[nodiscard]] std::string require(std::string_view name) const;
  [[nodiscard]] std::vector<std::string> all(std::string_view name) const;
  [[nodiscard]] bool flag(std::string_view name) const { return has(name); }
  [[nodiscard]] const std::vector<std::string>& positionals() const { return positionals_; }
  // Parses an integer flag within [lo, hi]; throws UsageError naming the flag otherwise.
  [[nodiscard]] long long get_int(std::string_view name, long long def, long long lo, long long hi) const;

  [[nodiscard]] std::string help_text() const;

 private:
  struct Spec {
    std::string placeholder;
    std::string help;
    std::optional<std::string> def;
    bool takes_value = true;
    bool repeat = false;
  };
  std::string command_;
  std::string usage_;
  std::string description_;
  std::string epilog_;
  std::vector<std::string> order_;
  std::map<std::string, Spec, std::less<>> specs_;
  std::map<std::string, std::vector<std::string>, std::less<>> values_;
  std::vector<std::string> positionals_;
};

}  // namespace sshring::common
