#include "common/flags.h"

#include <charconv>
#include <iostream>
#include <sstream>

#include "common/error.h"

namespace sshring::common {

Flags::Flags(std::string command, std::string usage, std::string description)
    : command_(std::move(command)), usage_(std::move(usage)), description_(std::move(description)) {}

Flags& Flags::value(std::string name, std::string placeholder, std::string help,
                    std::optional<std::string> def) {
  order_.push_back(name);
  specs_[std::move(name)] = Spec{std::move(placeholder), std::move(help), std::move(def), true, false};
  return *this;
}

Flags& Flags::multi(std::string name, std::string placeholder, std::string help) {
  order_.push_back(name);
  specs_[std::move(name)] = Spec{std::move(placeholder), std::move(help), std::nullopt, true, true};
  return *this;
}

Flags& Flags::boolean(std::string name, std::string help) {
  order_.push_back(name);
  specs_[std::move(name)] = Spec{"", std::move(help), std::nullopt, false, false};
  return *this;
}

Flags& Flags::epilog(std::string text) {
  epilog_ = std::move(text);
  return *this;
}

bool Flags::parse(const std::vector<std::string>& args) {
  bool only_positionals = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (only_positionals || a.size() < 2 || a[0] != '-' || a == "-") {
      positionals_.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positionals = true;
      continue;
    }
    if (a == "--help" || a == "-h") {
      std::cout << help_text();
      return false;
    }
    if (a.rfind("--", 0) != 0) throw UsageError(command_ + ": unknown option '" + a + "' (see --help)");
    std::string name = a.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name.resize(eq);
    }
    auto it = specs_.find(name);
    if (it == specs_.end()) throw UsageError(command_ + ": unknown option '--" + name + "' (see --help)");
    const Spec& spec = it->second;
    if (!spec.takes_value) {
      if (inline_value) throw UsageError(command_ + ": --" + name + " takes no value");
      values_[name].push_back("true");
      continue;
    }
    std::string v;
    if (inline_value) {
      v = *inline_value;
    } else {
      if (i + 1 >= args.size())
        throw UsageError(command_ + ": --" + name + " needs a value " + spec.placeholder + " (see --help)");
      v = args[++i];
    }
    auto& slot = values_[name];
    if (!spec.repeat && !slot.empty())
      throw UsageError(command_ + ": --" + name + " given twice; give it once");
    slot.push_back(std::move(v));
  }
  return true;
}

bool Flags::has(std::string_view name) const {
  return values_.find(name) != values_.end();
}

std::optional<std::string> Flags::get(std::string_view name) const {
  if (auto it = values_.find(name); it != values_.end() && !it->second.empty()) return it->second.back();
  if (auto it = specs_.find(name); it != specs_.end() && it->second.def) return it->second.def;
  return std::nullopt;
}

std::string Flags::get_or(std::string_view name, std::string_view fallback) const {
  auto v = get(name);
  return v ? *v : std::string(fallback);
}

std::string Flags::require(std::string_view name) const {
  auto v = get(name);
  if (!v) throw UsageError(command_ + ": --" + std::string(name) + " is required (see --help)");
  return *v;
}

std::vector<std::string> Flags::all(std::string_view name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  return {};
}

long long Flags::get_int(std::string_view name, long long def, long long lo, long long hi) const {
  auto v = get(name);
  if (!v) return def;
  long long out = 0;
  auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc{} || ptr != v->data() + v->size() || out < lo || out > hi) {
    throw UsageError(command_ + ": --" + std::string(name) + " '" + *v + "' must be an integer in [" +
                     std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return out;
}

std::string Flags::help_text() const {
  std::ostringstream os;
  os << "Usage: " << usage_ << "\n\n" << description_ << "\n";
  if (!order_.empty()) os << "\nOptions:\n";
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    std::string left = "  --" + name + (s.takes_value ? " " + s.placeholder : "");
    os << left;
    // At least two spaces before the text: packaging/helpdoc (man pages, completion) splits there.
    if (left.size() + 2 <= 28) {
      os << std::string(28 - left.size(), ' ');
    } else {
      os << "\n" << std::string(28, ' ');
    }
    os << s.help;
    if (s.def) os << " (default: " << *s.def << ")";
    if (s.repeat) os << " (repeatable)";
    os << "\n";
  }
  os << "  --help                    show this help\n";
  if (!epilog_.empty()) os << "\n" << epilog_ << (epilog_.back() == '\n' ? "" : "\n");
  return os.str();
}

}  // namespace sshring::common
