#include "metrics/audit_record.h"

#include "common/civil_time.h"
#include "common/sha256.h"

#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <ctime>

namespace sshring::metrics {

namespace {

enum class Kind { kString, kUint, kObject, kArray, kStringOrNull, kBool };

struct FieldSpec {
  const char* name;
  Kind kind;
  bool required;
};

struct TypeSpec {
  const char* type;
  std::initializer_list<FieldSpec> fields;
};

// Per-type fields (docs/audit.md is the prose form of this table). Optional fields are type-checked
// when present so the report can trust them.
const TypeSpec kTypes[] = {
    {"session_start",
     {{"session_id", Kind::kString, true},
      {"principal", Kind::kString, false},
      {"key_fp", Kind::kString, false},
      {"client", Kind::kString, true},
      {"target_name", Kind::kString, false},
      {"target_addr", Kind::kString, false},
      {"upstream_local", Kind::kString, false}}},
    {"session_end",
     {{"session_id", Kind::kString, true},
      {"principal", Kind::kString, false},
      {"key_fp", Kind::kString, false},
      {"client", Kind::kString, false},
      {"target_name", Kind::kString, false},
      {"target_addr", Kind::kString, false},
      {"upstream_local", Kind::kString, false},
      {"bytes_up", Kind::kUint, true},
      {"bytes_down", Kind::kUint, true},
      {"duration_ms", Kind::kUint, true},
      {"reason", Kind::kString, true}}},
    {"session_deny",
     {{"session_id", Kind::kString, false},
      {"principal", Kind::kString, false},
      {"key_fp", Kind::kString, false},
      {"client", Kind::kString, true},
      {"target_name", Kind::kString, false},
      {"reason", Kind::kString, true}}},
    {"grant_add",
     {{"grant_id", Kind::kString, true},
      {"etcd_base_revision", Kind::kUint, false},
      {"who", Kind::kString, true},
      {"from", Kind::kString, false},
      {"to", Kind::kString, true},
      {"ports", Kind::kArray, false},
      {"expires", Kind::kString, true},
      {"reason", Kind::kString, true},
      {"approver", Kind::kString, false},
      {"actor", Kind::kString, true}}},
    {"grant_revoke",
     {{"grant_id", Kind::kString, true},
      {"etcd_base_revision", Kind::kUint, false},
      {"actor", Kind::kString, true},
      {"reason", Kind::kString, false}}},
    {"grant_expire",
     {{"grant_id", Kind::kString, true},
      {"etcd_base_revision", Kind::kUint, false},
      {"actor", Kind::kString, false}}},
    // Signed grants: the signer principal, its key fingerprint, and the OS user and host recorded
    // beside the signature (docs/policy.md).
    {"grant_request",
     {{"grant_id", Kind::kString, true},
      {"etcd_base_revision", Kind::kUint, false},
      {"who", Kind::kString, true},
      {"from", Kind::kString, true},
      {"to", Kind::kString, true},
      {"ports", Kind::kArray, true},
      {"rule", Kind::kString, true},
      {"reason", Kind::kString, false},
      {"status", Kind::kString, true},
      {"signer", Kind::kString, true},
      {"key_fingerprint", Kind::kString, true},
      {"os_user", Kind::kString, false},
      {"signer_host", Kind::kString, false},
      {"break_glass", Kind::kBool, false},
      {"review_due", Kind::kString, false}}},
    {"grant_approve",
     {{"grant_id", Kind::kString, true},
      {"etcd_base_revision", Kind::kUint, false},
      {"status", Kind::kString, true},
      {"signer", Kind::kString, true},
      {"key_fingerprint", Kind::kString, true}}},
    {"grant_deny",
     {{"grant_id", Kind::kString, true},
      {"etcd_base_revision", Kind::kUint, false},
      {"reason", Kind::kString, false},
      {"signer", Kind::kString, true},
      {"key_fingerprint", Kind::kString, true}}},
    {"grant_review",
     {{"grant_id", Kind::kString, true},
      {"etcd_base_revision", Kind::kUint, false},
      {"note", Kind::kString, false},
      {"signer", Kind::kString, true},
      {"key_fingerprint", Kind::kString, true}}},
    {"grant_reject",
     {{"grant_id", Kind::kString, true}, {"reason", Kind::kString, true}, {"detail", Kind::kString, false}}},
    {"flow_open",
     {{"flow", Kind::kObject, true},
      {"tag", Kind::kString, true},
      {"grant_id", Kind::kStringOrNull, false},
      {"first_seen", Kind::kString, false},
      {"enforced", Kind::kBool, false},
      {"seeded", Kind::kBool, false},
      {"late", Kind::kBool, false}}},
    {"flow_close",
     {{"flow", Kind::kObject, true},
      {"tag", Kind::kString, true},
      {"grant_id", Kind::kStringOrNull, false},
      {"packets_in", Kind::kUint, true},
      {"packets_out", Kind::kUint, true},
      {"bytes_in", Kind::kUint, true},
      {"bytes_out", Kind::kUint, true},
      {"first_seen", Kind::kString, false},
      {"last_seen", Kind::kString, false},
      {"end", Kind::kString, true},
      {"enforced", Kind::kBool, false}}},
    {"flow_cut",
     {{"flow", Kind::kObject, true},
      {"tag", Kind::kString, true},
      {"reason", Kind::kString, true},
      {"grant_id", Kind::kStringOrNull, false},
      {"first_seen", Kind::kString, false},
      {"packets_in", Kind::kUint, false},
      {"packets_out", Kind::kUint, false},
      {"bytes_in", Kind::kUint, false},
      {"bytes_out", Kind::kUint, false},
      {"enforced", Kind::kBool, false}}},
    {"policy_reload",
     {{"result", Kind::kString, true}, {"error", Kind::kString, false}, {"version", Kind::kString, false}}},
    {"policy_push",
     {{"actor", Kind::kString, true},
      {"file", Kind::kString, false},
      {"digest", Kind::kString, true},
      {"size", Kind::kUint, true},
      {"store", Kind::kString, true},
      {"etcd_revision", Kind::kUint, true},
      {"base_revision", Kind::kUint, false}}},
    {"relay_handover",
     {{"side", Kind::kString, true},
      {"sessions", Kind::kUint, true},
      {"listeners", Kind::kUint, true},
      {"peer_pid", Kind::kUint, false}}},
    {"log_rotate", {{"previous_file", Kind::kString, true}}},
    {"log_recover",
     {{"torn_offset", Kind::kUint, false},
      {"torn_bytes", Kind::kUint, false},
      {"torn_text", Kind::kString, false},
      {"last_line_error", Kind::kString, false},
      {"unsigned_tail", Kind::kString, false}}},
    {"log_reopen",
     {{"reason", Kind::kString, true},
      {"moved_to", Kind::kString, false},
      {"restored_bytes", Kind::kUint, true}}},
    {"log_gap",
     {{"dropped", Kind::kUint, true},
      {"first_dropped", Kind::kString, false},
      {"last_dropped", Kind::kString, false},
      {"error", Kind::kString, false}}},
    {"checkpoint",
     {{"writer", Kind::kString, true},
      {"key_fp", Kind::kString, true},
      {"sig", Kind::kString, true},
      {"every", Kind::kUint, true},
      {"interval_s", Kind::kUint, true},
      {"final", Kind::kBool, true}}},
};

bool kind_ok(const nlohmann::json& v, Kind k) {
  switch (k) {
    case Kind::kString:
      return v.is_string();
    case Kind::kUint:
      return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
    case Kind::kObject:
      return v.is_object();
    case Kind::kArray:
      return v.is_array();
    case Kind::kStringOrNull:
      return v.is_string() || v.is_null();
    case Kind::kBool:
      return v.is_boolean();
  }
  return false;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kString:
      return "a string";
    case Kind::kUint:
      return "a non-negative integer";
    case Kind::kObject:
      return "an object";
    case Kind::kArray:
      return "an array";
    case Kind::kStringOrNull:
      return "a string or null";
    case Kind::kBool:
      return "true or false";
  }
  return "?";
}

bool is_flow_tag(const std::string& s) {
  return s == "proxied" || s == "bypass_approved" || s == "bypass_expired" || s == "bypass_unapproved";
}

bool fail(std::string* error, std::string msg) {
  if (error) *error = std::move(msg);
  return false;
}

bool check_flow(const nlohmann::json& flow, std::string* error) {
  for (const char* f : {"src", "dst", "proto"}) {
    if (!flow.contains(f) || !flow[f].is_string())
      return fail(error, std::string("flow.") + f + " must be a string");
  }
  for (const char* f : {"sport", "dport"}) {
    if (!flow.contains(f) || !flow[f].is_number_unsigned() || flow[f].get<uint64_t>() > 65535) {
      return fail(error, std::string("flow.") + f + " must be a port number 0..65535");
    }
  }
  return true;
}

}  // namespace

std::string sha256_hex(std::string_view data) {
  return common::sha256_hex(data);
}

std::optional<AuditRecord> parse_record(std::string_view line, std::string* error) {
  if (line.size() > kMaxRecordBytes) {
    fail(error, "record is " + std::to_string(line.size()) + " bytes, over the " +
                    std::to_string(kMaxRecordBytes) + " byte limit");
    return std::nullopt;
  }
  AuditRecord r;
  r.body = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (r.body.is_discarded()) {
    fail(error, "not valid JSON");
    return std::nullopt;
  }
  if (!r.body.is_object()) {
    fail(error, "not a JSON object");
    return std::nullopt;
  }
  const auto& b = r.body;
  for (const char* f : {"ts", "type", "component", "host", "prev"}) {
    if (!b.contains(f) || !b[f].is_string()) {
      fail(error, std::string("field '") + f + "' missing or not a string");
      return std::nullopt;
    }
  }
  if (!b.contains("seq") || !b["seq"].is_number_unsigned() || b["seq"].get<uint64_t>() == 0) {
    fail(error, "field 'seq' missing or not a positive integer");
    return std::nullopt;
  }
  r.ts = b["ts"].get<std::string>();
  r.type = b["type"].get<std::string>();
  r.component = b["component"].get<std::string>();
  r.host = b["host"].get<std::string>();
  r.prev = b["prev"].get<std::string>();
  r.seq = b["seq"].get<uint64_t>();
  auto ts = common::parse_rfc3339_ms(r.ts);
  if (!ts) {
    fail(error, "field 'ts' is not an RFC 3339 time ('" + r.ts.substr(0, 40) + "')");
    return std::nullopt;
  }
  r.ts_ms = *ts;
  if (r.prev.size() != 64 || !std::all_of(r.prev.begin(), r.prev.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      })) {
    fail(error, "field 'prev' is not 64 lowercase hex digits");
    return std::nullopt;
  }
  const TypeSpec* spec = nullptr;
  for (const auto& t : kTypes) {
    if (r.type == t.type) spec = &t;
  }
  if (!spec) {
    fail(error, "unknown record type '" + r.type.substr(0, 40) + "'");
    return std::nullopt;
  }
  for (const auto& f : spec->fields) {
    auto it = b.find(f.name);
    if (it == b.end()) {
      if (f.required) {
        fail(error, r.type + ": required field '" + f.name + "' missing");
        return std::nullopt;
      }
      continue;
    }
    if (!kind_ok(*it, f.kind)) {
      fail(error, r.type + ": field '" + f.name + "' must be " + kind_name(f.kind));
      return std::nullopt;
    }
  }
  if (r.type == "flow_open" || r.type == "flow_close" || r.type == "flow_cut") {
    if (!check_flow(b["flow"], error)) return std::nullopt;
    if (!is_flow_tag(b["tag"].get<std::string>())) {
      fail(error, r.type + ": tag must be proxied|bypass_approved|bypass_expired|bypass_unapproved");
      return std::nullopt;
    }
  }
  return r;
}

}  // namespace sshring::metrics
