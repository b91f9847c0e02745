// Typed audit records: one struct per record type (docs/audit.md). Writers build a struct and hand it to
// AuditLog::append; readers get the same struct back from a parsed line with `record_as<T>`. Each
// struct's to_json() writes only the type's fields (the log adds the envelope); from() reads them back
// from a record that parse_record already validated, so a round trip is lossless.
// Empty strings and unset optionals mean "absent" and are not written.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/sockaddr.h"
#include "metrics/audit_body.h"
#include "metrics/audit_record.h"

namespace sshring::metrics {

// Fields shared by the three session record types.
struct SessionFields {
  std::string session_id;   // 16 hex digits
  std::string client;       // ip:port
  std::string principal;    // authenticated mode
  std::string key_fp;       // SHA256:...
  std::string target_name;  // host:port as requested
  std::string target_addr;  // upstream ip:port
  std::string upstream_local;
  void fields(BodyFields& f) const;
};

struct SessionStart : SessionFields {
  static constexpr const char* kType = "session_start";
  // The hot path (AuditLog writes these straight into the line); to_json() is the same fields.
  void fields(BodyFields& f) const;
  [[nodiscard]] nlohmann::json to_json() const;
  static SessionStart from(const nlohmann::json& body);
};

struct SessionEnd : SessionFields {
  static constexpr const char* kType = "session_end";
  uint64_t bytes_up = 0;
  uint64_t bytes_down = 0;
  uint64_t duration_ms = 0;
  std::string reason;  // session outcome
  // The hot path (AuditLog writes these straight into the line); to_json() is the same fields.
  void fields(BodyFields& f) const;
  [[nodiscard]] nlohmann::json to_json() const;
  static SessionEnd from(const nlohmann::json& body);
};

// The names a session's records repeat: the relay's own copy, shared by the session's events.
struct SessionNames {
  std::string principal;
  std::string key_fp;
  std::string target_host;  // as requested; the record's target_name is host:port
  uint16_t target_port = 0;
};

// A session record (start, end or deny) as a relay worker hands it to AuditLog::append_session: raw
// values, no text. The sealing thread formats them (fields()), so a worker's cost per record is a move
// of this struct and a reference count, with no allocation and no formatting.
struct SessionEvent {
  const char* type = nullptr;  // SessionStart::kType, SessionEnd::kType or SessionDeny::kType
  uint64_t session_id = 0;
  common::SockAddr client;
  common::SockAddr target_addr;               // unset: absent
  common::SockAddr upstream_local;            // unset: absent
  std::shared_ptr<const SessionNames> names;  // null: absent (unauthenticated relay)
  // session_end only
  uint64_t bytes_up = 0;
  uint64_t bytes_down = 0;
  uint64_t duration_ms = 0;
  const char* reason = "";  // session_end and session_deny: a literal (outcome or DENY reason)
  std::string detail;       // session_deny only: the DENY message
  // The record's fields, the same as the typed record's (SessionStart, SessionEnd, SessionDeny) with
  // these values formatted; the text goes into `text`, which must outlive `f`.
  void fields(BodyFields& f, SessionFields& text) const;
};

struct SessionDeny : SessionFields {
  static constexpr const char* kType = "session_deny";
  std::string reason;  // DENY reason name or the outcome of a session that ended undecided
  std::string detail;  // the DENY message sent to the client
  // The hot path (AuditLog writes these straight into the line); to_json() is the same fields.
  void fields(BodyFields& f) const;
  [[nodiscard]] nlohmann::json to_json() const;
  static SessionDeny from(const nlohmann::json& body);
};

// A grant's terms: written into every grant record type so each reads on its own.
struct GrantTerms {
  std::string grant_id;
  std::string who;
  std::string from;
  std::string to;
  std::vector<uint16_t> ports;
  std::string expires;  // RFC 3339
  std::string rule;
  std::optional<uint64_t> ttl_seconds;  // signed grants: the TTL asked for
  std::string requester;                // signed grants: the principal who asked
  // etcd stores: the revision the change was made against (GrantStore::base_revision).
  std::optional<uint64_t> etcd_base_revision;
};

// Who signed a signed-grant decision: the principal, its key's fingerprint, and the OS user and host
// recorded beside the signature (never trusted: shown so a reviewer can spot a mismatch). The host is
// `signer_host` because `host` is the envelope's (the writer's) host.
struct GrantSigner {
  std::string signer;
  std::string key_fingerprint;  // SHA256:...
  std::string os_user;
  std::string signer_host;
};

struct GrantAdd : GrantTerms {
  static constexpr const char* kType = "grant_add";
  std::string reason;
  std::string approver;
  std::string actor;
  [[nodiscard]] nlohmann::json to_json() const;
  static GrantAdd from(const nlohmann::json& body);
};

struct GrantRevoke : GrantTerms, GrantSigner {
  static constexpr const char* kType = "grant_revoke";
  std::string reason;
  std::string actor;
  [[nodiscard]] nlohmann::json to_json() const;
  static GrantRevoke from(const nlohmann::json& body);
};

// A signed request as checked (docs/policy.md): its status, and under a break_glass rule
// break_glass and, once live, review_due (`audit report` lists such grants until reviewed).
struct GrantRequest : GrantTerms, GrantSigner {
  static constexpr const char* kType = "grant_request";
  std::string actor;
  std::string reason;
  std::string status;
  std::optional<bool> break_glass;
  std::string review_due;  // RFC 3339
  [[nodiscard]] nlohmann::json to_json() const;
  static GrantRequest from(const nlohmann::json& body);
};

// One approval; status is the grant's status after it.
struct GrantApprove : GrantTerms, GrantSigner {
  static constexpr const char* kType = "grant_approve";
  std::string actor;
  std::string status;
  [[nodiscard]] nlohmann::json to_json() const;
  static GrantApprove from(const nlohmann::json& body);
};

struct GrantDeny : GrantTerms, GrantSigner {
  static constexpr const char* kType = "grant_deny";
  std::string actor;
  std::string reason;
  [[nodiscard]] nlohmann::json to_json() const;
  static GrantDeny from(const nlohmann::json& body);
};

// A break-glass grant reviewed after the fact.
struct GrantReview : GrantTerms, GrantSigner {
  static constexpr const char* kType = "grant_review";
  std::string actor;
  std::string note;
  [[nodiscard]] nlohmann::json to_json() const;
  static GrantReview from(const nlohmann::json& body);
};

// A stored grant a reader (relay, agent, CLI) refused to honour: a stable reason code
// (docs/policy.md) and a detail. The signer fields are the requester's, as recorded; signer is empty.
struct GrantReject : GrantTerms, GrantSigner {
  static constexpr const char* kType = "grant_reject";
  std::string actor = "system";
  std::string reason;
  std::string detail;
  [[nodiscard]] nlohmann::json to_json() const;
  static GrantReject from(const nlohmann::json& body);
};

struct GrantExpire : GrantTerms {
  static constexpr const char* kType = "grant_expire";
  std::string actor = "system";
  [[nodiscard]] nlohmann::json to_json() const;
  static GrantExpire from(const nlohmann::json& body);
};

struct FlowKey {
  std::string src;  // IP, no port
  std::string dst;
  uint16_t sport = 0;
  uint16_t dport = 0;
  std::string proto = "tcp";
};

struct FlowOpen {
  static constexpr const char* kType = "flow_open";
  FlowKey flow;
  std::string tag;       // proxied | bypass_approved | bypass_expired | bypass_unapproved
  std::string grant_id;  // empty: none
  std::string first_seen;
  std::optional<bool> enforced;
  std::optional<bool> seeded;  // true: open before the agent started, found by its socket dump
  std::optional<bool> late;    // true: the kernel's open event was lost; the agent's walk found the flow
  [[nodiscard]] nlohmann::json to_json() const;
  static FlowOpen from(const nlohmann::json& body);
};

struct FlowClose {
  static constexpr const char* kType = "flow_close";
  FlowKey flow;
  std::string tag;
  std::string grant_id;
  uint64_t packets_in = 0, packets_out = 0, bytes_in = 0, bytes_out = 0;
  std::string first_seen;
  std::string last_seen;
  std::string end;  // fin | rst | local_close | evicted
  std::optional<bool> enforced;
  [[nodiscard]] nlohmann::json to_json() const;
  static FlowClose from(const nlohmann::json& body);
};

// Enforce mode ended a live flow (its grant expired or was revoked, or it was never approved).
struct FlowCut {
  static constexpr const char* kType = "flow_cut";
  FlowKey flow;
  std::string tag;
  std::string reason;  // grant_expired | unapproved
  std::string grant_id;
  std::string first_seen;
  uint64_t packets_in = 0, packets_out = 0, bytes_in = 0, bytes_out = 0;
  std::optional<bool> enforced;
  [[nodiscard]] nlohmann::json to_json() const;
  static FlowCut from(const nlohmann::json& body);
};

// `sshring policy push`: a policy written to the fleet store.
struct PolicyPush {
  static constexpr const char* kType = "policy_push";
  std::string actor;
  std::string file;
  std::string digest;  // sha256:HEX of the text pushed
  uint64_t size = 0;
  std::string store;  // etcd://HOST:PORT/PREFIX
  uint64_t etcd_revision = 0;
  std::optional<uint64_t> base_revision;
  [[nodiscard]] nlohmann::json to_json() const;
  static PolicyPush from(const nlohmann::json& body);
};

// A relay hand-over, written by both sides: "sent" by the old relay, "received" by the new one.
struct RelayHandover {
  static constexpr const char* kType = "relay_handover";
  std::string side;
  uint64_t sessions = 0, listeners = 0;
  std::optional<uint64_t> peer_pid;
  [[nodiscard]] nlohmann::json to_json() const;
  static RelayHandover from(const nlohmann::json& body);
};

struct PolicyReload {
  static constexpr const char* kType = "policy_reload";
  std::string result = "success";
  std::string error;
  std::string version;
  [[nodiscard]] nlohmann::json to_json() const;
  static PolicyReload from(const nlohmann::json& body);
};

// Written by the log itself.
struct LogRotate {
  static constexpr const char* kType = "log_rotate";
  std::string previous_file;
  [[nodiscard]] nlohmann::json to_json() const;
  static LogRotate from(const nlohmann::json& body);
};

struct LogRecover {
  static constexpr const char* kType = "log_recover";
  std::optional<uint64_t> torn_offset;
  std::optional<uint64_t> torn_bytes;
  std::string torn_text;
  std::string last_line_error;
  std::string unsigned_tail;  // the previous run ended without its final checkpoint (seq range)
  [[nodiscard]] nlohmann::json to_json() const;
  static LogRecover from(const nlohmann::json& body);
};

// The live file was deleted or replaced under the writer: the chain was restored into a new file.
struct LogReopen {
  static constexpr const char* kType = "log_reopen";
  std::string reason;    // deleted | replaced
  std::string moved_to;  // where a replacing file was moved (replaced only)
  uint64_t restored_bytes = 0;
  [[nodiscard]] nlohmann::json to_json() const;
  static LogReopen from(const nlohmann::json& body);
};

// Records the writer could not write (log unwritable for longer than its buffer lasts) and dropped
// before they entered the chain; written as soon as the log is writable again.
struct LogGap {
  static constexpr const char* kType = "log_gap";
  uint64_t dropped = 0;
  std::string first_dropped;  // RFC 3339 of the first dropped record
  std::string last_dropped;
  std::string error;  // the write error that started it
  [[nodiscard]] nlohmann::json to_json() const;
  static LogGap from(const nlohmann::json& body);
};

// Signed by the writer's audit key over checkpoint_message(writer, seq, prev, ts).
struct Checkpoint {
  static constexpr const char* kType = "checkpoint";
  std::string writer;  // component@host
  std::string key_fp;  // SHA256:... of the signing key
  std::string sig;     // base64 Ed25519 signature
  uint64_t every = 0;  // records between checkpoints (at most)
  uint64_t interval_s = 0;
  bool final = false;  // written at clean shutdown
  [[nodiscard]] nlohmann::json to_json() const;
  static Checkpoint from(const nlohmann::json& body);
};

// The bytes a checkpoint signs: its envelope's seq, prev (the chain hash so far) and ts, the writer
// and the interval it promises.
std::string checkpoint_message(const std::string& writer, uint64_t seq, const std::string& prev,
                               const std::string& ts, uint64_t every, uint64_t interval_s, bool final);

// The typed view of a parsed record; nullopt when the record is of another type.
template <class T>
std::optional<T> record_as(const AuditRecord& rec) {
  if (rec.type != T::kType) return std::nullopt;
  return T::from(rec.body);
}

}  // namespace sshring::metrics
