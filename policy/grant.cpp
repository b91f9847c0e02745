#include "policy/grant.h"

#include <openssl/sha.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "common/civil_time.h"
#include "common/duration.h"
#include "common/error.h"
#include "common/sha256.h"

namespace sshring::policy {
namespace {

// Text values in canonical encodings: one line each, so line breaks and control bytes are escaped.
std::string esc(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

void line(std::string* out, std::string_view key, std::string_view value) {
  out->append(key);
  out->push_back(' ');
  out->append(esc(value));
  out->push_back('\n');
}

using common::sha256_hex;

}  // namespace

bool valid_grant_id(std::string_view id) noexcept {
  return id.size() == 14 && id.starts_with("g-") && std::all_of(id.begin() + 2, id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string_view decision_name(DecisionKind k) noexcept {
  switch (k) {
    case DecisionKind::kApprove:
      return "approve";
    case DecisionKind::kDeny:
      return "deny";
    case DecisionKind::kReview:
      return "review";
    case DecisionKind::kRevoke:
      return "revoke";
  }
  return "unknown";
}

std::string_view status_name(GrantStatus s) noexcept {
  switch (s) {
    case GrantStatus::kPending:
      return "pending";
    case GrantStatus::kActive:
      return "active";
    case GrantStatus::kExpired:
      return "expired";
    case GrantStatus::kRevoked:
      return "revoked";
    case GrantStatus::kDenied:
      return "denied";
    case GrantStatus::kRejected:
      return "rejected";
  }
  return "unknown";
}

std::string canonical_request(const GrantRequest& r) {
  std::string out = "sshring-grant-request v1\n";
  line(&out, "id", r.id);
  line(&out, "who", r.who);
  line(&out, "requester", r.requester);
  line(&out, "rule", r.rule);
  line(&out, "from", r.from.to_string());
  line(&out, "to", r.to.to_string());
  line(&out, "ports", r.ports.to_string());
  line(&out, "ttl", std::to_string(r.ttl_seconds));
  line(&out, "created", std::to_string(r.created));
  line(&out, "reason", r.reason);
  line(&out, "os-user", r.os_user);
  line(&out, "host", r.host);
  return out;
}

std::string canonical_decision(const GrantRequest& r, const GrantDecision& d) {
  std::string out = "sshring-grant-decision v1\n";
  line(&out, "grant", r.id);
  line(&out, "request-sha256", sha256_hex(canonical_request(r)));
  line(&out, "decision", decision_name(d.kind));
  line(&out, "signer", d.signer);
  line(&out, "at", std::to_string(d.at));
  line(&out, "note", d.note);
  line(&out, "os-user", d.os_user);
  line(&out, "host", d.host);
  return out;
}

void sign_request(SignedGrant& g, const SshsigSigner& signer) {
  g.signature = sshsig_sign(signer, kGrantNamespace, canonical_request(g.request));
}

void sign_decision(const GrantRequest& r, GrantDecision& d, const SshsigSigner& signer) {
  d.signature = sshsig_sign(signer, kGrantNamespace, canonical_decision(r, d));
}

// ---- JSON ----

nlohmann::json signed_grant_to_json(const SignedGrant& g) {
  const GrantRequest& r = g.request;
  nlohmann::json req = {
      {"id", r.id},
      {"who", r.who},
      {"requester", r.requester},
      {"rule", r.rule},
      {"from", r.from.to_string()},
      {"to", r.to.to_string()},
      {"ports", r.ports.to_string()},
      {"ttl_seconds", r.ttl_seconds},
      {"created_unix", r.created},
      {"created", common::format_rfc3339(r.created)},
      {"reason", r.reason},
      {"os_user", r.os_user},
      {"host", r.host},
  };
  nlohmann::json ds = nlohmann::json::array();
  for (const auto& d : g.decisions) {
    ds.push_back({{"decision", decision_name(d.kind)},
                  {"signer", d.signer},
                  {"at_unix", d.at},
                  {"at", common::format_rfc3339(d.at)},
                  {"note", d.note},
                  {"os_user", d.os_user},
                  {"host", d.host},
                  {"signature", d.signature}});
  }
  return {{"format", "sshring-grant/v1"}, {"id", r.id},      {"request", std::move(req)},
          {"signature", g.signature},     {"decisions", ds}, {"expire_recorded", g.expire_recorded}};
}

namespace {

struct JsonIn {
  const nlohmann::json& j;
  std::string where;
  [[noreturn]] void bad(std::string_view field, std::string_view why) const {
    throw common::UsageError("grant field '" + where + std::string(field) + "': " + std::string(why));
  }
  std::string str(const char* k, bool required, size_t limit = kMaxTextLength) const {
    auto it = j.find(k);
    if (it == j.end()) {
      if (required) bad(k, "missing");
      return {};
    }
    if (!it->is_string()) bad(k, "expected a string");
    auto s = it->get<std::string>();
    if (s.size() > limit) bad(k, "longer than " + std::to_string(limit) + " bytes");
    return s;
  }
  int64_t num(const char* k) const {
    auto it = j.find(k);
    if (it == j.end() || !it->is_number_integer()) bad(k, "expected an integer");
    return it->get<int64_t>();
  }
  Cidr cidr(const char* k) const {
    auto c = Cidr::parse(str(k, true, 64));
    if (!c) bad(k, "not a CIDR");
    return *c;
  }
};

GrantDecision decision_from_json(const nlohmann::json& j, size_t i) {
  if (!j.is_object())
    throw common::UsageError("grant field 'decisions[" + std::to_string(i) + "]': expected an object");
  JsonIn in{j, "decisions[" + std::to_string(i) + "]."};
  GrantDecision d;
  std::string k = in.str("decision", true, 16);
  if (k == "approve") {
    d.kind = DecisionKind::kApprove;
  } else if (k == "deny") {
    d.kind = DecisionKind::kDeny;
  } else if (k == "review") {
    d.kind = DecisionKind::kReview;
  } else if (k == "revoke") {
    d.kind = DecisionKind::kRevoke;
  } else {
    in.bad("decision", "expected approve, deny, review or revoke");
  }
  d.signer = in.str("signer", true, kMaxNameLength);
  d.at = in.num("at_unix");
  d.note = in.str("note", false);
  d.os_user = in.str("os_user", false, kMaxNameLength);
  d.host = in.str("host", false, 256);
  d.signature = in.str("signature", false, kMaxSshsigArmorBytes);
  return d;
}

}  // namespace

SignedGrant signed_grant_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw common::UsageError("grant: expected a JSON object");
  JsonIn top{j, ""};
  if (top.str("format", true, 32) != "sshring-grant/v1")
    top.bad("format", "expected \"sshring-grant/v1\" (a grant written by sshring grant request)");
  auto rit = j.find("request");
  if (rit == j.end() || !rit->is_object()) top.bad("request", "expected an object");
  JsonIn in{*rit, "request."};
  SignedGrant g;
  GrantRequest& r = g.request;
  r.id = in.str("id", true, 14);
  if (!valid_grant_id(r.id)) in.bad("id", "expected g-<12 lowercase hex digits>");
  if (top.str("id", true, 14) != r.id) top.bad("id", "differs from request.id");
  r.who = in.str("who", true, kMaxNameLength);
  r.requester = in.str("requester", true, kMaxNameLength);
  r.rule = in.str("rule", true, kMaxNameLength);
  r.from = in.cidr("from");
  r.to = in.cidr("to");
  auto ports = PortSet::parse(in.str("ports", true, 256));
  if (!ports) in.bad("ports", "not a port list");
  r.ports = *ports;
  r.ttl_seconds = in.num("ttl_seconds");
  r.created = in.num("created_unix");
  r.reason = in.str("reason", false);
  r.os_user = in.str("os_user", false, kMaxNameLength);
  r.host = in.str("host", false, 256);
  g.signature = top.str("signature", false, kMaxSshsigArmorBytes);
  if (auto d = j.find("decisions"); d != j.end()) {
    if (!d->is_array()) top.bad("decisions", "expected an array");
    if (d->size() > kMaxDecisions) top.bad("decisions", "more than 64 decisions");
    for (size_t i = 0; i < d->size(); ++i) g.decisions.push_back(decision_from_json((*d)[i], i));
  }
  if (auto it = j.find("expire_recorded"); it != j.end() && it->is_boolean())
    g.expire_recorded = it->get<bool>();
  return g;
}

// ---- signature cache ----

std::optional<std::string> SignatureCache::verify(std::string_view armored, std::string_view message,
                                                  std::string* why) {
  std::string key(armored);
  key.push_back('\0');
  key += sha256_hex(message);
  {
    std::lock_guard lock(mu_);
    if (auto it = map_.find(key); it != map_.end()) {
      it->second.used = gen_;
      ++hits_;
      if (why) *why = it->second.why;
      return it->second.fingerprint;
    }
  }
  Entry e;
  if (auto k = sshsig_verify(armored, kGrantNamespace, message, &e.why)) e.fingerprint = k->fingerprint;
  std::lock_guard lock(mu_);
  ++misses_;
  e.used = gen_;
  if (why) *why = e.why;
  if (map_.size() >= capacity_) map_.clear();  // bounded: a flood of distinct junk cannot grow it
  auto fp = e.fingerprint;
  map_.emplace(std::move(key), std::move(e));
  return fp;
}

void SignatureCache::end_generation() {
  std::lock_guard lock(mu_);
  std::erase_if(map_, [&](const auto& kv) { return kv.second.used < gen_; });
  ++gen_;
}

size_t SignatureCache::hits() const {
  std::lock_guard lock(mu_);
  return hits_;
}
size_t SignatureCache::misses() const {
  std::lock_guard lock(mu_);
  return misses_;
}
size_t SignatureCache::size() const {
  std::lock_guard lock(mu_);
  return map_.size();
}

}  // namespace sshring::policy
