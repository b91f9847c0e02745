#include "policy/model.h"

#include <cctype>

#include "common/civil_time.h"

namespace sshring::policy {

bool Window::contains(UnixSeconds now) const noexcept {
  const int32_t off = tz ? tz->offset_at(now) : 0;
  const int64_t local = now + off;
  int64_t days_since = local / 86400;
  if (local % 86400 < 0) --days_since;
  const auto minute = static_cast<uint16_t>((local - days_since * 86400) / 60);
  const unsigned wday = common::weekday_from_days(days_since);
  const unsigned yday = (wday + 6) % 7;
  if (start_min < end_min) return (days >> wday & 1u) && minute >= start_min && minute < end_min;
  // Across midnight: the evening part belongs to today, the morning part to the day before.
  return ((days >> wday & 1u) && minute >= start_min) || ((days >> yday & 1u) && minute < end_min);
}

const Principal* Policy::find_principal(std::string_view name) const {
  for (const auto& p : principals)
    if (p.name == name) return &p;
  return nullptr;
}

const Role* Policy::find_role(std::string_view name) const {
  for (const auto& r : roles)
    if (r.name == name) return &r;
  return nullptr;
}

const OptOutRule* Policy::find_rule(std::string_view id) const {
  for (const auto& r : opt_out)
    if (r.id == id) return &r;
  return nullptr;
}

bool Policy::in_set(const PrincipalSet& set, std::string_view name) const {
  const Principal* p = find_principal(name);
  if (!p) return false;
  if (set.empty()) return true;
  for (const auto& n : set.principals)
    if (n == name) return true;
  for (const auto& r : p->roles)
    for (const auto& want : set.roles)
      if (r == want) return true;
  return false;
}

namespace {

// One DNS label against one pattern label (neither holds a dot). Iterative matcher with single-star
// backtracking: linear-ish, no recursion, no allocation.
bool label_match(std::string_view pat, std::string_view s) noexcept {
  size_t p = 0, i = 0, star = std::string_view::npos, mark = 0;
  auto eq = [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
  };
  while (i < s.size()) {
    if (p < pat.size() && (pat[p] == '?' || (pat[p] != '*' && eq(pat[p], s[i])))) {
      ++p;
      ++i;
    } else if (p < pat.size() && pat[p] == '*') {
      star = p++;
      mark = i;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

}  // namespace

bool glob_match(std::string_view pat, std::string_view s) noexcept {
  // '*' and '?' never match a dot: the pattern and the name must have the same labels, and each
  // label matches on its own ("prod-*" does not match "prod-x.attacker.com").
  for (;;) {
    size_t pd = pat.find('.'), sd = s.find('.');
    if (!label_match(pat.substr(0, pd), s.substr(0, sd))) return false;
    if (pd == std::string_view::npos || sd == std::string_view::npos) return pd == sd;
    pat.remove_prefix(pd + 1);
    s.remove_prefix(sd + 1);
  }
}

}  // namespace sshring::policy
