// `sshring grant request|add|approve|deny|review|revoke|list`: signed, time-bound opt-out grants.
// Every change is signed with the person's SSH key (ssh-agent or --identity, as `sshring connect`),
// stored whole in the grant store and recorded in the audit log before the command says yes.
// Readers (relay, agent, policy explain, grant list) verify the signatures and re-check each grant
// against the policy, so nothing written here is trusted later as written (docs/policy.md, "Grants").
#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <tuple>

#include "bridge/grant_records.h"
#include "cli/command.h"
#include "cli/store_flags.h"
#include "client/client.h"
#include "common/civil_time.h"
#include "common/duration.h"
#include "common/error.h"
#include "common/flags.h"
#include "common/host.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "metrics/audit.h"
#include "policy/grant_store.h"
#include "policy/parser.h"

namespace client = sshring::client;

namespace {

using namespace sshring;
using common::UsageError;
using policy::UnixSeconds;

constexpr const char* kDefaultAuditLog = "/var/log/sshring/grant.audit.jsonl";

UnixSeconds unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The local login: recorded beside each signature for the audit trail, never used to decide anything.
std::string os_user() {
  for (const char* v : {"SUDO_USER", "USER", "LOGNAME"}) {
    if (const char* s = std::getenv(v); s && *s) return std::string(s).substr(0, policy::kMaxNameLength);
  }
  if (passwd* pw = ::getpwuid(::getuid())) return pw->pw_name;
  return "uid:" + std::to_string(::getuid());
}

// Untrusted text (anything a grant carries, written by whoever can write the store) as printed.
std::string shown(std::string_view s) {
  return policy::printable_escape(s);
}

// Text that is signed into a grant or decision and shown to approvers: printable UTF-8 only, the
// rule every reader applies (a grant with control characters is rejected).
void require_printable(std::string_view text, const std::string& what) {
  if (!policy::printable_utf8(text))
    throw UsageError(what +
                     ": control characters and invalid UTF-8 are not allowed (it is shown to "
                     "approvers and signed): '" +
                     shown(text) + "'");
}

void common_flags(common::Flags& f) {
  f.value("policy", "FILE", "policy file (its grant_store is the store)",
          std::string(policy::kDefaultPolicyPath));
  f.value("grant-store", "DIR", "grant store directory (default: the policy's grant_store)");
  f.value("audit-log", "FILE", "audit log for grant changes", std::string(kDefaultAuditLog));
  f.boolean("audit-syslog", "also send each audit record to syslog/journald (for log shippers)");
  f.value("audit-key", "FILE", "Ed25519 key signing audit checkpoints (created 0600 if missing)");
  cli::add_etcd_flags(f);  // --etcd: policy and grants in etcd instead of the file and directory
  cli::add_ledger_flag(f);
}

void signer_flags(common::Flags& f) {
  f.value("identity", "KEYFILE", "sign with this OpenSSH ed25519 private key file instead of ssh-agent");
  f.value("agent-key", "PUBFILE",
          "with ssh-agent: use the key in this .pub file (default: first ed25519 key)");
  f.value("as", "NAME", "the principal you sign as (default: the one the policy lists your key for)");
}

// The one place that turns a person's SSH key into a grant signer: the same key sources as
// `sshring connect` (client/client.h).
policy::SshsigSigner make_signer(const common::Flags& f) {
  client::Signer s = f.has("identity") ? client::file_signer(f.require("identity"))
                                       : client::agent_signer(f.get_or("agent-key", ""));
  policy::SshsigSigner out;
  out.key = policy::ed25519_key(s.public_key);
  out.sign_raw = [sign = s.sign](std::string_view data) {
    auto sig = sign(data);
    return std::string(reinterpret_cast<const char*>(sig.data()), sig.size());
  };
  return out;
}

// Which principal a key signs for. With --as, the policy must list the key for that principal.
std::string signer_principal(const policy::Policy& p, const policy::SshsigSigner& s, const common::Flags& f) {
  policy::GrantChecker checker(p, nullptr);
  if (f.has("as")) {
    std::string as = f.require("as");
    const policy::Principal* pr = checker.principal(as);
    if (!pr) throw UsageError("--as " + as + ": no such principal in " + p.source);
    for (const auto& k : pr->keys)
      if (k.fingerprint == s.key.fingerprint) return as;
    throw UsageError("--as " + as + ": the policy does not list key " + s.key.fingerprint + " for " + as);
  }
  const policy::Principal* owner = checker.key_owner(s.key.fingerprint);
  if (!owner)
    throw UsageError("key " + s.key.fingerprint + " is not listed for any principal in " + p.source +
                     "; sign with your listed key (--identity or ssh-agent)");
  return owner->name;
}

// The audit log allows one writer per file; concurrent `grant` commands take turns on a sidecar lock
// (blocking) around their whole change, so none fails and the hash chain never forks.
class AuditTurn {
 public:
  explicit AuditTurn(const std::string& audit_path) {
    for (size_t i = 1; i < audit_path.size(); ++i) {
      if (audit_path[i] == '/') ::mkdir(audit_path.substr(0, i).c_str(), 0750);
    }
    std::string path = audit_path + ".lock";
    fd_ = common::UniqueFd(::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640));
    if (!fd_) common::throw_errno("open " + path);
    while (::flock(fd_.get(), LOCK_EX) != 0) {
      if (errno != EINTR) common::throw_errno("lock " + path);
    }
  }

 private:
  common::UniqueFd fd_;
};

struct Context {
  std::optional<policy::Policy> policy;
  std::string policy_error;  // why the policy did not load (revoke works without it)
  std::unique_ptr<policy::GrantStore> store;
  std::unique_ptr<AuditTurn> turn;  // declared before audit: released after the log closes
  std::unique_ptr<metrics::AuditLog> audit;
  UnixSeconds now = 0;
  [[nodiscard]] const policy::Policy& pol() const { return *policy; }
};

std::unique_ptr<metrics::AuditLog> open_audit(Context& c, const std::string& path, bool syslog,
                                              const std::string& key) {
  c.turn = std::make_unique<AuditTurn>(path);
  metrics::AuditOptions o;
  o.path = path;
  o.component = "grant";
  o.fsync_each = true;  // a grant change is acknowledged only once its record is on disk
  o.syslog = syslog;
  o.key_path = key;
  return std::make_unique<metrics::AuditLog>(o);
}

// Records grants that ended since the last command (grant_expire) and prunes old ones.
void sweep(Context& c) {
  if (!c.policy) return;
  c.store->prune(c.now, policy::kDefaultGrantRetentionSeconds);
  policy::GrantChecker checker(c.pol(), nullptr);
  for (const auto& g : c.store->load()) {
    if (g.expire_recorded) continue;
    auto chk = checker.check(g, c.now);
    if (chk.status != policy::GrantStatus::kExpired) continue;
    std::optional<uint64_t> base;
    c.store->update(g.id(), [&](policy::SignedGrant& s) {
      s.expire_recorded = true;
      base = cli::base_revision(*c.store);
    });
    if (c.audit) {
      auto rec = bridge::grant_expire_record(chk);
      rec.etcd_base_revision = base;
      c.audit->append(rec);
    }
  }
}

// `allow_broken_policy`: revocation needs only the store, so it goes on when the policy does not load.
Context open(const common::Flags& f, bool need_audit, bool allow_broken_policy = false) {
  Context c;
  c.now = unix_now();
  try {
    auto ps = cli::open_policy_and_store(f, true);  // --etcd, or the policy file and its grant store
    c.policy = std::move(ps.policy);
    c.store = std::move(ps.store);
  } catch (const std::exception& e) {
    if (!allow_broken_policy) throw;
    c.policy_error = e.what();
  }
  if (!c.store) c.store = cli::open_grant_store_without_policy(f);
  c.store = cli::with_ledger(std::move(c.store), f);  // decisions this host verified, as its readers see them
  if (need_audit)
    c.audit = open_audit(c, f.get_or("audit-log", kDefaultAuditLog), f.flag("audit-syslog"),
                         f.get_or("audit-key", ""));
  sweep(c);
  return c;
}

bridge::GrantActor actor(const std::string& principal, const policy::SshsigSigner& s) {
  return {principal, s.key.fingerprint, os_user(), common::host_name("unknown")};
}

// "10.1.5.7", "10.1.5.0/24:22", "10.1.5.7:22,2222", "[fd01::/64]:22" -> CIDR + ports.
std::pair<policy::Cidr, policy::PortSet> parse_to(const std::string& s) {
  std::string cidr = s;
  std::string ports;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string::npos) throw UsageError("--to '" + s + "': missing ']' (use [V6CIDR]:PORTS)");
    cidr = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') throw UsageError("--to '" + s + "': expected ':' after ']'");
      ports = s.substr(close + 2);
    }
  } else if (std::count(s.begin(), s.end(), ':') == 1) {
    auto colon = s.find(':');
    cidr = s.substr(0, colon);
    ports = s.substr(colon + 1);
  }
  std::string why;
  auto c = policy::Cidr::parse(cidr, &why);
  if (!c) throw UsageError("--to '" + s + "': invalid CIDR '" + cidr + "': " + why);
  policy::PortSet ps = policy::PortSet::single(policy::kDefaultSshPort);
  if (!ports.empty()) {
    auto p = policy::PortSet::parse(ports);
    if (!p) throw UsageError("--to '" + s + "': invalid ports '" + ports + "'; expected e.g. 22 or 22,2222");
    ps = *p;
  }
  return {*c, ps};
}

void request_flags(common::Flags& f) {
  common_flags(f);
  signer_flags(f);
  f.value("who", "NAME", "the principal the grant is for (default: you, the signer)");
  f.value("from", "CIDR", "source address or prefix the direct connections come from");
  f.value("to", "CIDR[:PORTS]", "target address or prefix, optionally with ports (default 22)");
  f.value("ttl", "DURATION", "how long the grant lives once active, e.g. 30m, 2h");
  f.value("reason", "TEXT", "why (signed into the grant and recorded in the audit log)");
  f.value("rule", "ID", "the opt_out rule to request under (default: the first that allows it)");
  f.boolean("break-glass", "request under a break_glass rule: live at once, alerts, reviewed afterwards");
  f.boolean("json", "print the stored grant and its status as JSON");
}

policy::GrantRequest read_request(const common::Flags& f, const std::string& signer) {
  if (!f.positionals().empty()) throw UsageError("unexpected argument '" + f.positionals()[0] + "'");
  policy::GrantRequest req;
  req.requester = signer;
  req.who = f.get_or("who", signer);
  std::string why;
  auto from = policy::Cidr::parse(f.require("from"), &why);
  if (!from) throw UsageError("--from '" + *f.get("from") + "': " + why);
  req.from = *from;
  std::tie(req.to, req.ports) = parse_to(f.require("to"));
  req.ttl_seconds = common::parse_duration_or_throw(f.require("ttl"), "--ttl").count();
  req.reason = f.get_or("reason", "");
  if (req.reason.size() > policy::kMaxTextLength) throw UsageError("--reason: at most 1024 characters");
  req.rule = f.get_or("rule", "");
  req.os_user = os_user();
  req.host = common::host_name("unknown");
  for (const auto& [field, text] : policy::request_texts(req)) {
    const std::string name(field);
    require_printable(text, name == "os_user" ? "the login name ($SUDO_USER, $USER or $LOGNAME)"
                            : name == "host"  ? "the host name"
                                              : "--" + name);
  }
  return req;
}

// The rule for `req`: break-glass rules only when asked for (--break-glass), never by accident.
const policy::OptOutRule* choose_rule(const Context& c, const policy::GrantRequest& req, bool break_glass,
                                      std::string* refusal) {
  std::string why;
  for (const auto& r : c.pol().opt_out) {
    if (r.break_glass != break_glass || (!req.rule.empty() && r.id != req.rule)) continue;
    policy::GrantRequest one = req;
    one.rule = r.id;
    std::string no;
    if (const auto* ok = policy::find_allowing_rule(c.pol(), one, c.now, &no)) return ok;
    why += no;
  }
  if (why.empty())
    why = break_glass
              ? "no break_glass rule applies (check --rule)\n"
              : "no opt_out rule applies" + std::string(req.rule.empty() ? "" : " named " + req.rule) +
                    " (break_glass rules need --break-glass)\n";
  *refusal = why;
  return nullptr;
}

void print_result(const common::Flags& f, const policy::CheckedGrant& chk) {
  const auto& r = chk.object.request;
  if (f.flag("json")) {
    auto j = policy::signed_grant_to_json(chk.object);
    j["status"] = policy::status_name(chk.status);
    j["detail"] = chk.detail;
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << r.id << " " << policy::status_name(chk.status) << " under rule " << shown(r.rule) << ": "
            << shown(r.who) << " from " << r.from.to_string() << " to " << r.to.to_string() << ":"
            << r.ports.to_string() << " (" << shown(chk.detail) << ")\n";
  if (chk.break_glass && chk.activated)
    std::cout << "break-glass: this fires a critical alert; someone else must review it before "
              << common::format_rfc3339(chk.review_due) << " (sshring grant review " << r.id
              << " --note ...)\n";
}

// grant request / grant add: sign and store a request. `one_step` (add) refuses anything that would
// not be live at once.
int request(const std::vector<std::string>& args, bool one_step) {
  const char* name = one_step ? "grant add" : "grant request";
  common::Flags f(
      name,
      std::string("sshring ") + name +
          " [--policy FILE] [--who NAME] --from CIDR --to CIDR[:PORTS] --ttl 2h --reason \"...\" "
          "[--identity KEYFILE]",
      one_step ? "Requests a grant that is live at once: under a rule that needs no approval, or a\n"
                 "break_glass rule (--break-glass). Signed with your key like `grant request`."
               : "Signs and stores a request for a time-bound direct-SSH exception. Accepted only if an\n"
                 "opt_out rule allows exactly that (who, from, to, ports, TTL, reason, and you as\n"
                 "requester). It is pending until the rule's approvals are signed (grant approve),\n"
                 "or live at once when the rule needs none.");
  request_flags(f);
  f.epilog("Exit codes: 0 stored, 1 refused or failed, 2 usage error.\n");
  if (!f.parse(args)) return 0;
  Context c = open(f, true);
  auto signer = make_signer(f);
  std::string me = signer_principal(c.pol(), signer, f);
  policy::GrantRequest req = read_request(f, me);
  std::string refusal;
  const policy::OptOutRule* rule = choose_rule(c, req, f.flag("break-glass"), &refusal);
  if (!rule) {
    std::cerr << "sshring " << name << ": refused: no opt_out rule allows " << req.who << " from "
              << req.from.to_string() << " to " << req.to.to_string() << ":" << req.ports.to_string()
              << " for " << common::format_duration(std::chrono::seconds(req.ttl_seconds)) << "\n"
              << refusal;
    return 1;
  }
  if (one_step && !rule->break_glass && rule->approvals_count > 0) {
    std::cerr << "sshring grant add: refused: rule " << rule->id << " needs " << rule->approvals_count
              << " approval(s); use sshring grant request and have approvers run sshring grant approve\n";
    return 1;
  }
  policy::SignedGrant g;
  g.request = req;
  g.request.id = policy::new_grant_id();
  g.request.rule = rule->id;
  g.request.created = c.now;
  policy::sign_request(g, signer);
  auto chk = policy::check_grant(c.pol(), g, c.now, nullptr);
  if (chk.status == policy::GrantStatus::kRejected)  // our own check disagrees: never store that
    throw std::runtime_error("internal: a fresh request was rejected: " + chk.detail);
  // Acknowledged only once its record is on disk: no record, no grant.
  std::string audit_error;
  auto rec = bridge::grant_request_record(chk, actor(me, signer));
  rec.etcd_base_revision = cli::base_revision(*c.store);
  if (!c.audit->commit(rec, &audit_error)) {
    std::cerr << "sshring grant: not added: " << audit_error << "\n";
    return 1;
  }
  c.store->add(g);
  print_result(f, chk);
  return 0;
}

// What each decision command needs the grant to be, and what it records.
struct DecisionSpec {
  policy::DecisionKind kind;
  const char* name;
  const char* note_flag;  // "reason" or "note"; empty = optional --note
  bool note_required;
};

std::string decision_refusal(const policy::CheckedGrant& chk, const policy::OptOutRule* rule,
                             const policy::Policy& p, const std::string& me, policy::DecisionKind kind) {
  const auto& r = chk.object.request;
  if (chk.status == policy::GrantStatus::kRejected) return "the grant is rejected: " + chk.detail;
  if (!rule) return "its rule " + r.rule + " is not in the policy";
  if (kind == policy::DecisionKind::kApprove || kind == policy::DecisionKind::kDeny) {
    if (chk.status != policy::GrantStatus::kPending)
      return std::string("it is ") + std::string(policy::status_name(chk.status)) + " (" + chk.detail +
             "), not pending";
    for (const auto& d : chk.decisions)
      if (d.signer == me && d.counted && d.kind == kind)
        return me + " already signed this " + policy::decision_name(kind).data();
  }
  if (kind == policy::DecisionKind::kReview) {
    if (!chk.activated) return "it was never active";
    if (chk.reviewed) return "it is already reviewed";
  }
  if (kind == policy::DecisionKind::kRevoke &&
      (chk.status == policy::GrantStatus::kRevoked || chk.status == policy::GrantStatus::kDenied ||
       chk.status == policy::GrantStatus::kExpired))
    return std::string("it is already ") + std::string(policy::status_name(chk.status));
  return policy::decider_refusal(p, *rule, r, me, kind);
}

template <class R>
nlohmann::json based_on(R rec, std::optional<uint64_t> base) {
  rec.etcd_base_revision = base;
  return rec.to_json();
}

nlohmann::json decision_record(const DecisionSpec& spec, const policy::SignedGrant& g,
                               const bridge::GrantActor& by, const std::string& note,
                               const policy::CheckedGrant& after, std::optional<uint64_t> base) {
  switch (spec.kind) {
    case policy::DecisionKind::kApprove:
      return based_on(bridge::grant_approve_record(g, by, policy::status_name(after.status)), base);
    case policy::DecisionKind::kDeny:
      return based_on(bridge::grant_deny_record(g, by, note), base);
    case policy::DecisionKind::kReview:
      return based_on(bridge::grant_review_record(g, by, note), base);
    case policy::DecisionKind::kRevoke:
      return based_on(bridge::grant_revoke_record(g, by, note), base);
  }
  return {};
}

// The canonical terms of the request a decision signs, escaped, one per line (on stderr, before the
// signature is made), so an approver sees what they sign rather than what a list rendered.
std::string signing_terms(const char* decision, const policy::GrantRequest& r) {
  std::ostringstream o;
  o << "signing " << decision << " of " << r.id << ":\n"
    << "  who:       " << shown(r.who) << " (requested by " << shown(r.requester) << ")\n"
    << "  from:      " << r.from.to_string() << "\n"
    << "  to:        " << r.to.to_string() << "\n"
    << "  ports:     " << r.ports.to_string() << "\n"
    << "  ttl:       " << common::format_duration(std::chrono::seconds(r.ttl_seconds)) << "\n"
    << "  rule:      " << shown(r.rule) << "\n"
    << "  requested: " << common::format_rfc3339(r.created) << " from " << shown(r.os_user) << "@"
    << shown(r.host) << "\n"
    << "  reason:    " << shown(r.reason) << "\n";
  return o.str();
}

// Loads the grant, refuses what the policy would not count, signs the decision, stores it.
common::Flags decide_flags(const DecisionSpec& spec, const std::string& help) {
  std::string usage = std::string("sshring grant ") + spec.name + " ID" +
                      (spec.note_required ? std::string(" --") + spec.note_flag + " \"...\"" : "") +
                      " [--policy FILE] [--identity KEYFILE]";
  common::Flags f(std::string("grant ") + spec.name, usage, help);
  common_flags(f);
  signer_flags(f);
  f.value(spec.note_flag, "TEXT",
          spec.note_required ? "why (required; signed and audited)" : "a note (signed and audited)");
  f.boolean("json", "print the grant and its new status as JSON");
  if (spec.kind == policy::DecisionKind::kApprove)
    f.boolean("yes",
              "sign without asking (at a terminal, approve shows the terms and waits for 'y'; "
              "without one it never asks)");
  f.epilog("Exit codes: 0 recorded, 1 refused or failed, 2 usage error.\n");
  return f;
}

// Who decides: the principal owning the signing key, or (a revoke while the policy does not load)
// the name given with --as, checked by readers against the signature.
std::string decider(const Context& c, const policy::SshsigSigner& signer, const common::Flags& f) {
  if (c.policy) return signer_principal(c.pol(), signer, f);
  if (!f.has("as"))
    throw UsageError("the policy does not load (" + c.policy_error +
                     "); to revoke anyway, say who you are with --as NAME");
  std::cerr << "sshring grant revoke: warning: the policy does not load; readers will check the signature\n";
  return f.require("as");
}

int decide(const std::vector<std::string>& args, const DecisionSpec& spec, const std::string& help) {
  common::Flags f = decide_flags(spec, help);
  if (!f.parse(args)) return 0;
  if (f.positionals().size() != 1)
    throw UsageError(std::string("grant ") + spec.name + ": give exactly one grant ID (see grant list)");
  const std::string id = f.positionals()[0];
  std::string note = spec.note_required ? f.require(spec.note_flag) : f.get_or(spec.note_flag, "");
  if (note.size() > policy::kMaxTextLength)
    throw UsageError(std::string("--") + spec.note_flag + ": at most 1024 characters");
  require_printable(note, std::string("--") + spec.note_flag);
  const bool revoke = spec.kind == policy::DecisionKind::kRevoke;
  Context c = open(f, true, revoke);
  auto signer = make_signer(f);
  const std::string me = decider(c, signer, f);
  policy::GrantDecision d{spec.kind, me, c.now, note, os_user(), common::host_name("unknown"), {}};
  require_printable(d.os_user, "the login name ($SUDO_USER, $USER or $LOGNAME)");
  require_printable(d.host, "the host name");
  bool terms_shown = false;
  // An approval at a terminal: the terms first, then a yes, read before the store is locked; the
  // request signed below must still be the one confirmed.
  std::optional<policy::GrantRequest> confirmed;
  if (spec.kind == policy::DecisionKind::kApprove && !f.flag("yes") && ::isatty(0) == 1 && ::isatty(2) == 1) {
    for (const policy::SignedGrant& g : c.store->load()) {
      if (g.request.id != id) continue;
      std::cerr << signing_terms(spec.name, g.request) << "sign this approval? [y/N] " << std::flush;
      std::string answer;
      if (!std::getline(std::cin, answer) || (answer != "y" && answer != "Y" && answer != "yes")) {
        std::cerr << "sshring grant approve: not signed (answer y, or pass --yes)\n";
        return 1;
      }
      confirmed = g.request;
      terms_shown = true;
      break;
    }
    // Never sign what was not shown (it may appear in the store meanwhile).
    if (!confirmed) {
      std::cerr << "sshring grant approve: no grant '" << shown(id) << "' in " << c.store->location()
                << " (see sshring grant list)\n";
      return 1;
    }
    // The approval is dated when it was given, and decided on that time (an answer after the
    // request's approval window closed must not count as inside it).
    c.now = unix_now();
    d.at = c.now;
  }
  struct Refused : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  struct AuditFailed : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  std::string refusal;
  std::optional<policy::SignedGrant> stored;
  try {
    stored = c.store->update(id, [&](policy::SignedGrant& g) {
      if (c.policy) {
        auto chk = policy::check_grant(c.pol(), g, c.now, nullptr);
        refusal = decision_refusal(chk, c.pol().find_rule(g.request.rule), c.pol(), me, spec.kind);
        if (!refusal.empty()) throw Refused(refusal);
      }
      if (confirmed && !(g.request == *confirmed))
        throw Refused(
            "the request changed after you confirmed it; run the command again and check the terms");
      if (g.decisions.size() >= policy::kMaxDecisions)
        throw UsageError("grant " + id + " holds 64 decisions already");
      if (!terms_shown) {  // what the signature is bound to, from the signed request itself
        std::cerr << signing_terms(spec.name, g.request);
        terms_shown = true;
      }
      policy::sign_decision(g.request, d, signer);
      g.decisions.push_back(d);
      // The record is durable before the store is written: no record, no change (the throw aborts).
      policy::CheckedGrant now_checked;
      now_checked.object = g;
      if (c.policy) now_checked = policy::check_grant(c.pol(), g, c.now, nullptr);
      std::string audit_error;
      if (!c.audit->commit(
              decision_record(spec, g, actor(me, signer), note, now_checked, cli::base_revision(*c.store)),
              &audit_error))
        throw AuditFailed(audit_error);
    });
  } catch (const Refused& e) {
    std::cerr << "sshring grant " << spec.name << ": refused: " << shown(e.what()) << "\n";
    return 1;
  } catch (const AuditFailed& e) {
    std::cerr << "sshring grant " << spec.name << ": not stored: " << e.what() << "\n";
    return 1;
  }
  if (!stored) {
    std::cerr << "sshring grant " << spec.name << ": no grant '" << shown(id) << "' in "
              << c.store->location() << " (see sshring grant list)\n";
    return 1;
  }
  policy::CheckedGrant after;
  after.object = *stored;
  if (c.policy) after = policy::check_grant(c.pol(), *stored, c.now, nullptr);
  if (c.policy) {
    print_result(f, after);
  } else {
    std::cout << shown(id) << " revoke signed by " << shown(me) << "\n";
  }
  return 0;
}

nlohmann::json list_json(const policy::CheckedGrant& c, UnixSeconds now) {
  const auto& r = c.object.request;
  nlohmann::json decisions = nlohmann::json::array();
  for (const auto& d : c.decisions) {
    nlohmann::json j = {{"decision", policy::decision_name(d.kind)},
                        {"signer", d.signer},
                        {"key_fingerprint", d.fingerprint},
                        {"at", common::format_rfc3339(d.at)},
                        {"counted", d.counted},
                        {"note", d.note}};
    if (!d.counted) j["not_counted"] = d.not_counted_why;
    decisions.push_back(std::move(j));
  }
  nlohmann::json j = {{"id", r.id},
                      {"status", policy::status_name(c.status)},
                      {"detail", c.detail},
                      {"who", r.who},
                      {"requester", r.requester},
                      {"requester_fingerprint", c.requester_fingerprint},
                      {"os_user", r.os_user},
                      {"host", r.host},
                      {"rule", r.rule},
                      {"from", r.from.to_string()},
                      {"to", r.to.to_string()},
                      {"ports", r.ports.to_string()},
                      {"ttl_seconds", r.ttl_seconds},
                      {"reason", r.reason},
                      {"requested", common::format_rfc3339(r.created)},
                      {"decisions", decisions},
                      {"live", c.honoured() && c.terms.live(now)}};
  if (c.status == policy::GrantStatus::kRejected) j["reject_reason"] = c.reject_reason;
  if (c.activated) {
    j["active_from"] = common::format_rfc3339(c.terms.created);
    j["expires"] = common::format_rfc3339(c.terms.effective_expiry());
    j["time_left_seconds"] = j["live"].get<bool>() ? c.terms.effective_expiry() - now : 0;
  }
  if (c.break_glass) {
    j["break_glass"] = true;
    j["reviewed"] = c.reviewed;
    j["review_due"] = common::format_rfc3339(c.review_due);
    j["review_overdue"] = c.review_overdue(now);
  }
  return j;
}

std::string approvers_text(const policy::CheckedGrant& c) {
  std::string out;
  for (const auto& d : c.decisions) {
    if (d.kind != policy::DecisionKind::kApprove || !d.counted) continue;
    if (!out.empty()) out += ",";
    out += shown(d.signer) + "(" + d.fingerprint.substr(0, 15) + ")";
  }
  return out.empty() ? "-" : out;
}

int list(const std::vector<std::string>& args) {
  common::Flags f(
      "grant list", "sshring grant list [--policy FILE] [--json]",
      "Lists the grants in the store with their status as every reader sees it: pending, active,\n"
      "expired, revoked, denied, or rejected (with the reason: bad signature, unknown key, rule\n"
      "missing or narrowed, ...). Ended grants are kept 7 days.");
  common_flags(f);
  f.boolean("json", "print JSON (one array)");
  if (!f.parse(args)) return 0;
  Context c;
  c.now = unix_now();
  auto ps = cli::open_policy_and_store(f, false);
  c.policy = std::move(ps.policy);
  std::string dir = ps.etcd ? std::string() : f.get_or("grant-store", c.pol().grant_store);
  std::vector<policy::SignedGrant> grants;
  if (ps.store) {
    c.store = cli::with_ledger(std::move(ps.store), f);
    // Readers without write access just read (etcd: list never writes; relays' roles are read-only).
    if (!ps.etcd && ::access(dir.c_str(), W_OK) == 0) {
      c.audit = open_audit(c, f.get_or("audit-log", kDefaultAuditLog), f.flag("audit-syslog"),
                           f.get_or("audit-key", ""));
      sweep(c);
    }
    grants = c.store->load();
  }
  policy::GrantChecker checker(c.pol(), nullptr);
  std::vector<policy::CheckedGrant> checked;
  checked.reserve(grants.size());
  for (const auto& g : grants) checked.push_back(checker.check(g, c.now));
  if (f.flag("json")) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& g : checked) a.push_back(list_json(g, c.now));
    std::cout << a.dump(2) << "\n";
    return 0;
  }
  std::cout << std::left << std::setw(15) << "ID" << std::setw(10) << "STATUS" << std::setw(12) << "WHO"
            << std::setw(12) << "REQUESTER" << std::setw(20) << "FROM" << std::setw(24) << "TO"
            << std::setw(22) << "EXPIRES" << std::setw(34) << "APPROVERS"
            << "REASON / DETAIL\n";
  for (const auto& g : checked) {
    const auto& r = g.object.request;
    std::string status(policy::status_name(g.status));
    if (g.break_glass && g.activated) status += g.reviewed ? "*" : "!";
    std::cout << std::setw(15) << shown(r.id) << std::setw(10) << status << std::setw(12) << shown(r.who)
              << std::setw(12) << shown(r.requester) << std::setw(20) << r.from.to_string() << std::setw(24)
              << (r.to.to_string() + ":" + r.ports.to_string()) << std::setw(22)
              << (g.activated ? common::format_rfc3339(g.terms.effective_expiry()) : "-") << std::setw(34)
              << approvers_text(g) << shown(r.reason) << " / " << shown(g.detail) << "\n";
  }
  return 0;
}

int run(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << "Usage: sshring grant request|add|approve|deny|review|revoke|list [OPTIONS]\n\n"
                 "  request  sign and store a request for a direct-SSH exception under an opt_out rule\n"
                 "  add      the one-step form: request a grant that is live at once (no approval needed)\n"
                 "  approve  sign an approval of a pending request (the rule says who and how many)\n"
                 "  deny     sign a denial of a pending request\n"
                 "  review   sign the after-the-fact review of a break-glass grant\n"
                 "  revoke   sign a revocation (works while the policy file is broken)\n"
                 "  list     list grants with their verified status\n\n"
                 "Every change is signed with your SSH key: ssh-agent, or --identity KEYFILE.\n"
                 "Run 'sshring grant SUBCOMMAND --help' for options.\n";
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  using policy::DecisionKind;
  if (args[0] == "request") return request(rest, false);
  if (args[0] == "add") return request(rest, true);
  if (args[0] == "approve")
    return decide(rest, {DecisionKind::kApprove, "approve", "note", false},
                  "Signs an approval of a pending grant request. Refused for the requester, for principals\n"
                  "the rule does not name as approvers, and for requests that are not pending.");
  if (args[0] == "deny")
    return decide(rest, {DecisionKind::kDeny, "deny", "reason", true},
                  "Signs a denial of a pending grant request; a denied request can not be approved later.");
  if (args[0] == "review")
    return decide(rest, {DecisionKind::kReview, "review", "note", true},
                  "Signs the after-the-fact review of a break-glass grant (by someone other than the\n"
                  "requester, within the rule's review_within).");
  if (args[0] == "revoke")
    return decide(rest, {DecisionKind::kRevoke, "revoke", "reason", true},
                  "Signs a revocation: flows the grant covered classify as bypass_expired from now on.\n"
                  "Needs only the grant store: with a broken policy file, name yourself with --as.");
  if (args[0] == "list") return list(rest);
  throw UsageError("unknown subcommand '" + args[0] +
                   "'; expected request, add, approve, deny, review, revoke or list (see --help)");
}

const sshring::cli::Registrar kGrant{
    {"grant", "request, approve and revoke signed time-bound opt-out grants", run}};

}  // namespace
