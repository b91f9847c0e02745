// check_grant() and check_grants(): signatures, rule fit and approvals of stored grants (the
// model is in grant.h).
#include <algorithm>
#include <numeric>
#include <set>
#include <system_error>
#include <thread>
#include <vector>

#include "common/civil_time.h"
#include "common/duration.h"
#include "policy/grant.h"
#include "policy/parser.h"

namespace sshring::policy {
namespace {

std::string ttl_text(int64_t s) {
  return common::format_duration(std::chrono::seconds(s));
}

template <class Find>
bool in_set_with(const PrincipalSet& set, std::string_view name, Find&& find) {
  const Principal* p = find(name);
  if (!p) return false;
  if (set.empty()) return true;
  if (std::find(set.principals.begin(), set.principals.end(), name) != set.principals.end()) return true;
  for (const auto& r : p->roles)
    if (std::find(set.roles.begin(), set.roles.end(), r) != set.roles.end()) return true;
  return false;
}

template <class Find>
std::string rule_refusal_with(const OptOutRule& r, const GrantRequest& req, Find&& find) {
  const Principal* who = find(req.who);
  bool who_ok =
      std::find(r.who_principals.begin(), r.who_principals.end(), req.who) != r.who_principals.end();
  if (!who_ok && who) {
    for (const auto& role : who->roles)
      if (std::find(r.who_roles.begin(), r.who_roles.end(), role) != r.who_roles.end()) who_ok = true;
  }
  if (!who_ok) return req.who + " is not among its principals or roles";
  if (!std::any_of(r.from.begin(), r.from.end(), [&](const Cidr& c) { return c.contains(req.from); }))
    return "from " + req.from.to_string() + " is not within its sources";
  if (!std::any_of(r.to_cidrs.begin(), r.to_cidrs.end(), [&](const Cidr& c) { return c.contains(req.to); }))
    return "to " + req.to.to_string() + " is not within its targets";
  if (!r.to_ports.contains(req.ports))
    return "ports " + req.ports.to_string() + " are not within its ports " + r.to_ports.to_string();
  if (req.ttl_seconds <= 0) return "ttl must be positive";
  if (req.ttl_seconds > r.max_ttl_seconds)
    return "ttl " + ttl_text(req.ttl_seconds) + " exceeds its max_ttl " + ttl_text(r.max_ttl_seconds);
  if (r.require_reason && req.reason.empty()) return "it requires --reason";
  if (req.requester != req.who) {
    if (r.requesters.empty() || !in_set_with(r.requesters, req.requester, find))
      return req.requester + " may not request for " + req.who +
             " (the rule's requesters do not include them)";
  }
  return {};
}

template <class Find>
std::string decider_refusal_with(const OptOutRule& rule, const GrantRequest& req, std::string_view who,
                                 DecisionKind kind, Find&& find) {
  const std::string w(who);
  if (!find(who)) return w + " is not a principal of the policy";
  if (kind == DecisionKind::kRevoke) return {};
  if (who == req.requester || who == req.who)
    return w + " asked for this grant (or it is for them); someone else must decide";
  if (kind == DecisionKind::kReview) {
    if (!rule.break_glass)
      return "only break-glass grants are reviewed; rule " + rule.id + " is not break_glass";
    if (!in_set_with(rule.reviewers, who, find)) return w + " is not a reviewer of rule " + rule.id;
    return {};
  }
  if (rule.break_glass || rule.approvals_count == 0) return "rule " + rule.id + " needs no approval";
  if (!in_set_with(rule.approvers, who, find)) return w + " is not an approver of rule " + rule.id;
  return {};
}

}  // namespace

std::array<std::pair<const char*, std::string_view>, 6> request_texts(const GrantRequest& r) noexcept {
  return {{{"who", r.who},
           {"requester", r.requester},
           {"rule", r.rule},
           {"reason", r.reason},
           {"os_user", r.os_user},
           {"host", r.host}}};
}

std::string rule_refusal(const Policy& policy, const OptOutRule& rule, const GrantRequest& req) {
  return rule_refusal_with(rule, req, [&](std::string_view n) { return policy.find_principal(n); });
}

std::string decider_refusal(const Policy& policy, const OptOutRule& rule, const GrantRequest& req,
                            std::string_view principal, DecisionKind kind) {
  return decider_refusal_with(rule, req, principal, kind,
                              [&](std::string_view n) { return policy.find_principal(n); });
}

const OptOutRule* find_allowing_rule(const Policy& policy, const GrantRequest& req, UnixSeconds now,
                                     std::string* refusal) {
  std::string why;
  for (const auto& r : policy.opt_out) {
    if (!req.rule.empty() && r.id != req.rule) continue;
    std::string no = rule_refusal(policy, r, req);
    if (no.empty() && r.expires <= now) no = "the rule expired at " + common::format_rfc3339(r.expires);
    if (no.empty() && now + req.ttl_seconds > r.expires)
      no = "the grant would outlive the rule, which expires at " + common::format_rfc3339(r.expires);
    if (no.empty()) return &r;
    why += "rule " + r.id + ": " + no + "\n";
  }
  if (why.empty()) {
    why = req.rule.empty() ? "no opt_out rule exists in " + policy.source + "\n"
                           : "no opt_out rule '" + req.rule + "' in " + policy.source + "\n";
  }
  if (refusal) *refusal = why;
  return nullptr;
}

GrantChecker::GrantChecker(const Policy& policy, SignatureCache* cache) : policy_(policy), cache_(cache) {
  principals_.reserve(policy.principals.size());
  for (const auto& p : policy.principals) {
    principals_.emplace(p.name, &p);
    for (const auto& k : p.keys) keys_.emplace(k.fingerprint, &p);
  }
  for (const auto& r : policy.opt_out) rules_.emplace(r.id, &r);
}

const Principal* GrantChecker::principal(std::string_view name) const noexcept {
  auto it = principals_.find(name);
  return it == principals_.end() ? nullptr : it->second;
}

const Principal* GrantChecker::key_owner(std::string_view fp) const noexcept {
  auto it = keys_.find(fp);
  return it == keys_.end() ? nullptr : it->second;
}

bool GrantChecker::in_set(const PrincipalSet& set, std::string_view name) const noexcept {
  return in_set_with(set, name, [&](std::string_view n) { return principal(n); });
}

bool GrantChecker::verify(std::string_view sig, std::string_view msg, std::string* fp,
                          std::string* why) const {
  if (cache_) {
    auto f = cache_->verify(sig, msg, why);
    if (f) *fp = *f;
    return f.has_value();
  }
  auto k = sshsig_verify(sig, kGrantNamespace, msg, why);
  if (k) *fp = k->fingerprint;
  return k.has_value();
}

CheckedGrant check_grant(const Policy& policy, const SignedGrant& g, UnixSeconds now, SignatureCache* cache) {
  return GrantChecker(policy, cache).check(g, now);
}

std::vector<CheckedGrant> check_grants(const Policy& policy, const std::vector<const SignedGrant*>& stored,
                                       UnixSeconds now, SignatureCache* cache) {
  std::vector<CheckedGrant> checked(stored.size());
  // A cold build is Ed25519 verifications (~100 us each here, one per request and decision), so
  // it is spread over the cores once there are enough grants to pay for the threads. check() is
  // const and never throws; the signature cache is thread-safe; each thread fills its own slice.
  const GrantChecker checker(policy, cache);
  auto check_range = [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) checked[i] = checker.check(*stored[i], now);
  };
  constexpr size_t kGrantsPerThread = 256;
  const size_t cores = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
  const size_t parts = std::clamp<size_t>(stored.size() / kGrantsPerThread, 1, cores);
  const size_t chunk = (stored.size() + parts - 1) / parts;
  std::vector<std::jthread> helpers;
  size_t inline_from = stored.size();
  for (size_t p = 1; p < parts; ++p) {
    const size_t begin = p * chunk, end = std::min(stored.size(), begin + chunk);
    try {
      helpers.emplace_back(check_range, begin, end);
    } catch (const std::system_error&) {  // no thread to be had: this one does the rest
      inline_from = begin;
      break;
    }
  }
  check_range(0, std::min(stored.size(), chunk));
  check_range(inline_from, stored.size());
  return checked;  // the helpers join first
}

CheckedGrant GrantChecker::check(const SignedGrant& g, UnixSeconds now) const {
  CheckedGrant c;
  c.object = g;
  const GrantRequest& r = g.request;
  auto reject = [&](std::string code, std::string detail) {
    c.status = GrantStatus::kRejected;
    c.reject_reason = std::move(code);
    c.detail = std::move(detail);
    return c;
  };
  if (g.signature.empty()) return reject("unsigned", "the request carries no signature");
  std::string fp, why;
  if (!verify(g.signature, canonical_request(r), &fp, &why))
    return reject("bad_signature", "request: " + why);
  c.requester_fingerprint = fp;
  const Principal* owner = key_owner(fp);
  if (!owner)
    return reject("unknown_key", "request signed by " + fp + ", a key no principal of the policy lists");
  if (owner->name != r.requester)
    return reject("signer_mismatch", "request names requester " + printable_escape(r.requester) + " but " +
                                         fp + " is " + owner->name + "'s key");
  for (const auto& [field, text] : request_texts(r))
    if (!printable_utf8(text))
      return reject("outside_rule",
                    std::string("request field ") + field + " holds a control character or invalid UTF-8");
  if (r.created > now + kClockSkewSeconds)
    return reject("future_time", "request time " + common::format_rfc3339(r.created) + " is in the future");
  auto rit = rules_.find(r.rule);
  const OptOutRule* rule = rit == rules_.end() ? nullptr : rit->second;
  if (!rule) return reject("missing_rule", "rule '" + r.rule + "' is not in the policy");
  std::string no = rule_refusal_with(*rule, r, [&](std::string_view n) { return principal(n); });
  if (!no.empty()) return reject("outside_rule", "rule " + rule->id + ": " + no);
  for (size_t i = 0; i < g.decisions.size(); ++i) {
    const GrantDecision& d = g.decisions[i];
    std::string what = "decision " + std::to_string(i) + " (" + std::string(decision_name(d.kind)) + " by " +
                       printable_escape(d.signer) + ")";
    std::string dfp;
    if (d.signature.empty()) return reject("bad_decision", what + ": not signed");
    if (!verify(d.signature, canonical_decision(r, d), &dfp, &why))
      return reject("bad_decision", what.append(": ").append(why));
    const Principal* o = key_owner(dfp);
    if (!o || o->name != d.signer)
      return reject("bad_decision",
                    what.append(": signed by ").append(dfp).append(", not a key of ").append(d.signer));
    if (!printable_utf8(d.signer) || !printable_utf8(d.note) || !printable_utf8(d.os_user) ||
        !printable_utf8(d.host))
      return reject("bad_decision", what + ": holds a control character or invalid UTF-8");
    if (d.at > now + kClockSkewSeconds) return reject("future_time", what + ": time is in the future");
    c.decisions.push_back(CheckedApproval{d.kind, d.signer, dfp, d.at, d.note, false, {}});
  }
  evaluate(*rule, c, now);
  return c;
}

GrantChecker::Tally GrantChecker::tally(const OptOutRule& rule, CheckedGrant& c) const {
  const GrantRequest& r = c.object.request;
  auto find = [&](std::string_view n) { return principal(n); };
  std::vector<size_t> order(c.decisions.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return c.decisions[a].at < c.decisions[b].at; });
  c.break_glass = rule.break_glass;
  const uint32_t need = rule.break_glass ? 0 : rule.approvals_count;
  const UnixSeconds window_end = r.created + rule.request_ttl_seconds;
  c.pending_until = window_end;
  std::set<std::string> approvers;
  std::optional<UnixSeconds> activation;
  if (need == 0) activation = r.created;
  const CheckedApproval* deny = nullptr;
  const CheckedApproval* revoke = nullptr;
  for (size_t i : order) {
    CheckedApproval& a = c.decisions[i];
    std::string& no = a.not_counted_why;
    no = decider_refusal_with(rule, r, a.signer, a.kind, find);
    if (!no.empty()) continue;
    if (a.kind == DecisionKind::kRevoke) {
      a.counted = true;
      if (!revoke) revoke = &a;
      continue;
    }
    if (a.kind == DecisionKind::kReview) {
      if (!activation)
        no = "the grant was never active";
      else
        a.counted = c.reviewed = true;
      continue;
    }
    if (a.at < r.created)
      no = "dated before the request";
    else if (activation)
      no = a.kind == DecisionKind::kDeny ? "after activation (revoke instead)" : "not needed: already active";
    else if (deny)
      no = "the request was denied";
    else if (a.at >= window_end)
      no = "after the request expired";
    if (!no.empty()) continue;
    if (a.kind == DecisionKind::kDeny) {
      a.counted = true;
      deny = &a;
      continue;
    }
    a.counted = approvers.insert(a.signer).second;
    if (!a.counted) no = a.signer + " already approved";
    if (approvers.size() >= need) activation = a.at;
  }
  return {activation, deny, revoke, approvers.size()};
}

void GrantChecker::evaluate(const OptOutRule& rule, CheckedGrant& c, UnixSeconds now) const {
  const GrantRequest& r = c.object.request;
  const UnixSeconds window_end = r.created + rule.request_ttl_seconds;
  const uint32_t need = rule.break_glass ? 0 : rule.approvals_count;
  const auto [activation, deny, revoke, approvers] = tally(rule, c);
  if (deny) {
    c.status = GrantStatus::kDenied;
    c.detail = "denied by " + deny->signer + (deny->note.empty() ? "" : ": " + deny->note);
    return;
  }
  if (!activation) {
    if (revoke) {
      c.status = GrantStatus::kRevoked;
      c.detail = "withdrawn by " + revoke->signer + " before approval";
    } else if (now >= window_end) {
      c.status = GrantStatus::kExpired;
      c.detail = "request expired unapproved at " + common::format_rfc3339(window_end);
    } else {
      c.status = GrantStatus::kPending;
      c.detail = "needs " + std::to_string(need - approvers) + " more approval(s); pending until " +
                 common::format_rfc3339(window_end);
    }
    return;
  }
  if (now < *activation) {
    // Dated ahead of this reader's clock (within the skew): not usable before it starts, so it never
    // lives longer than its ttl (<= max_ttl) from when it can first be used. Checked again then.
    c.status = revoke ? GrantStatus::kRevoked : GrantStatus::kPending;
    c.pending_until = *activation;
    c.detail = revoke ? "withdrawn by " + revoke->signer + " before it started"
                      : "starts at " + common::format_rfc3339(*activation) + " (dated ahead of this clock)";
    return;
  }
  c.activated = true;
  Grant& t = c.terms;
  t.id = r.id;
  t.who = r.who;
  t.from = r.from;
  t.to = r.to;
  t.ports = r.ports;
  t.rule = r.rule;
  t.reason = r.reason;
  t.created_by = r.os_user;
  t.created = *activation;
  t.expires = std::min(*activation + r.ttl_seconds, rule.expires);
  if (revoke) {
    t.revoked_at = revoke->at;
    t.revoked_by = revoke->signer;
    t.revoke_reason = revoke->note;
  }
  c.review_due = *activation + rule.review_within_seconds;
  if (now < t.effective_expiry()) {
    c.status = GrantStatus::kActive;
    c.detail = "until " + common::format_rfc3339(t.effective_expiry());
  } else if (revoke && revoke->at < t.expires) {
    c.status = GrantStatus::kRevoked;
    c.detail = "revoked by " + revoke->signer + " at " + common::format_rfc3339(revoke->at) +
               (revoke->note.empty() ? "" : ": " + revoke->note);
  } else {
    c.status = GrantStatus::kExpired;
    c.detail = "expired at " + common::format_rfc3339(t.expires);
  }
}

}  // namespace sshring::policy
