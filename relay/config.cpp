#include "relay/config.h"

#include <yaml-cpp/yaml.h>
#include <algorithm>

#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "common/duration.h"
#include "common/error.h"
#include "common/sockaddr.h"
#include "relay/admission.h"

namespace sshring::relay {

std::optional<std::chrono::milliseconds> parse_millis(std::string_view text) {
  if (text == "0") return std::chrono::milliseconds(0);
  if (text.size() > 2 && text.substr(text.size() - 2) == "ms") {
    std::string_view digits = text.substr(0, text.size() - 2);
    if (digits.size() > 12) return std::nullopt;
    long long v = 0;
    for (char c : digits) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
      v = v * 10 + (c - '0');
    }
    if (v <= 0) return std::nullopt;
    return std::chrono::milliseconds(v);
  }
  auto s = common::parse_duration(text);
  if (!s) return std::nullopt;
  return std::chrono::duration_cast<std::chrono::milliseconds>(*s);
}

namespace {

class Parser {
 public:
  Parser(std::string source, bool upstream_optional)
      : source_(std::move(source)), upstream_optional_(upstream_optional) {}

  [[noreturn]] void fail(const YAML::Node& n, const std::string& key, const std::string& msg) const {
    const bool known = n.IsDefined() && n.Mark().line >= 0;
    throw common::SourceError(source_, known ? n.Mark().line + 1 : 0, known ? n.Mark().column + 1 : 0, key,
                              msg);
  }

  std::string scalar(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) fail(n, key, "expected a single value");
    return n.Scalar();
  }

  // A mapping key may itself be a list or a map in YAML ("[]: 1"); a setting name is a plain word.
  std::string key_name(const YAML::Node& k) const {
    if (!k.IsScalar()) fail(k, "", "a setting name must be a plain word, not a list or a mapping");
    return k.Scalar();
  }

  std::chrono::milliseconds duration(const YAML::Node& n, const std::string& key, bool allow_zero) const {
    std::string v = scalar(n, key);
    auto d = parse_millis(v);
    if (!d || (!allow_zero && d->count() == 0))
      fail(n, key,
           "expected a duration like 500ms, 5s, 2m or 1h30m" + std::string(allow_zero ? " (or 0)" : "") +
               ", got '" + v + "'");
    return *d;
  }

  uint64_t integer(const YAML::Node& n, const std::string& key, uint64_t lo, uint64_t hi) const {
    std::string v = scalar(n, key);
    uint64_t out = 0;
    bool ok = !v.empty() && v.size() < 19;
    for (char c : v) ok = ok && std::isdigit(static_cast<unsigned char>(c));
    if (ok) out = std::stoull(v);
    if (!ok || out < lo || out > hi)
      fail(n, key,
           "expected a whole number from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got '" +
               v + "'");
    return out;
  }

  common::SockAddr address(const YAML::Node& n, const std::string& key) const {
    std::string v = scalar(n, key);
    auto a = common::SockAddr::parse(v);
    if (!a) fail(n, key, "expected ADDR:PORT (e.g. 127.0.0.1:2222 or \"[::1]:2222\"), got '" + v + "'");
    return *a;
  }

  ConfigFile parse(std::string_view text) {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(text));
    } catch (const YAML::Exception& e) {
      throw common::SourceError(source_, e.mark.line + 1, e.mark.column + 1, "", "not valid YAML: " + e.msg);
    }
    ConfigFile out;
    if (!root.IsMap()) fail(root, "", "expected a mapping with 'routes:' and optional limits");
    for (const auto& kv : root) {
      std::string key = key_name(kv.first);
      if (std::find(std::begin(kSettings), std::end(kSettings), key) == std::end(kSettings)) {
        std::string all;
        for (const char* k : kSettings) all += (all.empty() ? "" : ", ") + std::string(k);
        fail(kv.first, key, "unknown setting; expected one of " + all);
      }
      setting(key, kv.second, out);
    }
    if (out.cfg.routes.empty())
      fail(root, "routes", "at least one route is required (- listen: ..., upstream: ...)");
    return out;
  }

 private:
  static constexpr const char* kSettings[] = {"workers",
                                              "max_sessions",
                                              "connect_timeout",
                                              "idle_timeout",
                                              "handshake_timeout",
                                              "drain_timeout",
                                              "pipe_size",
                                              "splice_mode",
                                              "max_startups",
                                              "max_startups_per_source",
                                              "per_source_netblock",
                                              "first_byte_timeout",
                                              "routes"};

  // One top-level setting (a key of kSettings).
  void setting(const std::string& key, const YAML::Node& v, ConfigFile& out) {
    RelayConfig& c = out.cfg;
    if (key == "workers") {
      c.workers = static_cast<unsigned>(integer(v, key, 0, 256));
      out.has_workers = true;
    } else if (key == "max_sessions") {
      c.max_sessions = static_cast<uint32_t>(integer(v, key, 1, 10'000'000));
      out.has_max_sessions = true;
    } else if (key == "connect_timeout") {
      c.connect_timeout = duration(v, key, false);
      out.has_connect_timeout = true;
    } else if (key == "idle_timeout") {
      c.idle_timeout = duration(v, key, true);
      out.has_idle_timeout = true;
    } else if (key == "handshake_timeout") {
      c.handshake_timeout = duration(v, key, false);
      out.has_handshake_timeout = true;
    } else if (key == "drain_timeout") {
      c.drain_timeout = duration(v, key, true);
      out.has_drain_timeout = true;
    } else if (key == "pipe_size") {
      c.pipe_size = static_cast<uint32_t>(integer(v, key, 4096, 1u << 30));
    } else if (key == "splice_mode") {
      c.splice_mode = splice_mode(v, key);
    } else if (key == "max_startups" || key == "per_source_netblock") {
      startups(v, key, c.startups);
    } else if (key == "max_startups_per_source") {
      c.startups.per_source = static_cast<uint32_t>(integer(v, key, 1, 10'000'000));
    } else if (key == "first_byte_timeout") {
      c.startups.first_byte_timeout = duration(v, key, false);
    } else if (key == "routes") {
      parse_routes(v, c);
    }
  }

  SpliceMode splice_mode(const YAML::Node& v, const std::string& key) const {
    std::string m = scalar(v, key);
    if (m == "inline") return SpliceMode::kInline;
    if (m == "ring") return SpliceMode::kRing;
    fail(v, key, "expected 'inline' or 'ring', got '" + m + "'");
  }

  // The same forms as the flags (--max-startups, --per-source-netblock); errors name the line.
  void startups(const YAML::Node& v, const std::string& key, AdmissionConfig& limits) const {
    std::string text = scalar(v, key);
    try {
      if (key == "max_startups")
        parse_max_startups(text, key, limits);
      else
        parse_netblock(text, key, limits);
    } catch (const common::UsageError& e) {
      fail(v, "", e.what());
    }
  }

  void parse_routes(const YAML::Node& list, RelayConfig& c) {
    if (!list.IsSequence()) fail(list, "routes", "expected a list of {listen, upstream} entries");
    for (const auto& item : list) {
      if (!item.IsMap()) fail(item, "routes", "each route is a mapping with 'listen' and 'upstream'");
      Route r;
      bool has_listen = false;
      for (const auto& kv : item) {
        std::string key = key_name(kv.first);
        if (key == "listen") {
          r.listen = address(kv.second, key);
          has_listen = true;
        } else if (key == "upstream") {
          r.upstream = address(kv.second, key);
          if (r.upstream->port() == 0) fail(kv.second, key, "upstream port must not be 0");
        } else {
          fail(kv.first, key, "unknown route setting; expected 'listen' and 'upstream'");
        }
      }
      if (!has_listen) fail(item, "listen", "missing in this route");
      if (!r.upstream && !upstream_optional_)
        fail(item, "upstream",
             "missing in this route (static routes need one; authenticated routes need --policy)");
      for (const Route& prev : c.routes)
        if (r.listen.port() != 0 && prev.listen.to_string() == r.listen.to_string())
          fail(item, "listen", "address " + r.listen.to_string() + " is used by an earlier route");
      c.routes.push_back(std::move(r));
    }
  }

  std::string source_;
  bool upstream_optional_;
};

}  // namespace

ConfigFile parse_config(std::string_view text, const std::string& source, bool upstream_optional) {
  return Parser(source, upstream_optional).parse(text);
}

ConfigFile load_config_file(const std::string& path, bool upstream_optional) {
  std::ifstream in(path);
  if (!in)
    throw common::UsageError("config " + path + ": cannot read the file; check the path and permissions");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path, upstream_optional);
}

}  // namespace sshring::relay
