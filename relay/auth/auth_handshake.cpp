#include "relay/auth/auth_handshake.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <mutex>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/error.h"
#include "common/json_number.h"
#include "common/log.h"
#include "common/session_id.h"
#include "metrics/audit.h"
#include "metrics/audit_types.h"
#include "policy/local_addresses.h"
#include "protocol/keys.h"

namespace sshring::relay::auth {

struct SessionState {
  AuthHandshakeFactory* factory = nullptr;
  uint64_t session_id = 0;
  common::SockAddr client;
  common::SockAddr listen;
  HandshakeContext* ctx = nullptr;
  HandshakeResume resume;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point connect_started;  // when the connect decision was made

  std::mutex mu;       // guards `ended` against the resolver thread
  bool ended = false;  // after this, nothing may be posted to the worker

  bool over_handshake_cap = false;
  bool in_handshake = false;  // counted in SessionLimits::handshakes_
  bool session_counted = false;
  bool decided = false;  // a DENY or a connect decision was made
  bool denied = false;
  bool connected = false;
  protocol::Reason deny_reason = protocol::Reason::kMalformed;  // the exact reason (audit, metrics, log)
  // Only a denied session has these (an established one lives for hours without).
  struct DenyText {
    std::string message;  // the exact detail (audit, log)
    std::string reply;    // the DENY frame sent (may say less than the above)
  };
  std::unique_ptr<DenyText> deny_text;

  std::shared_ptr<const policy::Snapshot> snap;
  // Principal, key and target as the preamble set them; also what this session's audit records name
  // (they share this state, so these are set before the first record and not changed after).
  metrics::SessionNames names;
  size_t consumed = 0;
  common::SockAddr upstream;
  common::SockAddr upstream_local;

  void leave_handshake() {
    if (in_handshake) factory->limits_.leave_handshake(client);
    in_handshake = false;
  }

  // `wire`: the code the client sees when it must not learn `r` (identity failures before the
  // signature is verified all go out as kNotAuthenticated with one fixed message). `told`: what the
  // client reads instead of `message` when that holds more than it should learn.
  HandshakeStep deny(protocol::Reason r, std::string message,
                     std::optional<protocol::Reason> wire = std::nullopt, const std::string& told = {}) {
    // The text first: `denied` promises it (on_data answers a repeat call with its reply).
    auto text = std::make_unique<DenyText>();
    text->message = std::move(message);
    text->reply = wire ? protocol::encode_deny(*wire, protocol::kNotAuthenticatedMessage)
                       : protocol::encode_deny(r, told.empty() ? text->message : told);
    deny_text = std::move(text);
    decided = true;
    denied = true;
    snap.reset();  // decided: see connect()
    deny_reason = r;
    leave_handshake();
    factory->count_decision(static_cast<uint16_t>(r), protocol::reason_name(r));
    if (factory->opts_.log_denials)
      common::log_warn("session denied", {{"session", common::session_id_string(session_id)},
                                          {"client", client.to_string()},
                                          {"reason", protocol::reason_name(r)},
                                          {"principal", names.principal},
                                          {"target", names.target_host},
                                          {"detail", deny_text->message}});
    HandshakeStep s;
    s.kind = HandshakeStep::Kind::kReject;
    s.reply = deny_text->reply;
    return s;
  }

  HandshakeStep connect(const common::SockAddr& addr) {
    decided = true;
    // The snapshot decided; a session that lives for hours must not keep this policy version (and
    // its grants: megabytes with a fleet's store) alive through every reload after it.
    snap.reset();
    upstream = addr;
    connect_started = std::chrono::steady_clock::now();
    factory->count_decision(0, "allowed");
    HandshakeStep s;
    s.kind = HandshakeStep::Kind::kConnect;
    s.upstream = addr;
    s.consumed = consumed;
    return s;
  }

  // Runs on the worker thread once the name resolved (or failed).
  HandshakeStep finish_resolution(const std::string& error, const std::vector<common::SockAddr>& addrs) {
    if (!error.empty())
      return deny(protocol::Reason::kResolveFailed, "cannot resolve " + names.target_host + ": " + error);
    uint64_t now_ms = factory->now_ms();
    policy::Decision last;
    std::string tried;
    for (const auto& a : addrs) {
      auto ip = policy::IpAddr::from_sockaddr(a.get());
      if (!ip) continue;
      policy::AuthzRequest req;
      req.principal = names.principal;
      req.key_fingerprint = names.key_fp;
      req.source = policy::IpAddr::from_sockaddr(client.get()).value_or(policy::IpAddr{});
      req.target_name = names.target_host;
      req.target = *ip;
      req.port = names.target_port;
      req.now = static_cast<policy::UnixSeconds>(now_ms / 1000);
      req.target_local = factory->is_local(*ip);
      last = snap->authorize(req);
      if (last.allowed) return connect(a);
      if (!tried.empty()) tried += ",";
      tried += a.ip_string();
    }
    if (last.reason == policy::Reason::kOutsideTimeWindow)
      return deny(protocol::Reason::kOutsideTimeWindow, "outside the allowed time window");
    if (last.reason == policy::Reason::kPortNotAllowed)
      return deny(protocol::Reason::kPortNotAllowed,
                  names.target_host + ":" + std::to_string(names.target_port) + ": port not allowed");
    // The addresses go to the audit record, not to the client: the relay's resolver is not an
    // oracle for what internal names resolve to.
    return deny(protocol::Reason::kAddressNotAllowed,
                names.target_host + " resolved to " + tried + ", not allowed by policy", std::nullopt,
                names.target_host + " resolved to no address the policy allows");
  }
};

namespace {

// Maps a policy refusal onto the wire reason.
protocol::Reason from_policy(policy::Reason r) {
  switch (r) {
    case policy::Reason::kUnknownPrincipal:
      return protocol::Reason::kUnknownPrincipal;
    case policy::Reason::kKeyNotListed:
      return protocol::Reason::kKeyNotListed;
    case policy::Reason::kTargetNotAllowed:
      return protocol::Reason::kTargetNotAllowed;
    case policy::Reason::kPortNotAllowed:
      return protocol::Reason::kPortNotAllowed;
    case policy::Reason::kOutsideTimeWindow:
      return protocol::Reason::kOutsideTimeWindow;
    case policy::Reason::kTooManySessions:
      return protocol::Reason::kTooManySessions;
    case policy::Reason::kNoPolicy:
    case policy::Reason::kAllowed:
      break;
  }
  return protocol::Reason::kOverloaded;
}

}  // namespace

class AuthHandshake : public Handshake {
 public:
  explicit AuthHandshake(std::shared_ptr<SessionState> s) : s_(std::move(s)) {}
  ~AuthHandshake() override { mark_ended(); }

  HandshakeStep on_data(std::span<const uint8_t> received) override {
    SessionState& s = *s_;
    if (s.decided) {  // the worker stops calling after a decision; answer the same way if it does
      HandshakeStep again;
      if (s.denied) {
        again.kind = HandshakeStep::Kind::kReject;
        again.reply = s.deny_text->reply;
      }
      return again;
    }
    if (s.over_handshake_cap)
      return s.deny(protocol::Reason::kTooManyHandshakes,
                    "too many connections in handshake from " + s.client.ip_string());
    if (const auto& o = s.factory->opts_; o.audit && o.refuse_when_audit_unwritable && !o.audit->writable())
      return s.deny(protocol::Reason::kOverloaded, "relay overloaded; try again later");
    protocol::HelloDecode d = protocol::decode_hello(received);
    switch (d.status) {
      case protocol::DecodeStatus::kNeedMore:
        return HandshakeStep{};
      case protocol::DecodeStatus::kMalformed:
        return s.deny(protocol::Reason::kMalformed, std::string(d.error));
      case protocol::DecodeStatus::kUnsupportedVersion:
        return s.deny(protocol::Reason::kUnsupportedVersion, "this relay speaks preamble version 1");
      case protocol::DecodeStatus::kOk:
        break;
    }
    const protocol::Hello& h = d.hello;
    s.consumed = d.consumed;
    s.names.principal = h.principal;
    s.names.target_host = h.target;
    s.names.target_port = h.port;
    const uint64_t now_ms = s.factory->now_ms();
    if (auto refused = check_freshness(h, now_ms)) return *refused;
    if (auto refused = check_identity(h)) return *refused;
    if (auto refused = check_replay(h, now_ms)) return *refused;
    if (s.factory->opts_.nonce_claims) return claim_nonce(h);
    return check_policy(h, now_ms);
  }

  std::string on_upstream_connected(const common::SockAddr& local) override {
    SessionState& s = *s_;
    s.connected = true;
    s.upstream_local = local;
    s.leave_handshake();
    const auto now = std::chrono::steady_clock::now();
    auto elapsed = std::chrono::duration<double>(now - s.started).count();
    if (auto* h = s.factory->handshake_seconds_.load(std::memory_order_acquire)) h->Observe(elapsed);
    if (auto* h = s.factory->connect_seconds_.load(std::memory_order_acquire))
      h->Observe(std::chrono::duration<double>(now - s.connect_started).count());
    if (auto* audit = s.factory->opts_.audit)
      append_session(audit, session_event(metrics::SessionStart::kType));
    return protocol::encode_ok(s.session_id);
  }

  std::string on_upstream_failed(int err) override {
    SessionState& s = *s_;
    s.leave_handshake();
    std::string msg = "connect to " + s.upstream.to_string() + ": " + std::strerror(err);
    if (s.factory->opts_.log_denials)
      common::log_warn("upstream connect failed", {{"session", common::session_id_string(s.session_id)},
                                                   {"principal", s.names.principal},
                                                   {"target", s.upstream.to_string()},
                                                   {"error", std::strerror(err)}});
    return protocol::encode_deny(protocol::Reason::kTargetUnreachable, msg);
  }

  // Hand-over (relay/handover.h): the context an established session's session_end record needs.
  std::string handover_state() const override {
    const SessionState& s = *s_;
    if (!s.connected || s.denied) return {};
    nlohmann::json j = {{"v", 1},
                        {"principal", s.names.principal},
                        {"key_fp", s.names.key_fp},
                        {"target_name", s.names.target_host},
                        {"port", s.names.target_port},
                        {"upstream", s.upstream.len() ? s.upstream.to_string() : ""},
                        {"upstream_local", s.upstream_local.len() ? s.upstream_local.to_string() : ""}};
    return j.dump();
  }

  void on_end(const SessionSummary& sum) override {
    SessionState& s = *s_;
    mark_ended();
    s.leave_handshake();
    if (s.session_counted) s.factory->limits_.release_session(s.names.principal);
    s.session_counted = false;
    bool timed_out = !s.decided && sum.reason == EndReason::kHandshakeTimeout;
    if (timed_out)
      s.factory->count_decision(static_cast<uint16_t>(protocol::Reason::kTimeout),
                                protocol::reason_name(protocol::Reason::kTimeout));
    auto* audit = s.factory->opts_.audit;
    if (audit == nullptr || ended_logged_) return;
    ended_logged_ = true;
    if (s.denied || !s.decided) {
      metrics::SessionEvent e = session_event(metrics::SessionDeny::kType);
      e.reason = s.denied ? protocol::reason_name(s.deny_reason) : end_reason_name(sum.reason);
      if (s.deny_text) e.detail = std::move(s.deny_text->message);  // its last use
      append_session(audit, std::move(e));
      return;
    }
    metrics::SessionEvent e = session_event(metrics::SessionEnd::kType);
    e.bytes_up = sum.bytes_client_to_upstream;
    e.bytes_down = sum.bytes_upstream_to_client;
    e.duration_ms = sum.duration_ns / 1000000;
    e.reason = end_reason_name(sum.reason);
    append_session(audit, std::move(e));
  }

 private:
  // Relay id and clock: nothing here depends on who the client claims to be.
  std::optional<HandshakeStep> check_freshness(const protocol::Hello& h, uint64_t now_ms) {
    SessionState& s = *s_;
    const AuthOptions& o = s.factory->opts_;
    bool relay_ok = false;
    for (const auto& id : o.relay_ids) relay_ok = relay_ok || id == h.relay_id;
    // The id is not secret (clients type it); naming it lets the client say which --relay-id to pass.
    // The relay's id first: a DENY message is cut at 200 bytes.
    if (!relay_ok)
      return s.deny(protocol::Reason::kWrongRelay, "this relay's id is '" + o.relay_ids.front() +
                                                       "' (preamble is for '" + h.relay_id + "')");
    if (h.timestamp_ms > now_ms) {
      // A timestamp ahead of the relay would keep its nonce for skew + that much: bounded separately.
      uint64_t ahead = h.timestamp_ms - now_ms;
      if (ahead > static_cast<uint64_t>(o.max_future_skew.count()))
        return s.deny(protocol::Reason::kStale,
                      "timestamp is " + std::to_string(ahead / 1000) + "s ahead of the relay's clock");
    } else if (now_ms - h.timestamp_ms > static_cast<uint64_t>(o.max_skew.count())) {
      return s.deny(
          protocol::Reason::kStale,
          "timestamp is " + std::to_string((now_ms - h.timestamp_ms) / 1000) + "s behind the relay's clock");
    }
    return std::nullopt;
  }

  // Principal, key and signature. The signature is verified against the presented key in every case,
  // so the three failures cost the same time; the client sees one code and one message for all of
  // them, the audit record and metrics the exact reason.
  std::optional<HandshakeStep> check_identity(const protocol::Hello& h) {
    SessionState& s = *s_;
    s.snap = s.factory->cache_.current();
    if (!s.snap) return s.deny(protocol::Reason::kOverloaded, "no policy loaded");
    protocol::Ed25519PublicKey raw;
    std::memcpy(raw.data(), h.public_key.data(), raw.size());
    const bool signature_ok = protocol::ed25519_verify(raw, protocol::transcript(h), h.signature);
    const policy::Principal* p = s.snap->find_principal(h.principal);
    const policy::PublicKey* key = nullptr;
    if (p != nullptr)
      for (const auto& k : p->keys)
        if (k.ed25519.size() == h.public_key.size() &&
            std::memcmp(k.ed25519.data(), h.public_key.data(), k.ed25519.size()) == 0)
          key = &k;
    s.names.key_fp = key != nullptr ? key->fingerprint : protocol::fingerprint(raw);
    if (p == nullptr)
      return s.deny(protocol::Reason::kUnknownPrincipal, "unknown principal '" + h.principal + "'",
                    protocol::Reason::kNotAuthenticated);
    if (key == nullptr)
      return s.deny(protocol::Reason::kKeyNotListed,
                    "key " + s.names.key_fp + " is not listed for '" + h.principal + "'",
                    protocol::Reason::kNotAuthenticated);
    if (!signature_ok)
      return s.deny(protocol::Reason::kBadSignature, "signature does not verify",
                    protocol::Reason::kNotAuthenticated);
    return std::nullopt;
  }

  // Only HELLOs signed by a listed key of a known principal reach the cache, each principal within
  // its share.
  std::optional<HandshakeStep> check_replay(const protocol::Hello& h, uint64_t now_ms) {
    SessionState& s = *s_;
    AuthHandshakeFactory& f = *s.factory;
    switch (f.replay_.check_and_insert(h.principal, h.nonce, h.timestamp_ms, {now_ms, f.mono_ms()})) {
      case ReplayCache::Result::kFresh:
        return std::nullopt;
      case ReplayCache::Result::kReplayed:
        return s.deny(protocol::Reason::kReplayed, "nonce already used");
      case ReplayCache::Result::kFull:
        return s.deny(protocol::Reason::kOverloaded, "replay cache full");
      case ReplayCache::Result::kTooOld:
        return s.deny(
            protocol::Reason::kStale,
            "timestamp is not newer than what this relay may already have accepted (it restarted "
            "just now, or its clock went back): check the client's and the relay's clocks, and retry");
      case ReplayCache::Result::kPrincipalFull:
        return s.deny(protocol::Reason::kOverloaded, "replay cache share of '" + h.principal + "' full");
    }
    return s.deny(protocol::Reason::kOverloaded, "replay cache");
  }

  // The nonce is fresh here; claims it for every relay with this relay id, off the loop. The answer
  // comes back on the worker: while the session lives this handshake does too (both end there).
  HandshakeStep claim_nonce(const protocol::Hello& h) {
    std::weak_ptr<SessionState> weak = s_;
    auto hello = std::make_shared<const protocol::Hello>(h);
    s_->factory->opts_.nonce_claims->claim(h.relay_id, h.principal, h.nonce,
                                           [weak, hello, self = this](policy::NonceClaims::Result r) {
                                             auto st = weak.lock();
                                             if (!st) return;
                                             std::lock_guard lock(st->mu);
                                             if (st->ended) return;
                                             st->ctx->post([st, hello, self, r] {
                                               {
                                                 std::lock_guard lock(st->mu);
                                                 if (st->ended) return;
                                               }
                                               if (st->decided) return;
                                               st->resume(self->after_claim(*hello, r));
                                             });
                                           });
    HandshakeStep pending;
    pending.kind = HandshakeStep::Kind::kPending;
    return pending;
  }

  HandshakeStep after_claim(const protocol::Hello& h, policy::NonceClaims::Result r) {
    SessionState& s = *s_;
    switch (r) {
      case policy::NonceClaims::Result::kFresh:
        break;
      case policy::NonceClaims::Result::kReplayed:
        return s.deny(protocol::Reason::kReplayed, "nonce already used at a relay with this relay id");
      case policy::NonceClaims::Result::kFailed:
        return s.deny(protocol::Reason::kOverloaded, "replay check refused by the store or overloaded");
      case policy::NonceClaims::Result::kUnavailable:
        // The local cache said fresh; without the shared answer only a relay told to require it refuses.
        if (s.factory->opts_.require_nonce_claims)
          return s.deny(protocol::Reason::kOverloaded, "replay check unavailable; try again later");
        break;
    }
    return check_policy(h, s.factory->now_ms());
  }

  // Policy on the name (or the literal address), the principal's session limit, then resolution.
  HandshakeStep check_policy(const protocol::Hello& h, uint64_t now_ms) {
    SessionState& s = *s_;
    AuthHandshakeFactory& f = *s.factory;
    auto now_s = static_cast<policy::UnixSeconds>(now_ms / 1000);
    auto literal = common::SockAddr::from_ip(h.target, h.port);
    policy::Decision dec;
    if (literal) {
      policy::AuthzRequest req;
      req.principal = h.principal;
      req.key_fingerprint = s.names.key_fp;
      req.source = policy::IpAddr::from_sockaddr(s.client.get()).value_or(policy::IpAddr{});
      req.target = policy::IpAddr::from_sockaddr(literal->get()).value_or(policy::IpAddr{});
      req.port = h.port;
      req.now = now_s;
      dec = s.snap->authorize(req);
    } else {
      dec = s.snap->name_allowed(h.principal, h.target, h.port, now_s);
    }
    if (!dec.allowed) {
      protocol::Reason r = from_policy(dec.reason);
      return s.deny(
          r, std::string(protocol::reason_description(r)) + ": " + h.target + ":" + std::to_string(h.port));
    }
    uint32_t max = s.snap->max_sessions_for(h.principal);
    if (!f.limits_.acquire_session(h.principal, max))
      return s.deny(protocol::Reason::kTooManySessions,
                    "'" + h.principal + "' has " + std::to_string(max) + " sessions" +
                        (f.limits_.fleet_wide() ? " on the relays of this fleet" : "") +
                        ", the most its roles allow");
    s.session_counted = true;
    if (literal) return s.connect(*literal);
    resolve(h);
    HandshakeStep pending;
    pending.kind = HandshakeStep::Kind::kPending;
    return pending;
  }

  // Resolves off the loop. The callback may run after this handshake is gone: it only posts while
  // the session is alive, and the worker ignores a resume for an ended session.
  void resolve(const protocol::Hello& h) {
    std::weak_ptr<SessionState> weak = s_;
    s_->factory->resolver_->resolve(h.target, h.port,
                                    [weak](std::string error, std::vector<common::SockAddr> addrs) {
                                      auto st = weak.lock();
                                      if (!st) return;
                                      std::lock_guard lock(st->mu);
                                      if (st->ended) return;
                                      st->ctx->post([st, error = std::move(error), addrs = std::move(addrs)] {
                                        {
                                          // The session may have ended after this was posted: its answer
                                          // decides and counts nothing.
                                          std::lock_guard lock(st->mu);
                                          if (st->ended) return;
                                        }
                                        if (st->decided) return;
                                        HandshakeStep step = st->finish_resolution(error, addrs);
                                        st->resume(std::move(step));
                                      });
                                    });
  }

  void mark_ended() {
    std::lock_guard lock(s_->mu);
    s_->ended = true;
  }

  // A session record as raw values, formatted by the audit log's sealing thread; the names are
  // shared, not copied.
  metrics::SessionEvent session_event(const char* type) const {
    const SessionState& s = *s_;
    metrics::SessionEvent e;
    e.type = type;
    e.session_id = s.session_id;
    e.client = s.client;
    e.target_addr = s.upstream;
    e.upstream_local = s.upstream_local;
    e.names = std::shared_ptr<const metrics::SessionNames>(s_, &s_->names);  // aliases the state: no copy
    return e;
  }

  static void append_session(metrics::AuditLog* audit, metrics::SessionEvent e) {
    try {
      audit->append_session(std::move(e));
    } catch (const std::exception& ex) {
      common::log_error("audit append failed", {{"error", ex.what()}});
    }
  }

  std::shared_ptr<SessionState> s_;
  bool ended_logged_ = false;
};

AuthHandshakeFactory::AuthHandshakeFactory(const policy::PolicyCache& cache, AuthOptions opts)
    : cache_(cache),
      opts_(std::move(opts)),
      replay_(static_cast<uint64_t>(opts_.max_skew.count()), opts_.replay_capacity,
              opts_.replay_per_principal) {
  if (opts_.relay_ids.empty()) throw common::UsageError("authenticated relay: give at least one --relay-id");
  for (const auto& id : opts_.relay_ids)
    if (id.empty() || id.size() > protocol::kMaxRelayId)
      throw common::UsageError("--relay-id '" + id + "': 1 to 128 printable characters");
  if (opts_.max_skew.count() <= 0) throw common::UsageError("authenticated relay: max skew must be positive");
  if (opts_.max_future_skew.count() < 0 || opts_.max_future_skew > opts_.max_skew)
    throw common::UsageError("authenticated relay: max future skew must be between 0 and the max skew");
  if (opts_.max_handshakes_per_source == 0) opts_.max_handshakes_per_source = 1;
  resolver_ = opts_.resolver ? opts_.resolver : std::make_shared<AresResolver>();
  limits_.set_ledger(opts_.session_ledger);
  set_metrics(opts_.metrics);
}

void AuthHandshakeFactory::set_metrics(const metrics::RelayMetrics& m) {
  handshake_seconds_.store(m.handshake_seconds, std::memory_order_release);
  connect_seconds_.store(m.connect_seconds, std::memory_order_release);
  decisions_family_.store(m.decisions, std::memory_order_release);
}

AuthHandshakeFactory::~AuthHandshakeFactory() = default;

uint64_t AuthHandshakeFactory::now_ms() const {
  if (opts_.clock_ms) return opts_.clock_ms();
  return static_cast<uint64_t>(common::unix_now_ms());
}

uint64_t AuthHandshakeFactory::mono_ms() const {
  if (opts_.mono_ms) return opts_.mono_ms();
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

bool AuthHandshakeFactory::is_local(const policy::IpAddr& a) const {
  const auto now = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::steady_clock::now().time_since_epoch())
                                             .count());
  std::lock_guard lock(local_mu_);
  if (local_read_ms_ == 0 || now - local_read_ms_ >= 1000) {
    try {
      local_ = policy::local_addresses();
    } catch (const std::exception& e) {
      common::log_warn("cannot list this host's addresses; keeping the last list", {{"error", e.what()}});
    }
    local_read_ms_ = now;
  }
  return std::binary_search(local_.begin(), local_.end(), a);
}

// Replay hand-over parts: "keys SEED SHARD_SEED forgot F0 .. F15", then parts of items
// "NONCEHEX:TIMESTAMP:PRINCIPAL:LEFT_MS" separated by spaces (decimal numbers).
std::vector<std::string> AuthHandshakeFactory::handover_replay() const {
  const ReplayCache::Snapshot snap = replay_.snapshot(mono_ms());
  std::vector<std::string> parts;
  std::string head = "keys " + std::to_string(snap.seed) + " " + std::to_string(snap.shard_seed) + " forgot";
  for (uint64_t f : snap.forgotten_ts) head += " " + std::to_string(f);
  parts.push_back(std::move(head));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string part;
  for (const auto& it : snap.items) {
    std::string item;
    for (uint8_t b : it.nonce) item += {kHex[b >> 4], kHex[b & 15]};
    item += ":" + std::to_string(it.timestamp_ms) + ":" + std::to_string(it.principal) + ":" +
            std::to_string(it.left_ms);
    if (part.size() + item.size() + 1 > kMaxReplayPartBytes) parts.push_back(std::exchange(part, {}));
    if (!part.empty()) part += ' ';
    part += item;
  }
  if (!part.empty()) parts.push_back(std::move(part));
  return parts;
}

namespace {
bool parse_u64(std::string_view t, uint64_t& out) {
  if (t.empty() || t.size() > 20) return false;
  auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
  return ec == std::errc() && p == t.data() + t.size();
}
std::vector<std::string_view> split(std::string_view t, char sep) {
  std::vector<std::string_view> out;
  for (size_t at = 0;;) {
    size_t next = t.find(sep, at);
    out.push_back(t.substr(at, next == std::string_view::npos ? std::string_view::npos : next - at));
    if (next == std::string_view::npos) return out;
    at = next + 1;
  }
}
int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}
}  // namespace

bool AuthHandshakeFactory::adopt_replay(const std::vector<std::string>& parts) {
  if (parts.empty()) return true;
  ReplayCache::Snapshot snap;
  const auto head = split(parts[0], ' ');
  if (head.size() != 4 + ReplayCache::kShards || head[0] != "keys" || head[3] != "forgot" ||
      !parse_u64(head[1], snap.seed) || !parse_u64(head[2], snap.shard_seed))
    return false;
  for (size_t i = 0; i < ReplayCache::kShards; ++i)
    if (!parse_u64(head[4 + i], snap.forgotten_ts[i])) return false;
  const uint64_t max_left = static_cast<uint64_t>((opts_.max_skew + opts_.max_future_skew).count());
  for (size_t p = 1; p < parts.size(); ++p) {
    if (parts[p].size() > kMaxReplayPartBytes) return false;
    for (std::string_view item : split(parts[p], ' ')) {
      const auto f = split(item, ':');
      ReplayCache::Snapshot::Item it;
      if (f.size() != 4 || f[0].size() != 2 * it.nonce.size() || !parse_u64(f[1], it.timestamp_ms) ||
          !parse_u64(f[2], it.principal) || !parse_u64(f[3], it.left_ms))
        return false;
      for (size_t i = 0; i < it.nonce.size(); ++i) {
        const int hi = hex_digit(f[0][2 * i]), lo = hex_digit(f[0][2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        it.nonce[i] = static_cast<uint8_t>(hi << 4 | lo);
      }
      // Kept at most as long as this relay's own skew would keep it (its clock check refuses it then).
      it.left_ms = std::min(it.left_ms, max_left);
      snap.items.push_back(it);
    }
  }
  return replay_.restore(snap, mono_ms());
}

uint64_t AuthHandshakeFactory::decisions(uint16_t reason) const {
  return reason <= protocol::kMaxReason ? decisions_[reason].load(std::memory_order_relaxed) : 0;
}

void AuthHandshakeFactory::count_decision(uint16_t reason, std::string_view name) {
  if (reason <= protocol::kMaxReason) decisions_[reason].fetch_add(1, std::memory_order_relaxed);
  if (auto* fam = decisions_family_.load(std::memory_order_acquire))
    fam->Add({{"result", reason == 0 ? "allow" : "deny"}, {"reason", std::string(name)}}).Increment();
}

std::unique_ptr<Handshake> AuthHandshakeFactory::create(uint64_t session_id, const common::SockAddr& client,
                                                        const common::SockAddr& listen, HandshakeContext& ctx,
                                                        HandshakeResume resume) {
  auto s = std::make_shared<SessionState>();
  s->factory = this;
  s->session_id = session_id;
  s->client = client;
  s->listen = listen;
  s->ctx = &ctx;
  s->resume = std::move(resume);
  s->in_handshake = limits_.enter_handshake(client, opts_.max_handshakes_per_source);
  s->over_handshake_cap = !s->in_handshake;
  return std::make_unique<AuthHandshake>(std::move(s));
}

// A handed-over session: decided and connected in another process. It counts against the
// principal's max_sessions here (without refusing: the session exists already) and writes its
// session_end record from this process's audit log.
std::unique_ptr<Handshake> AuthHandshakeFactory::adopt(uint64_t session_id, const common::SockAddr& client,
                                                       const common::SockAddr& listen,
                                                       std::string_view state) {
  auto j = nlohmann::json::parse(state, nullptr, false);
  if (j.is_discarded() || !j.is_object() || common::json_uint(j, "v") != 1u || !j.contains("principal"))
    return nullptr;
  auto s = std::make_shared<SessionState>();
  s->factory = this;
  s->session_id = session_id;
  s->client = client;
  s->listen = listen;
  s->decided = true;
  s->connected = true;
  s->names.principal = j.value("principal", "");
  s->names.key_fp = j.value("key_fp", "");
  s->names.target_host = j.value("target_name", "");
  s->names.target_port = static_cast<uint16_t>(common::json_uint(j, "port", 65535).value_or(0));
  if (auto a = common::SockAddr::parse(j.value("upstream", ""))) s->upstream = *a;
  if (auto a = common::SockAddr::parse(j.value("upstream_local", ""))) s->upstream_local = *a;
  limits_.count_session(s->names.principal);
  s->session_counted = true;
  return std::make_unique<AuthHandshake>(std::move(s));
}

}  // namespace sshring::relay::auth
