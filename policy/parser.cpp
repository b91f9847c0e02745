#include "policy/parser.h"

#include "common/civil_time.h"
#include "policy/store_uri.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include "common/duration.h"
#include "common/error.h"

namespace sshring::policy {

bool printable_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t n = c >= 0xf0 && c <= 0xf4 ? 3 : (c >= 0xe0 && c < 0xf0) ? 2 : (c >= 0xc2 && c < 0xe0) ? 1 : 0;
    if (n == 0) return false;
    uint32_t cp = c & (0x3f >> n);
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    // Overlong forms, surrogates and C1 controls.
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

std::string printable_escape(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    std::string_view one = s.substr(i, len);
    if (c == '\\') {
      out += "\\\\";
    } else if (one.size() != len || !printable_utf8(one)) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
      len = 1;
    } else if (len == 3 && c == 0xe2) {
      const uint32_t cp = ((c & 0x0fu) << 12) | ((static_cast<unsigned char>(one[1]) & 0x3fu) << 6) |
                          (static_cast<unsigned char>(one[2]) & 0x3fu);
      const bool bidi =
          cp == 0x200e || cp == 0x200f || (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
      if (bidi) {
        out += "\\u{";
        for (int shift = 12; shift >= 0; shift -= 4) out += kHex[(cp >> shift) & 15];
        out += "}";
      } else {
        out += one;
      }
    } else {
      out += one;
    }
    i += len;
  }
  return out;
}

namespace {

constexpr const char* kDayNames[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};

// Context for one parse: the file name, for errors.
class Parser {
 public:
  explicit Parser(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const YAML::Mark& m, const std::string& key, const std::string& msg) const {
    int line = m.line >= 0 ? m.line + 1 : 0;
    int col = m.column >= 0 ? m.column + 1 : 0;
    throw PolicyError(source_, line, col, key, msg);
  }

  // Checks a map: type, duplicate keys, unknown keys, required keys.
  void check_map(const YAML::Node& n, const std::string& key, std::initializer_list<const char*> allowed,
                 std::initializer_list<const char*> required = {}) const {
    if (!n.IsMap()) fail(n.Mark(), key, "expected a mapping with keys " + join(allowed) + ", got " + kind(n));
    std::set<std::string> seen;
    for (auto it = n.begin(); it != n.end(); ++it) {
      if (!it->first.IsScalar()) fail(it->first.Mark(), key, "keys must be plain strings");
      const std::string k = it->first.Scalar();
      if (!seen.insert(k).second) fail(it->first.Mark(), sub(key, k), "duplicate key '" + k + "'");
      bool ok = std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return k == a; });
      if (!ok)
        fail(it->first.Mark(), sub(key, k), "unknown key '" + k + "'; expected one of " + join(allowed));
    }
    for (const char* r : required) {
      if (!seen.count(r)) fail(n.Mark(), key, std::string("missing required key '") + r + "'");
    }
  }

  static std::string sub(const std::string& key, const std::string& k) {
    return key.empty() ? k : key + "." + k;
  }
  static std::string idx(const std::string& key, size_t i) { return key + "[" + std::to_string(i) + "]"; }

  static std::string join(std::initializer_list<const char*> l) {
    std::string s;
    for (const char* a : l) s += (s.empty() ? "" : ", ") + std::string(a);
    return s;
  }
  static std::string kind(const YAML::Node& n) {
    switch (n.Type()) {
      case YAML::NodeType::Map:
        return "a mapping";
      case YAML::NodeType::Sequence:
        return "a list";
      case YAML::NodeType::Scalar:
        return "'" + n.Scalar().substr(0, 40) + "'";
      case YAML::NodeType::Null:
        return "nothing";
      default:
        return "an undefined value";
    }
  }

  std::string scalar(const YAML::Node& n, const std::string& key, const char* what,
                     size_t max_len = kMaxTextLength) const {
    if (!n.IsScalar()) fail(n.Mark(), key, std::string("expected ") + what + ", got " + kind(n));
    if (n.Scalar().size() > max_len) {
      fail(n.Mark(), key, std::string("value longer than ") + std::to_string(max_len) + " characters");
    }
    if (!printable_utf8(n.Scalar())) {
      fail(n.Mark(), key, "value contains control characters or invalid UTF-8; use printable text");
    }
    return n.Scalar();
  }

  static bool valid_name(const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' || c == '@';
    });
  }

  std::string name(const YAML::Node& n, const std::string& key) const {
    std::string s = scalar(n, key, "a name (letters, digits, '.', '_', '-', '@')", kMaxNameLength);
    if (!valid_name(s)) {
      fail(n.Mark(), key, "invalid name '" + s + "'; use letters, digits, '.', '_', '-', '@'");
    }
    return s;
  }

  bool boolean(const YAML::Node& n, const std::string& key) const {
    std::string s = scalar(n, key, "true or false", 8);
    if (s == "true") return true;
    if (s == "false") return false;
    fail(n.Mark(), key, "expected true or false, got '" + s + "'");
  }

  long long integer(const YAML::Node& n, const std::string& key, long long lo, long long hi) const {
    std::string s = scalar(n, key, "an integer", 12);
    long long v = 0;
    bool ok = !s.empty() && s.size() <= 10 && std::all_of(s.begin(), s.end(), ::isdigit);
    if (ok) v = std::stoll(s);
    if (!ok || v < lo || v > hi) {
      fail(n.Mark(), key,
           "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got '" + s +
               "'");
    }
    return v;
  }

  // A list (a lone scalar is not accepted: lists are written [a, b] or "- a").
  YAML::Node seq(const YAML::Node& n, const std::string& key, size_t limit, bool non_empty) const {
    if (!n.IsSequence()) fail(n.Mark(), key, "expected a list, got " + kind(n));
    if (n.size() > limit) {
      fail(n.Mark(), key,
           "list has " + std::to_string(n.size()) + " items; at most " + std::to_string(limit) +
               " are allowed");
    }
    if (non_empty && n.size() == 0) fail(n.Mark(), key, "list must not be empty");
    return n;
  }

  Cidr cidr(const YAML::Node& n, const std::string& key) const {
    std::string s = scalar(n, key, "a CIDR like 10.0.0.0/8 or fd00::/64", 64);
    std::string why;
    auto c = Cidr::parse(s, &why);
    if (!c) fail(n.Mark(), key, "invalid CIDR '" + s + "': " + why);
    return *c;
  }

  std::vector<Cidr> cidrs(const YAML::Node& n, const std::string& key, size_t limit, bool non_empty) const {
    std::vector<Cidr> out;
    seq(n, key, limit, non_empty);
    for (size_t i = 0; i < n.size(); ++i) out.push_back(cidr(n[i], idx(key, i)));
    return out;
  }

  PortSet ports(const YAML::Node& n, const std::string& key) const {
    seq(n, key, kMaxListItems, true);
    std::vector<PortRange> ranges;
    for (size_t i = 0; i < n.size(); ++i) {
      std::string s = scalar(n[i], idx(key, i), "a port (22) or a range (\"2200-2299\")", 16);
      auto p = PortSet::parse(s);
      if (!p || s.find(',') != std::string::npos) {
        fail(n[i].Mark(), idx(key, i),
             "invalid port '" + s + "'; expected 1-65535 or a range like \"2200-2299\"");
      }
      for (const auto& r : p->ranges()) ranges.push_back(r);
    }
    return PortSet(std::move(ranges));
  }

  std::vector<std::string> names(const YAML::Node& n, const std::string& key, size_t limit) const {
    seq(n, key, limit, false);
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (size_t i = 0; i < n.size(); ++i) {
      out.push_back(name(n[i], idx(key, i)));
      if (!seen.insert(out.back()).second)
        fail(n[i].Mark(), idx(key, i), "duplicate name '" + out.back() + "'");
    }
    return out;
  }

  uint8_t days(const YAML::Node& n, const std::string& key, std::string* text) const {
    std::string s = scalar(n, key, "days like Mon-Fri or Mon,Wed,Fri", 64);
    *text = s;
    auto day = [&](std::string_view d) -> int {
      for (int i = 0; i < 7; ++i) {
        if (d.size() == 3 && std::equal(d.begin(), d.end(), kDayNames[i],
                                        [](char a, char b) { return std::tolower(a) == std::tolower(b); })) {
          return i;
        }
      }
      fail(n.Mark(), key,
           "unknown day '" + std::string(d) + "'; use Mon Tue Wed Thu Fri Sat Sun, e.g. Mon-Fri");
    };
    if (s == "daily" || s == "*") return 0x7f;
    uint8_t mask = 0;
    std::string_view rest = s;
    while (true) {
      auto comma = rest.find(',');
      std::string_view part = rest.substr(0, comma);
      while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
      while (!part.empty() && part.back() == ' ') part.remove_suffix(1);
      auto dash = part.find('-');
      if (dash == std::string_view::npos) {
        mask |= static_cast<uint8_t>(1u << day(part));
      } else {
        int a = day(part.substr(0, dash)), b = day(part.substr(dash + 1));
        for (int d = a;; d = (d + 1) % 7) {  // Fri-Mon wraps over the weekend
          mask |= static_cast<uint8_t>(1u << d);
          if (d == b) break;
        }
      }
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
    }
    return mask;
  }

  void hours(const YAML::Node& n, const std::string& key, Window* w) const {
    std::string s = scalar(n, key, "hours like \"08:00-20:00\"", 16);
    auto hm = [&](std::string_view t, int max_h) -> int {
      if (t.size() != 5 || t[2] != ':' || !std::isdigit(static_cast<unsigned char>(t[0])) ||
          !std::isdigit(static_cast<unsigned char>(t[1])) ||
          !std::isdigit(static_cast<unsigned char>(t[3])) ||
          !std::isdigit(static_cast<unsigned char>(t[4]))) {
        fail(n.Mark(), key,
             "invalid hours '" + s + "'; expected HH:MM-HH:MM, e.g. \"08:00-20:00\" or \"22:00-06:00\"");
      }
      int h = (t[0] - '0') * 10 + (t[1] - '0'), m = (t[3] - '0') * 10 + (t[4] - '0');
      if (h > max_h || m > 59 || (h == 24 && m != 0)) {
        fail(n.Mark(), key, "invalid time '" + std::string(t) + "' in hours '" + s + "'");
      }
      return h * 60 + m;
    };
    auto dash = s.find('-');
    if (dash == std::string::npos) {
      fail(n.Mark(), key,
           "invalid hours '" + s + "'; expected HH:MM-HH:MM, e.g. \"08:00-20:00\" or \"22:00-06:00\"");
    }
    int a = hm(std::string_view(s).substr(0, dash), 23), b = hm(std::string_view(s).substr(dash + 1), 24);
    if (a == b) fail(n.Mark(), key, "empty window '" + s + "': start equals end");
    w->start_min = static_cast<uint16_t>(a);
    w->end_min = static_cast<uint16_t>(b == 0 ? 1440 : b);  // "22:00-00:00" ends at midnight
  }

  Window window(const YAML::Node& n, const std::string& key) const {
    check_map(n, key, {"days", "hours", "tz"});
    Window w;
    if (n["days"]) w.days = days(n["days"], sub(key, "days"), &w.days_text);
    if (n["hours"]) hours(n["hours"], sub(key, "hours"), &w);
    if (n["tz"]) w.tz_name = scalar(n["tz"], sub(key, "tz"), "a time zone (UTC, +02:00, Europe/Berlin)", 64);
    try {
      w.tz = TimeZone::load(w.tz_name);
    } catch (const common::UsageError& e) {
      fail(n["tz"] ? n["tz"].Mark() : n.Mark(), sub(key, "tz"), e.what());
    }
    return w;
  }

  Target target(const YAML::Node& n, const std::string& key) const {
    check_map(n, key, {"cidrs", "names", "ports"});
    Target t;
    if (n["cidrs"]) t.cidrs = cidrs(n["cidrs"], sub(key, "cidrs"), kMaxListItems, true);
    if (n["names"]) {
      const YAML::Node l = seq(n["names"], sub(key, "names"), kMaxListItems, true);
      for (size_t i = 0; i < l.size(); ++i) {
        std::string g =
            scalar(l[i], idx(sub(key, "names"), i), "a host name or glob like *.prod.example.com", 253);
        if (g.empty() || !std::all_of(g.begin(), g.end(), [](char c) {
              return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ||
                     c == '*' || c == '?';
            })) {
          fail(l[i].Mark(), idx(sub(key, "names"), i),
               "invalid host name glob '" + g + "'; use letters, digits, '.', '-', '_', '*', '?'");
        }
        t.names.push_back(g);
      }
    }
    if (t.cidrs.empty() && t.names.empty()) fail(n.Mark(), key, "a target needs cidrs, names or both");
    if (n["ports"]) t.ports = ports(n["ports"], sub(key, "ports"));
    return t;
  }

  int64_t duration(const YAML::Node& n, const std::string& key, int64_t max_seconds) const {
    std::string text = scalar(n, key, "a duration like 1h", 32);
    auto d = common::parse_duration(text);
    if (!d || d->count() <= 0 || d->count() > max_seconds) {
      fail(n.Mark(), key,
           "invalid duration '" + text + "'; expected e.g. 30m, 1h (at most " +
               common::format_duration(std::chrono::seconds(max_seconds)) + ")");
    }
    return d->count();
  }

  PrincipalSet principal_set(const YAML::Node& n, const std::string& key, const std::set<std::string>& roles,
                             bool with_count = false) const {
    if (with_count) {
      check_map(n, key, {"count", "roles", "principals"});
    } else {
      check_map(n, key, {"roles", "principals"});
    }
    PrincipalSet set;
    if (n["roles"]) {
      set.roles = names(n["roles"], sub(key, "roles"), kMaxListItems);
      for (size_t j = 0; j < set.roles.size(); ++j) {
        if (!roles.count(set.roles[j]))
          fail(n["roles"][j].Mark(), idx(sub(key, "roles"), j),
               "unknown role '" + set.roles[j] + "'; define it under roles:");
      }
    }
    if (n["principals"]) set.principals = names(n["principals"], sub(key, "principals"), kMaxListItems);
    return set;
  }

  // The grant-workflow fields of an opt_out rule (docs/policy.md, "Grants").
  void grant_fields(const YAML::Node& n, const std::string& key, const std::set<std::string>& roles,
                    OptOutRule* r) const {
    if (n["approvals"]) {
      std::string ak = sub(key, "approvals");
      r->approvers = principal_set(n["approvals"], ak, roles, true);
      r->approvals_count =
          n["approvals"]["count"]
              ? static_cast<uint32_t>(integer(n["approvals"]["count"], sub(ak, "count"), 0, kMaxApprovals))
              : 1;
    } else if (r->require_approver) {
      r->approvals_count = 1;  // legacy spelling: one approver, anyone but the requester
    }
    if (n["requesters"]) r->requesters = principal_set(n["requesters"], sub(key, "requesters"), roles);
    if (n["reviewers"]) r->reviewers = principal_set(n["reviewers"], sub(key, "reviewers"), roles);
    if (n["request_ttl"])
      r->request_ttl_seconds = duration(n["request_ttl"], sub(key, "request_ttl"), kMaxRequestTtlSeconds);
    if (n["review_within"])
      r->review_within_seconds =
          duration(n["review_within"], sub(key, "review_within"), kMaxRequestTtlSeconds);
    if (n["standing"]) r->standing = boolean(n["standing"], sub(key, "standing"));
    if (n["break_glass"]) r->break_glass = boolean(n["break_glass"], sub(key, "break_glass"));
    if (r->standing && r->require_grant)
      fail(n["standing"].Mark(), sub(key, "standing"), "a standing rule cannot also set require_grant: true");
    if (r->break_glass) {
      if (r->standing)
        fail(n["break_glass"].Mark(), sub(key, "break_glass"), "a break_glass rule cannot be standing");
      if (r->approvals_count > 0)
        fail(
            n["break_glass"].Mark(), sub(key, "break_glass"),
            "break_glass grants are self-approved and reviewed afterwards; remove approvals (use reviewers)");
      if (r->max_ttl_seconds > kMaxBreakGlassTtlSeconds)
        fail(n["max_ttl"].Mark(), sub(key, "max_ttl"), "a break_glass rule's max_ttl must be at most 4h");
    }
  }

  Policy parse(const YAML::Node& root) {
    Policy p;
    p.source = source_;
    if (!root || root.IsNull())
      fail(YAML::Mark(), "", "empty policy; expected a mapping starting with 'version: 1'");
    check_map(root, "",
              {"version", "grant_store", "relays", "hosts", "principals", "roles", "opt_out", "audit_keys"},
              {"version"});
    p.version = static_cast<int>(integer(root["version"], "version", 1, 1));
    if (root["grant_store"]) p.grant_store = grant_store(root["grant_store"]);
    if (root["relays"]) p.relays = cidrs(root["relays"], "relays", kMaxRelays, false);
    std::set<std::string> hosts, roles, principals, rules;
    if (root["hosts"]) {
      const YAML::Node l = seq(root["hosts"], "hosts", kMaxHosts, false);
      for (size_t i = 0; i < l.size(); ++i) p.hosts.push_back(host_group(l[i], idx("hosts", i), hosts));
    }
    if (root["roles"]) {
      const YAML::Node l = seq(root["roles"], "roles", kMaxRoles, false);
      for (size_t i = 0; i < l.size(); ++i) p.roles.push_back(role(l[i], idx("roles", i), roles));
    }
    if (root["principals"]) {
      const YAML::Node l = seq(root["principals"], "principals", kMaxPrincipals, false);
      for (size_t i = 0; i < l.size(); ++i)
        p.principals.push_back(principal(l[i], idx("principals", i), roles, principals));
    }
    if (root["audit_keys"]) p.audit_keys = audit_keys(root["audit_keys"]);
    if (root["opt_out"]) {
      const YAML::Node l = seq(root["opt_out"], "opt_out", kMaxOptOut, false);
      for (size_t i = 0; i < l.size(); ++i)
        p.opt_out.push_back(opt_out_rule(l[i], idx("opt_out", i), roles, rules));
    }
    return p;
  }

 private:
  std::string grant_store(const YAML::Node& n) const {
    std::string store = scalar(n, "grant_store", "an absolute directory path", 4096);
    std::string why;
    if (is_etcd_uri(store)) {
      if (!parse_etcd_uri(store, &why)) fail(n.Mark(), "grant_store", why);
    } else if (store.empty() || store[0] != '/') {
      fail(n.Mark(), "grant_store",
           "expected an absolute directory path, got '" + store +
               "' (or etcd://HOST:PORT[,HOST:PORT]/PREFIX for the fleet store)");
    }
    return store;
  }

  // The name under `key`, refused if `seen` has it already (`what`: "host group", "role", ...).
  std::string unique_name(const YAML::Node& n, const std::string& key, const char* what,
                          std::set<std::string>& seen) const {
    std::string s = name(n, key);
    if (!seen.insert(s).second) fail(n.Mark(), key, std::string("duplicate ") + what + " name '" + s + "'");
    return s;
  }

  // Each of `list` (under `key`) must be a role defined above.
  void check_roles(const YAML::Node& n, const std::string& key, const std::vector<std::string>& list,
                   const std::set<std::string>& roles) const {
    for (size_t j = 0; j < list.size(); ++j) {
      if (!roles.count(list[j]))
        fail(n[j].Mark(), idx(key, j), "unknown role '" + list[j] + "'; define it under roles:");
    }
  }

  HostGroup host_group(const YAML::Node& n, const std::string& key, std::set<std::string>& seen) const {
    check_map(n, key, {"name", "cidrs", "ssh_ports"}, {"name", "cidrs"});
    HostGroup h;
    h.name = unique_name(n["name"], sub(key, "name"), "host group", seen);
    h.cidrs = cidrs(n["cidrs"], sub(key, "cidrs"), kMaxListItems, true);
    if (n["ssh_ports"]) h.ssh_ports = ports(n["ssh_ports"], sub(key, "ssh_ports"));
    return h;
  }

  Role role(const YAML::Node& n, const std::string& key, std::set<std::string>& seen) const {
    check_map(n, key, {"name", "targets", "max_sessions", "windows"}, {"name", "targets"});
    Role r;
    r.name = unique_name(n["name"], sub(key, "name"), "role", seen);
    const YAML::Node tl = seq(n["targets"], sub(key, "targets"), kMaxListItems, false);
    for (size_t j = 0; j < tl.size(); ++j) r.targets.push_back(target(tl[j], idx(sub(key, "targets"), j)));
    if (n["max_sessions"])
      r.max_sessions = static_cast<uint32_t>(integer(n["max_sessions"], sub(key, "max_sessions"), 1, 100000));
    if (n["windows"]) {
      const YAML::Node wl = seq(n["windows"], sub(key, "windows"), kMaxWindows, false);
      for (size_t j = 0; j < wl.size(); ++j) r.windows.push_back(window(wl[j], idx(sub(key, "windows"), j)));
    }
    return r;
  }

  // audit_keys: [{writer: relay@bastion1, key: "ssh-ed25519 AAAA..."}]; writer "*" = any writer.
  std::vector<AuditKeyEntry> audit_keys(const YAML::Node& n) const {
    const YAML::Node l = seq(n, "audit_keys", kMaxAuditKeys, false);
    std::vector<AuditKeyEntry> out;
    std::set<std::pair<std::string, std::string>> seen;
    for (size_t i = 0; i < l.size(); ++i) {
      const std::string key = idx("audit_keys", i);
      check_map(l[i], key, {"writer", "key"}, {"writer", "key"});
      AuditKeyEntry e;
      e.writer = scalar(l[i]["writer"], sub(key, "writer"), "a writer id (component@host) or '*'", 253);
      // Longer than a name: the host part may be a full DNS name.
      if (e.writer != "*" && !valid_name(e.writer))
        fail(l[i]["writer"].Mark(), sub(key, "writer"),
             "invalid writer '" + e.writer +
                 "'; use component@host as the log writes it (relay@bastion1), or '*'");
      const std::string line = scalar(l[i]["key"], sub(key, "key"), "a public key \"ssh-ed25519 AAAA...\"");
      try {
        e.key = parse_authorized_key(line);
      } catch (const common::UsageError& err) {
        fail(l[i]["key"].Mark(), sub(key, "key"), err.what());
      }
      if (!seen.emplace(e.writer, e.key.fingerprint).second)
        fail(l[i].Mark(), key, "duplicate audit key " + e.key.fingerprint + " for writer '" + e.writer + "'");
      out.push_back(std::move(e));
    }
    return out;
  }

  Principal principal(const YAML::Node& n, const std::string& key, const std::set<std::string>& roles,
                      std::set<std::string>& seen) const {
    check_map(n, key, {"name", "roles", "keys"}, {"name"});
    Principal pr;
    pr.name = unique_name(n["name"], sub(key, "name"), "principal", seen);
    if (n["roles"]) {
      pr.roles = names(n["roles"], sub(key, "roles"), kMaxListItems);
      check_roles(n["roles"], sub(key, "roles"), pr.roles, roles);
    }
    if (!n["keys"]) return pr;
    const YAML::Node kl = seq(n["keys"], sub(key, "keys"), kMaxKeysPerPrincipal, false);
    std::set<std::string> fps;
    for (size_t j = 0; j < kl.size(); ++j) {
      const std::string k = idx(sub(key, "keys"), j);
      std::string line = scalar(kl[j], k, "an authorized_keys line \"ssh-ed25519 AAAA...\"");
      try {
        pr.keys.push_back(parse_authorized_key(line));
      } catch (const common::UsageError& e) {
        fail(kl[j].Mark(), k, e.what());
      }
      if (!fps.insert(pr.keys.back().fingerprint).second)
        fail(kl[j].Mark(), k, "duplicate key " + pr.keys.back().fingerprint);
    }
    return pr;
  }

  OptOutRule opt_out_rule(const YAML::Node& n, const std::string& key, const std::set<std::string>& roles,
                          std::set<std::string>& seen) const {
    check_map(n, key,
              {"id", "description", "who", "from", "to", "max_ttl", "require_reason", "require_approver",
               "require_grant", "expires", "approvals", "requesters", "reviewers", "request_ttl", "standing",
               "break_glass", "review_within"},
              {"id", "who", "from", "to", "max_ttl", "expires"});
    OptOutRule r;
    r.id = name(n["id"], sub(key, "id"));
    if (r.id.starts_with("g-"))
      fail(n["id"].Mark(), sub(key, "id"), "ids starting with 'g-' are reserved for grants");
    if (!seen.insert(r.id).second)
      fail(n["id"].Mark(), sub(key, "id"), "duplicate opt_out id '" + r.id + "'");
    if (n["description"]) r.description = scalar(n["description"], sub(key, "description"), "text");
    who(n["who"], sub(key, "who"), roles, &r);
    r.from = cidrs(n["from"], sub(key, "from"), kMaxListItems, true);
    std::string tk = sub(key, "to");
    check_map(n["to"], tk, {"cidrs", "ports"}, {"cidrs"});
    r.to_cidrs = cidrs(n["to"]["cidrs"], sub(tk, "cidrs"), kMaxListItems, true);
    if (n["to"]["ports"]) r.to_ports = ports(n["to"]["ports"], sub(tk, "ports"));
    std::string ttl = scalar(n["max_ttl"], sub(key, "max_ttl"), "a duration like 8h", 32);
    auto d = common::parse_duration(ttl);
    if (!d || d->count() <= 0)
      fail(n["max_ttl"].Mark(), sub(key, "max_ttl"),
           "invalid duration '" + ttl + "'; expected e.g. 30m, 8h, 1d");
    r.max_ttl_seconds = d->count();
    if (n["require_reason"]) r.require_reason = boolean(n["require_reason"], sub(key, "require_reason"));
    if (n["require_approver"])
      r.require_approver = boolean(n["require_approver"], sub(key, "require_approver"));
    if (n["require_grant"]) r.require_grant = boolean(n["require_grant"], sub(key, "require_grant"));
    std::string ex = scalar(n["expires"], sub(key, "expires"), "a time like 2027-06-30T00:00:00Z", 40);
    if (!common::parse_rfc3339(ex, &r.expires))
      fail(n["expires"].Mark(), sub(key, "expires"),
           "invalid time '" + ex + "'; expected RFC 3339 like 2027-06-30T00:00:00Z");
    grant_fields(n, key, roles, &r);
    return r;
  }

  void who(const YAML::Node& n, const std::string& key, const std::set<std::string>& roles,
           OptOutRule* r) const {
    check_map(n, key, {"roles", "principals"});
    if (n["roles"]) {
      r->who_roles = names(n["roles"], sub(key, "roles"), kMaxListItems);
      check_roles(n["roles"], sub(key, "roles"), r->who_roles, roles);
    }
    if (n["principals"]) r->who_principals = names(n["principals"], sub(key, "principals"), kMaxListItems);
    if (r->who_roles.empty() && r->who_principals.empty())
      fail(n.Mark(), key, "who needs at least one role or principal");
  }

  std::string source_;
};

// yaml-cpp recurses per nesting level: bound the nesting before handing it untrusted text. Flow
// nesting is counted by brackets; block nesting needs indentation or a run of "- "/"? " indicators at
// the start of a line, so both are bounded too. Long flat lines stay fine.
void check_nesting(std::string_view text, const Parser& p) {
  auto fail = [&](size_t pos, int line, size_t col) {
    YAML::Mark m;
    m.pos = static_cast<int>(pos);
    m.line = line;
    m.column = static_cast<int>(col);
    p.fail(m, "", "nesting too deep; a policy needs at most a few levels");
  };
  int depth = 0, line = 0;
  char quote = 0;
  size_t i = 0;
  while (i < text.size()) {
    // Start of a line: indentation and leading block indicators.
    const size_t line_start = i;
    while (i < text.size() && text[i] == ' ') ++i;
    if (i - line_start > 256) fail(i, line, i - line_start);
    int indicators = 0;
    while (i + 1 < text.size() && (text[i] == '-' || text[i] == '?') && text[i + 1] == ' ') {
      if (++indicators > 16) fail(i, line, i - line_start);
      i += 2;
      while (i < text.size() && text[i] == ' ') ++i;
    }
    for (; i < text.size() && text[i] != '\n'; ++i) {
      const char c = text[i];
      if (quote) {
        if (c == quote) quote = 0;
        continue;
      }
      if (c == '#' && (i == line_start || text[i - 1] == ' ')) {
        while (i + 1 < text.size() && text[i + 1] != '\n') ++i;
        continue;
      }
      if (c == '"' || c == '\'') quote = c;
      if (c == '[' || c == '{') {
        if (++depth > 32) fail(i, line, i - line_start);
      }
      if (c == ']' || c == '}') --depth;
    }
    quote = 0;
    ++line;
    ++i;  // past the newline
  }
}

}  // namespace

Policy parse_policy(std::string_view text, std::string_view source) {
  Parser p{std::string(source)};
  if (text.size() > kMaxPolicyBytes) {
    p.fail(YAML::Mark(), "",
           "file is " + std::to_string(text.size()) + " bytes; at most " + std::to_string(kMaxPolicyBytes) +
               " are allowed");
  }
  check_nesting(text, p);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    p.fail(e.mark, "", "YAML syntax error: " + e.msg);
  }
  try {
    return p.parse(root);
  } catch (const PolicyError&) {
    throw;
  } catch (const YAML::Exception& e) {
    p.fail(e.mark, "", "YAML error: " + e.msg);
  }
}

Policy load_policy_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw common::SystemError("open policy " + path, errno);
  std::string data;
  data.resize(kMaxPolicyBytes + 1);
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<size_t>(in.gcount()));
  return parse_policy(data, path);
}

namespace {

// Writes a Policy back as YAML that parse_policy() reads to the same Policy (every field spelled
// out, lists in flow style).
class YamlWriter {
 public:
  std::string write(const Policy& p) {
    e_ << YAML::BeginMap;
    e_ << YAML::Key << "version" << YAML::Value << p.version;
    e_ << YAML::Key << "grant_store" << YAML::Value << p.grant_store;
    e_ << YAML::Key << "relays" << YAML::Value;
    cidrs(p.relays);
    each("hosts", p.hosts, &YamlWriter::host);
    each("principals", p.principals, &YamlWriter::principal);
    each("roles", p.roles, &YamlWriter::role);
    each("opt_out", p.opt_out, &YamlWriter::opt_out);
    if (!p.audit_keys.empty()) each("audit_keys", p.audit_keys, &YamlWriter::audit_key);
    e_ << YAML::EndMap;
    return std::string(e_.c_str()) + "\n";
  }

 private:
  template <typename T>
  void each(const char* key, const std::vector<T>& list, void (YamlWriter::*one)(const T&)) {
    e_ << YAML::Key << key << YAML::Value << YAML::BeginSeq;
    for (const auto& x : list) (this->*one)(x);
    e_ << YAML::EndSeq;
  }
  void cidrs(const std::vector<Cidr>& l) {
    e_ << YAML::Flow << YAML::BeginSeq;
    for (const auto& c : l) e_ << c.to_string();
    e_ << YAML::EndSeq;
  }
  void ports(const PortSet& ps) {
    e_ << YAML::Flow << YAML::BeginSeq;
    for (const auto& r : ps.ranges()) {
      if (r.lo == r.hi)
        e_ << r.lo;
      else
        e_ << YAML::DoubleQuoted << (std::to_string(r.lo) + "-" + std::to_string(r.hi));
    }
    e_ << YAML::EndSeq;
  }
  void strings(const std::vector<std::string>& l) {
    e_ << YAML::Flow << YAML::BeginSeq;
    for (const auto& s : l) e_ << YAML::DoubleQuoted << s;
    e_ << YAML::EndSeq;
  }
  static std::string hhmm(int m) {
    char b[8];
    (void)std::snprintf(b, sizeof b, "%02d:%02d", m / 60, m % 60);
    return b;
  }
  static std::string duration(int64_t s) { return common::format_duration(std::chrono::seconds(s)); }

  void host(const HostGroup& h) {
    e_ << YAML::BeginMap << YAML::Key << "name" << YAML::Value << h.name << YAML::Key << "cidrs"
       << YAML::Value;
    cidrs(h.cidrs);
    e_ << YAML::Key << "ssh_ports" << YAML::Value;
    ports(h.ssh_ports);
    e_ << YAML::EndMap;
  }
  void principal(const Principal& pr) {
    e_ << YAML::BeginMap << YAML::Key << "name" << YAML::Value << pr.name << YAML::Key << "roles"
       << YAML::Value;
    strings(pr.roles);
    e_ << YAML::Key << "keys" << YAML::Value << YAML::BeginSeq;
    for (const auto& k : pr.keys) e_ << YAML::DoubleQuoted << k.line;
    e_ << YAML::EndSeq << YAML::EndMap;
  }
  void target(const Target& t) {
    e_ << YAML::BeginMap;
    if (!t.cidrs.empty()) {
      e_ << YAML::Key << "cidrs" << YAML::Value;
      cidrs(t.cidrs);
    }
    if (!t.names.empty()) {
      e_ << YAML::Key << "names" << YAML::Value;
      strings(t.names);
    }
    e_ << YAML::Key << "ports" << YAML::Value;
    ports(t.ports);
    e_ << YAML::EndMap;
  }
  void window(const Window& w) {
    std::string days;
    for (int d = 0; d < 7; ++d) {
      int dd = (d + 1) % 7;  // Mon first
      if (w.days & (1u << dd)) days += (days.empty() ? "" : ",") + std::string(kDayNames[dd]);
    }
    e_ << YAML::Flow << YAML::BeginMap << YAML::Key << "days" << YAML::Value << days << YAML::Key << "hours"
       << YAML::Value << YAML::DoubleQuoted << (hhmm(w.start_min) + "-" + hhmm(w.end_min)) << YAML::Key
       << "tz" << YAML::Value << w.tz_name << YAML::EndMap;
  }
  void audit_key(const AuditKeyEntry& k) {
    e_ << YAML::BeginMap << YAML::Key << "writer" << YAML::Value << YAML::DoubleQuoted << k.writer
       << YAML::Key << "key" << YAML::Value << k.key.line << YAML::EndMap;
  }
  void role(const Role& r) {
    e_ << YAML::BeginMap << YAML::Key << "name" << YAML::Value << r.name;
    each("targets", r.targets, &YamlWriter::target);
    if (r.max_sessions) e_ << YAML::Key << "max_sessions" << YAML::Value << *r.max_sessions;
    if (!r.windows.empty()) each("windows", r.windows, &YamlWriter::window);
    e_ << YAML::EndMap;
  }
  void principal_set(const char* k, const PrincipalSet& ps, const uint32_t* count) {
    e_ << YAML::Key << k << YAML::Value << YAML::BeginMap;
    if (count) e_ << YAML::Key << "count" << YAML::Value << *count;
    e_ << YAML::Key << "roles" << YAML::Value;
    strings(ps.roles);
    e_ << YAML::Key << "principals" << YAML::Value;
    strings(ps.principals);
    e_ << YAML::EndMap;
  }
  void opt_out(const OptOutRule& r) {
    e_ << YAML::BeginMap << YAML::Key << "id" << YAML::Value << r.id;
    if (!r.description.empty())
      e_ << YAML::Key << "description" << YAML::Value << YAML::DoubleQuoted << r.description;
    e_ << YAML::Key << "who" << YAML::Value << YAML::BeginMap << YAML::Key << "roles" << YAML::Value;
    strings(r.who_roles);
    e_ << YAML::Key << "principals" << YAML::Value;
    strings(r.who_principals);
    e_ << YAML::EndMap << YAML::Key << "from" << YAML::Value;
    cidrs(r.from);
    e_ << YAML::Key << "to" << YAML::Value << YAML::BeginMap << YAML::Key << "cidrs" << YAML::Value;
    cidrs(r.to_cidrs);
    e_ << YAML::Key << "ports" << YAML::Value;
    ports(r.to_ports);
    e_ << YAML::EndMap;
    e_ << YAML::Key << "max_ttl" << YAML::Value << duration(r.max_ttl_seconds);
    e_ << YAML::Key << "require_reason" << YAML::Value << r.require_reason;
    e_ << YAML::Key << "require_approver" << YAML::Value << r.require_approver;
    e_ << YAML::Key << "require_grant" << YAML::Value << r.require_grant;
    e_ << YAML::Key << "expires" << YAML::Value << common::format_rfc3339(r.expires);
    principal_set("approvals", r.approvers, &r.approvals_count);
    principal_set("requesters", r.requesters, nullptr);
    principal_set("reviewers", r.reviewers, nullptr);
    e_ << YAML::Key << "request_ttl" << YAML::Value << duration(r.request_ttl_seconds);
    e_ << YAML::Key << "review_within" << YAML::Value << duration(r.review_within_seconds);
    e_ << YAML::Key << "standing" << YAML::Value << r.standing;
    e_ << YAML::Key << "break_glass" << YAML::Value << r.break_glass;
    e_ << YAML::EndMap;
  }

  YAML::Emitter e_;
};

}  // namespace

std::string to_yaml(const Policy& p) {
  return YamlWriter().write(p);
}

namespace {

// `relays` are trusted: a flow from them is tagged proxied and passes enforce mode. A prefix that
// holds far more than a relay fleet makes the bypass check meaningless for everything inside it.
void lint_relays(const Policy& p, std::vector<Lint>& out) {
  for (size_t i = 0; i < p.relays.size(); ++i) {
    const Cidr& c = p.relays[i];
    const std::string where = "relays[" + std::to_string(i) + "]";
    const unsigned min_len = c.addr.is_v4() ? kMinRelayPrefixV4 : kMinRelayPrefixV6;
    if (c.len == 0) {
      out.push_back({where, c.to_string() + " makes every source a relay: direct SSH from anywhere counts as "
                                            "proxied and passes enforce mode; list the relays' addresses"});
    } else if (c.len < min_len) {
      out.push_back(
          {where, c.to_string() + " is wider than /" + std::to_string(min_len) +
                      ": every host in it counts as a relay (proxied); list the relays' addresses"});
    }
  }
}

}  // namespace

namespace {

bool any_overlap(const std::vector<Cidr>& a, const std::vector<Cidr>& b) {
  for (const auto& x : a)
    for (const auto& y : b)
      if (x.overlaps(y)) return true;
  return false;
}

bool all_within(const std::vector<Cidr>& inner, const std::vector<Cidr>& outer) {
  return std::all_of(inner.begin(), inner.end(), [&](const Cidr& c) {
    return std::any_of(outer.begin(), outer.end(), [&](const Cidr& d) { return d.contains(c); });
  });
}

// Roles no principal uses, and targets another target of the same role already allows.
void lint_roles(const Policy& p, std::vector<Lint>& out) {
  std::set<std::string> used_roles;
  for (const auto& pr : p.principals) used_roles.insert(pr.roles.begin(), pr.roles.end());
  for (const auto& r : p.roles) {
    if (!used_roles.count(r.name))
      out.push_back({"roles[" + r.name + "]", "role is not used by any principal"});
    for (size_t i = 0; i < r.targets.size(); ++i) {
      for (size_t j = 0; j < r.targets.size(); ++j) {
        if (i == j) continue;
        const Target& a = r.targets[i];
        const Target& b = r.targets[j];
        // b shadows a if a's every constraint is implied by b's (b is at least as permissive).
        if (!a.names.empty() || !b.names.empty() || a.cidrs.empty() || b.cidrs.empty()) continue;
        bool covered = b.ports.contains(a.ports) && all_within(a.cidrs, b.cidrs);
        if (covered && (i > j || a != b)) {
          out.push_back({"roles[" + r.name + "].targets[" + std::to_string(i) + "]",
                         "shadowed by targets[" + std::to_string(j) + "], which allows everything it does"});
          break;
        }
      }
    }
  }
}

// Principals without keys, and keys listed for two principals.
void lint_keys(const Policy& p, std::vector<Lint>& out) {
  std::map<std::string, std::string> key_owner;
  for (const auto& pr : p.principals) {
    if (pr.keys.empty())
      out.push_back({"principals[" + pr.name + "]", "principal has no keys and cannot use the relay"});
    for (const auto& k : pr.keys) {
      auto [it, fresh] = key_owner.emplace(k.fingerprint, pr.name);
      if (!fresh) {
        out.push_back({"principals[" + pr.name + "]",
                       "key " + k.fingerprint + " is also listed for principal " + it->second +
                           "; sessions with it cannot be attributed to one person"});
      }
    }
  }
}

// One opt-out rule on its own: too wide, too long, expired, naming nobody.
void lint_rule(const OptOutRule& r, UnixSeconds now, const std::set<std::string>& principal_names,
               std::vector<Lint>& out) {
  const std::string where = "opt_out[" + r.id + "]";
  for (const auto& c : r.from)
    if (c.len == 0) out.push_back({where, "from " + c.to_string() + " allows direct SSH from every source"});
  for (const auto& c : r.to_cidrs)
    if (c.len == 0) out.push_back({where, "to " + c.to_string() + " allows direct SSH to every host"});
  if (r.max_ttl_seconds > kSaneMaxTtlSeconds) {
    out.push_back({where, "max_ttl " + common::format_duration(std::chrono::seconds(r.max_ttl_seconds)) +
                              " is over the sane maximum of 24h"});
  }
  if (r.expires <= now) out.push_back({where, "rule expired at " + common::format_rfc3339(r.expires)});
  if (r.standing && r.expires > now + kStandingWarnSeconds)
    out.push_back({where, "standing exception lasts until " + common::format_rfc3339(r.expires) +
                              ", more than 90 days; review it and set a nearer expires"});
  if (r.require_grant)
    out.push_back({where,
                   "require_grant is the default now (only standing rules approve flows by themselves); "
                   "remove it"});
  for (const auto& w : r.who_principals) {
    if (!principal_names.count(w))
      out.push_back({where, "who.principals names '" + w + "', which is not a principal"});
  }
}

// Rule i against every other rule: shadowed by one, or overlapping one.
void lint_overlaps(const Policy& p, size_t i, std::vector<Lint>& out) {
  const auto& r = p.opt_out[i];
  const std::string where = "opt_out[" + r.id + "]";
  for (size_t j = 0; j < p.opt_out.size(); ++j) {
    if (i == j) continue;
    const auto& o = p.opt_out[j];
    if (!any_overlap(r.from, o.from) || !any_overlap(r.to_cidrs, o.to_cidrs) ||
        !r.to_ports.overlaps(o.to_ports))
      continue;
    bool shadowed =
        all_within(r.from, o.from) && all_within(r.to_cidrs, o.to_cidrs) && o.to_ports.contains(r.to_ports);
    if (shadowed && (r != o || j < i)) {
      bool same =
          all_within(o.from, r.from) && all_within(o.to_cidrs, r.to_cidrs) && r.to_ports.contains(o.to_ports);
      if (!same || j < i) {
        out.push_back({where, "flows it covers are all covered by opt_out[" + o.id + "] (shadowed)"});
        continue;
      }
    }
    if (!shadowed && i < j)
      out.push_back({where, "overlaps opt_out[" + o.id + "] (same sources, targets and ports)"});
  }
}

}  // namespace

std::vector<Lint> lint_policy(const Policy& p, UnixSeconds now) {
  std::vector<Lint> out;
  lint_roles(p, out);
  lint_relays(p, out);
  lint_keys(p, out);
  std::set<std::string> principal_names;
  for (const auto& pr : p.principals) principal_names.insert(pr.name);
  for (size_t i = 0; i < p.opt_out.size(); ++i) {
    lint_rule(p.opt_out[i], now, principal_names, out);
    lint_overlaps(p, i, out);
  }
  return out;
}

}  // namespace sshring::policy
