#include "metrics/audit_types.h"

#include <string_view>

#include "common/session_id.h"

namespace sshring::metrics {

namespace {

using J = nlohmann::json;

void put(J& j, const char* key, const std::string& v) {
  if (!v.empty()) j[key] = v;
}

std::string str(const J& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

uint64_t num(const J& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
}

std::optional<uint64_t> opt_num(const J& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<uint64_t>();
}

std::optional<bool> opt_bool(const J& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_boolean()) return std::nullopt;
  return it->get<bool>();
}

J typed(const char* type) {
  return J{{"type", type}};
}

void get_session(const J& j, SessionFields& s) {
  s.session_id = str(j, "session_id");
  s.client = str(j, "client");
  s.principal = str(j, "principal");
  s.key_fp = str(j, "key_fp");
  s.target_name = str(j, "target_name");
  s.target_addr = str(j, "target_addr");
  s.upstream_local = str(j, "upstream_local");
}

void put_terms(J& j, const GrantTerms& g) {
  j["grant_id"] = g.grant_id;
  put(j, "who", g.who);
  put(j, "from", g.from);
  put(j, "to", g.to);
  j["ports"] = g.ports;  // required by the signed-grant types, even when empty
  put(j, "expires", g.expires);
  put(j, "rule", g.rule);
  if (g.ttl_seconds) j["ttl_seconds"] = *g.ttl_seconds;
  put(j, "requester", g.requester);
  if (g.etcd_base_revision) j["etcd_base_revision"] = *g.etcd_base_revision;
}

void get_terms(const J& j, GrantTerms& g) {
  g.grant_id = str(j, "grant_id");
  g.who = str(j, "who");
  g.from = str(j, "from");
  g.to = str(j, "to");
  g.ports.clear();
  if (auto it = j.find("ports"); it != j.end() && it->is_array()) {
    for (const auto& p : *it) {
      if (p.is_number_unsigned() && p.get<uint64_t>() <= 65535) g.ports.push_back(p.get<uint16_t>());
    }
  }
  g.expires = str(j, "expires");
  g.rule = str(j, "rule");
  g.ttl_seconds = opt_num(j, "ttl_seconds");
  g.requester = str(j, "requester");
  g.etcd_base_revision = opt_num(j, "etcd_base_revision");
}

void put_signer(J& j, const GrantSigner& s) {
  put(j, "signer", s.signer);
  put(j, "key_fingerprint", s.key_fingerprint);
  put(j, "os_user", s.os_user);
  put(j, "signer_host", s.signer_host);
}

void get_signer(const J& j, GrantSigner& s) {
  s.signer = str(j, "signer");
  s.key_fingerprint = str(j, "key_fingerprint");
  s.os_user = str(j, "os_user");
  s.signer_host = str(j, "signer_host");
}

// The signed-grant records: terms, signer, then the type's own fields (written by `fields`).
template <class R, class Fields>
J signed_json(const R& r, Fields fields) {
  J j = typed(R::kType);
  put_terms(j, r);
  put_signer(j, r);
  fields(j);
  return j;
}

template <class R>
R signed_from(const J& body) {
  R r;
  get_terms(body, r);
  get_signer(body, r);
  return r;
}

J flow_json(const FlowKey& f) {
  return J{{"src", f.src}, {"dst", f.dst}, {"sport", f.sport}, {"dport", f.dport}, {"proto", f.proto}};
}

FlowKey flow_from(const J& body) {
  FlowKey f;
  auto it = body.find("flow");
  if (it == body.end() || !it->is_object()) return f;
  f.src = str(*it, "src");
  f.dst = str(*it, "dst");
  f.sport = static_cast<uint16_t>(num(*it, "sport"));
  f.dport = static_cast<uint16_t>(num(*it, "dport"));
  f.proto = str(*it, "proto");
  return f;
}

}  // namespace

void SessionFields::fields(BodyFields& f) const {
  f.str("session_id", session_id);
  f.str("client", client);
  f.str("principal", principal);
  f.str("key_fp", key_fp);
  f.str("target_name", target_name);
  f.str("target_addr", target_addr);
  f.str("upstream_local", upstream_local);
}

void SessionStart::fields(BodyFields& f) const {
  SessionFields::fields(f);
}

J SessionStart::to_json() const {
  BodyFields f;
  fields(f);
  return f.to_json(kType);
}

SessionStart SessionStart::from(const J& body) {
  SessionStart r;
  get_session(body, r);
  return r;
}

void SessionEnd::fields(BodyFields& f) const {
  SessionFields::fields(f);
  f.num("bytes_up", bytes_up);
  f.num("bytes_down", bytes_down);
  f.num("duration_ms", duration_ms);
  f.str_always("reason", reason);
}

J SessionEnd::to_json() const {
  BodyFields f;
  fields(f);
  return f.to_json(kType);
}

SessionEnd SessionEnd::from(const J& body) {
  SessionEnd r;
  get_session(body, r);
  r.bytes_up = num(body, "bytes_up");
  r.bytes_down = num(body, "bytes_down");
  r.duration_ms = num(body, "duration_ms");
  r.reason = str(body, "reason");
  return r;
}

void SessionEvent::fields(BodyFields& f, SessionFields& text) const {
  text.session_id = common::session_id_string(session_id);
  text.client = client.to_string();
  if (target_addr.len() != 0) text.target_addr = target_addr.to_string();
  if (upstream_local.len() != 0) text.upstream_local = upstream_local.to_string();
  if (names && !names->target_host.empty())
    text.target_name = names->target_host + ":" + std::to_string(names->target_port);
  text.fields(f);
  if (names) {  // views into the shared names: no copy
    f.str("principal", names->principal);
    f.str("key_fp", names->key_fp);
  }
  const std::string_view t = type;
  if (t == SessionEnd::kType) {
    f.num("bytes_up", bytes_up);
    f.num("bytes_down", bytes_down);
    f.num("duration_ms", duration_ms);
    f.str_always("reason", reason);
  } else if (t == SessionDeny::kType) {
    f.str_always("reason", reason);
    f.str("detail", detail);
  }
}

void SessionDeny::fields(BodyFields& f) const {
  SessionFields::fields(f);
  f.str_always("reason", reason);
  f.str("detail", detail);
}

J SessionDeny::to_json() const {
  BodyFields f;
  fields(f);
  return f.to_json(kType);
}

SessionDeny SessionDeny::from(const J& body) {
  SessionDeny r;
  get_session(body, r);
  r.reason = str(body, "reason");
  r.detail = str(body, "detail");
  return r;
}

J GrantAdd::to_json() const {
  J j = typed(kType);
  put_terms(j, *this);
  j["reason"] = reason;
  put(j, "approver", approver);
  j["actor"] = actor;
  return j;
}

GrantAdd GrantAdd::from(const J& body) {
  GrantAdd r;
  get_terms(body, r);
  r.reason = str(body, "reason");
  r.approver = str(body, "approver");
  r.actor = str(body, "actor");
  return r;
}

J GrantRevoke::to_json() const {
  return signed_json(*this, [&](J& j) {
    put(j, "reason", reason);
    j["actor"] = actor;
  });
}

GrantRevoke GrantRevoke::from(const J& body) {
  auto r = signed_from<GrantRevoke>(body);
  r.reason = str(body, "reason");
  r.actor = str(body, "actor");
  return r;
}

J GrantRequest::to_json() const {
  return signed_json(*this, [&](J& j) {
    put(j, "actor", actor);
    put(j, "reason", reason);
    j["status"] = status;
    if (break_glass) j["break_glass"] = *break_glass;
    put(j, "review_due", review_due);
  });
}

GrantRequest GrantRequest::from(const J& body) {
  auto r = signed_from<GrantRequest>(body);
  r.actor = str(body, "actor");
  r.reason = str(body, "reason");
  r.status = str(body, "status");
  r.break_glass = opt_bool(body, "break_glass");
  r.review_due = str(body, "review_due");
  return r;
}

J GrantApprove::to_json() const {
  return signed_json(*this, [&](J& j) {
    put(j, "actor", actor);
    j["status"] = status;
  });
}

GrantApprove GrantApprove::from(const J& body) {
  auto r = signed_from<GrantApprove>(body);
  r.actor = str(body, "actor");
  r.status = str(body, "status");
  return r;
}

J GrantDeny::to_json() const {
  return signed_json(*this, [&](J& j) {
    put(j, "actor", actor);
    put(j, "reason", reason);
  });
}

GrantDeny GrantDeny::from(const J& body) {
  auto r = signed_from<GrantDeny>(body);
  r.actor = str(body, "actor");
  r.reason = str(body, "reason");
  return r;
}

J GrantReview::to_json() const {
  return signed_json(*this, [&](J& j) {
    put(j, "actor", actor);
    put(j, "note", note);
  });
}

GrantReview GrantReview::from(const J& body) {
  auto r = signed_from<GrantReview>(body);
  r.actor = str(body, "actor");
  r.note = str(body, "note");
  return r;
}

J GrantReject::to_json() const {
  return signed_json(*this, [&](J& j) {
    put(j, "actor", actor);
    j["reason"] = reason;
    put(j, "detail", detail);
  });
}

GrantReject GrantReject::from(const J& body) {
  auto r = signed_from<GrantReject>(body);
  r.actor = str(body, "actor");
  r.reason = str(body, "reason");
  r.detail = str(body, "detail");
  return r;
}

J GrantExpire::to_json() const {
  J j = typed(kType);
  put_terms(j, *this);
  put(j, "actor", actor);
  return j;
}

GrantExpire GrantExpire::from(const J& body) {
  GrantExpire r;
  get_terms(body, r);
  r.actor = str(body, "actor");
  return r;
}

J FlowOpen::to_json() const {
  J j = typed(kType);
  j["flow"] = flow_json(flow);
  j["tag"] = tag;
  put(j, "grant_id", grant_id);
  put(j, "first_seen", first_seen);
  if (enforced) j["enforced"] = *enforced;
  if (seeded) j["seeded"] = *seeded;
  if (late) j["late"] = *late;
  return j;
}

FlowOpen FlowOpen::from(const J& body) {
  FlowOpen r;
  r.flow = flow_from(body);
  r.tag = str(body, "tag");
  r.grant_id = str(body, "grant_id");
  r.first_seen = str(body, "first_seen");
  r.enforced = opt_bool(body, "enforced");
  r.seeded = opt_bool(body, "seeded");
  r.late = opt_bool(body, "late");
  return r;
}

J FlowClose::to_json() const {
  J j = typed(kType);
  j["flow"] = flow_json(flow);
  j["tag"] = tag;
  put(j, "grant_id", grant_id);
  j["packets_in"] = packets_in;
  j["packets_out"] = packets_out;
  j["bytes_in"] = bytes_in;
  j["bytes_out"] = bytes_out;
  put(j, "first_seen", first_seen);
  put(j, "last_seen", last_seen);
  j["end"] = end;
  if (enforced) j["enforced"] = *enforced;
  return j;
}

FlowClose FlowClose::from(const J& body) {
  FlowClose r;
  r.flow = flow_from(body);
  r.tag = str(body, "tag");
  r.grant_id = str(body, "grant_id");
  r.packets_in = num(body, "packets_in");
  r.packets_out = num(body, "packets_out");
  r.bytes_in = num(body, "bytes_in");
  r.bytes_out = num(body, "bytes_out");
  r.first_seen = str(body, "first_seen");
  r.last_seen = str(body, "last_seen");
  r.end = str(body, "end");
  r.enforced = opt_bool(body, "enforced");
  return r;
}

J FlowCut::to_json() const {
  J j = typed(kType);
  j["flow"] = flow_json(flow);
  j["tag"] = tag;
  j["reason"] = reason;
  put(j, "grant_id", grant_id);
  put(j, "first_seen", first_seen);
  j["packets_in"] = packets_in;
  j["packets_out"] = packets_out;
  j["bytes_in"] = bytes_in;
  j["bytes_out"] = bytes_out;
  if (enforced) j["enforced"] = *enforced;
  return j;
}

FlowCut FlowCut::from(const J& body) {
  FlowCut r;
  r.flow = flow_from(body);
  r.tag = str(body, "tag");
  r.reason = str(body, "reason");
  r.grant_id = str(body, "grant_id");
  r.first_seen = str(body, "first_seen");
  r.packets_in = num(body, "packets_in");
  r.packets_out = num(body, "packets_out");
  r.bytes_in = num(body, "bytes_in");
  r.bytes_out = num(body, "bytes_out");
  r.enforced = opt_bool(body, "enforced");
  return r;
}

J PolicyPush::to_json() const {
  J j = typed(kType);
  j["actor"] = actor;
  put(j, "file", file);
  j["digest"] = digest;
  j["size"] = size;
  j["store"] = store;
  j["etcd_revision"] = etcd_revision;
  if (base_revision) j["base_revision"] = *base_revision;
  return j;
}

PolicyPush PolicyPush::from(const J& body) {
  PolicyPush r;
  r.actor = str(body, "actor");
  r.file = str(body, "file");
  r.digest = str(body, "digest");
  r.size = num(body, "size");
  r.store = str(body, "store");
  r.etcd_revision = num(body, "etcd_revision");
  r.base_revision = opt_num(body, "base_revision");
  return r;
}

J RelayHandover::to_json() const {
  J j = typed(kType);
  j["side"] = side;
  j["sessions"] = sessions;
  j["listeners"] = listeners;
  if (peer_pid) j["peer_pid"] = *peer_pid;
  return j;
}

RelayHandover RelayHandover::from(const J& body) {
  RelayHandover r;
  r.side = str(body, "side");
  r.sessions = num(body, "sessions");
  r.listeners = num(body, "listeners");
  r.peer_pid = opt_num(body, "peer_pid");
  return r;
}

J PolicyReload::to_json() const {
  J j = typed(kType);
  j["result"] = result;
  put(j, "error", error);
  put(j, "version", version);
  return j;
}

PolicyReload PolicyReload::from(const J& body) {
  return PolicyReload{str(body, "result"), str(body, "error"), str(body, "version")};
}

J LogRotate::to_json() const {
  J j = typed(kType);
  j["previous_file"] = previous_file;
  return j;
}

LogRotate LogRotate::from(const J& body) {
  return LogRotate{str(body, "previous_file")};
}

J LogRecover::to_json() const {
  J j = typed(kType);
  if (torn_offset) j["torn_offset"] = *torn_offset;
  if (torn_bytes) j["torn_bytes"] = *torn_bytes;
  put(j, "torn_text", torn_text);
  put(j, "last_line_error", last_line_error);
  put(j, "unsigned_tail", unsigned_tail);
  return j;
}

LogRecover LogRecover::from(const J& body) {
  LogRecover r;
  r.torn_offset = opt_num(body, "torn_offset");
  r.torn_bytes = opt_num(body, "torn_bytes");
  r.torn_text = str(body, "torn_text");
  r.last_line_error = str(body, "last_line_error");
  r.unsigned_tail = str(body, "unsigned_tail");
  return r;
}

J LogReopen::to_json() const {
  J j = typed(kType);
  j["reason"] = reason;
  put(j, "moved_to", moved_to);
  j["restored_bytes"] = restored_bytes;
  return j;
}

LogReopen LogReopen::from(const J& body) {
  return LogReopen{str(body, "reason"), str(body, "moved_to"), num(body, "restored_bytes")};
}

J LogGap::to_json() const {
  J j = typed(kType);
  j["dropped"] = dropped;
  put(j, "first_dropped", first_dropped);
  put(j, "last_dropped", last_dropped);
  put(j, "error", error);
  return j;
}

LogGap LogGap::from(const J& body) {
  return LogGap{num(body, "dropped"), str(body, "first_dropped"), str(body, "last_dropped"),
                str(body, "error")};
}

J Checkpoint::to_json() const {
  J j = typed(kType);
  j["writer"] = writer;
  j["key_fp"] = key_fp;
  j["sig"] = sig;
  j["every"] = every;
  j["interval_s"] = interval_s;
  j["final"] = final;
  return j;
}

Checkpoint Checkpoint::from(const J& body) {
  Checkpoint c;
  c.writer = str(body, "writer");
  c.key_fp = str(body, "key_fp");
  c.sig = str(body, "sig");
  c.every = num(body, "every");
  c.interval_s = num(body, "interval_s");
  auto f = opt_bool(body, "final");
  c.final = f.value_or(false);
  return c;
}

std::string checkpoint_message(const std::string& writer, uint64_t seq, const std::string& prev,
                               const std::string& ts, uint64_t every, uint64_t interval_s, bool final) {
  // NUL-separated so no field can shift into another; versioned so the format can change.
  std::string m = "sshring-audit-checkpoint-v1";
  for (const std::string& part : {writer, std::to_string(seq), prev, ts, std::to_string(every),
                                  std::to_string(interval_s), std::string(final ? "final" : "periodic")}) {
    m.push_back('\0');
    m += part;
  }
  return m;
}

}  // namespace sshring::metrics
