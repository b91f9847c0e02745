// Typed audit records: each type round-trips through the real log and the reader (parse_record +
// record_as) unchanged, with every field set and with only the required ones.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>

#include "metrics/audit.h"
#include "metrics/audit_record.h"
#include "metrics/audit_types.h"
#include "tests/support/process.h"

namespace sshring::metrics {
namespace {

using sshring::testing::read_file;
using sshring::testing::TempDir;

SessionFields session() {
  return {.session_id = "00000000000000a1",
          .client = "10.0.0.9:41022",
          .principal = "alice",
          .key_fp = "SHA256:abc",
          .target_name = "db1:22",
          .target_addr = "10.0.0.5:22",
          .upstream_local = "10.0.0.2:50000"};
}
GrantTerms terms() {
  return {.grant_id = "g-1",
          .who = "alice",
          .from = "10.0.0.9/32",
          .to = "10.0.0.5/32",
          .ports = {22, 2222},
          .expires = "2026-12-01T12:00:00Z",
          .rule = "oncall"};
}
// A signed grant's terms (TTL and requester instead of a fixed expiry) and its signer.
GrantTerms signed_terms() {
  GrantTerms t = terms();
  t.expires.clear();
  t.ttl_seconds = 7200;
  t.requester = "alice";
  return t;
}
GrantSigner signer() {
  return {
      .signer = "carol", .key_fingerprint = "SHA256:carol", .os_user = "carol", .signer_host = "sec-desk"};
}
FlowKey flow() {
  return {.src = "10.0.0.9", .dst = "10.0.0.5", .sport = 41022, .dport = 22, .proto = "tcp"};
}

// Every field set (the "full" sample) and a minimal one per type.
template <class T>
std::vector<T> samples();
template <>
std::vector<SessionStart> samples() {
  return {SessionStart{session()}, SessionStart{{.session_id = "1", .client = "[::1]:5"}}};
}
template <>
std::vector<SessionEnd> samples() {
  SessionEnd e{session()};
  e.bytes_up = 1;
  e.bytes_down = 1ull << 40;
  e.duration_ms = 7;
  e.reason = "closed";
  SessionEnd m;
  m.session_id = "2";
  m.reason = "client_reset";
  return {e, m};
}
template <>
std::vector<SessionDeny> samples() {
  SessionDeny d{session()};
  d.reason = "key_not_listed";
  d.detail = "key not listed";
  SessionDeny m;
  m.client = "10.0.0.9:1";
  m.reason = "handshake_timeout";
  return {d, m};
}
template <>
std::vector<GrantAdd> samples() {
  return {GrantAdd{terms(), "incident 42", "bob", "carol"},
          GrantAdd{{.grant_id = "g", .who = "a", .to = "10.0.0.1/32", .expires = "2026-12-01T12:00:00Z"},
                   "r",
                   "",
                   "x"}};
}
template <>
std::vector<GrantRevoke> samples() {
  GrantRevoke signed_revoke{signed_terms(), signer()};
  signed_revoke.reason = "incident over";
  signed_revoke.actor = "carol";
  return {GrantRevoke{terms(), {}, "done", "carol"}, GrantRevoke{{.grant_id = "g"}, {}, "", "carol"},
          signed_revoke};
}
template <>
std::vector<GrantRequest> samples() {
  GrantRequest full{signed_terms(), signer()};
  full.actor = "carol";
  full.reason = "kernel patch INC-42";
  full.status = "active";
  full.break_glass = true;
  full.review_due = "2026-12-02T12:00:00Z";
  GrantRequest m{{.grant_id = "g", .who = "a", .from = "10.0.0.0/8", .to = "10.0.0.1/32", .rule = "r"},
                 {.signer = "a", .key_fingerprint = "SHA256:a"}};
  m.status = "pending";
  return {full, m};
}
template <>
std::vector<GrantApprove> samples() {
  GrantApprove full{signed_terms(), signer()};
  full.actor = "carol";
  full.status = "active";
  GrantApprove m{{.grant_id = "g"}, {.signer = "b", .key_fingerprint = "SHA256:b"}};
  m.status = "pending";
  return {full, m};
}
template <>
std::vector<GrantDeny> samples() {
  GrantDeny full{signed_terms(), signer()};
  full.actor = "carol";
  full.reason = "not during the freeze";
  return {full, GrantDeny{{.grant_id = "g"}, {.signer = "b", .key_fingerprint = "SHA256:b"}}};
}
template <>
std::vector<GrantReview> samples() {
  GrantReview full{signed_terms(), signer()};
  full.actor = "carol";
  full.note = "justified: relay outage INC-7";
  return {full, GrantReview{{.grant_id = "g"}, {.signer = "b", .key_fingerprint = "SHA256:b"}}};
}
template <>
std::vector<GrantReject> samples() {
  GrantReject full{signed_terms(),
                   {.key_fingerprint = "SHA256:alice", .os_user = "alice", .signer_host = "lap"}};
  full.reason = "bad_signature";
  full.detail = "request signature does not verify";
  GrantReject m{{.grant_id = "g"}, {}};
  m.reason = "unknown_rule";
  return {full, m};
}
template <>
std::vector<GrantExpire> samples() {
  return {GrantExpire{terms()}, GrantExpire{{.grant_id = "g"}, ""}};
}
template <>
std::vector<FlowOpen> samples() {
  return {FlowOpen{flow(), "bypass_approved", "g-1", "2026-12-01T11:00:00.001Z", true, true},
          FlowOpen{.flow = flow(), .tag = "proxied"}};
}
template <>
std::vector<FlowClose> samples() {
  return {FlowClose{flow(), "bypass_expired", "g-1", 1, 2, 3, 4, "2026-12-01T11:00:00.001Z",
                    "2026-12-01T11:00:09.001Z", "rst", false},
          FlowClose{.flow = flow(), .tag = "bypass_unapproved", .end = "fin"}};
}
template <>
std::vector<FlowCut> samples() {
  return {
      FlowCut{flow(), "bypass_expired", "grant_expired", "g-1", "2026-12-01T11:00:00.001Z", 5, 6, 7, 8, true},
      FlowCut{.flow = flow(), .tag = "bypass_unapproved", .reason = "unapproved"}};
}
template <>
std::vector<PolicyPush> samples() {
  return {
      PolicyPush{"alice@ops", "policy.yaml", "sha256:00ff", 1234, "etcd://127.0.0.1:2379/sshring/", 42, 41},
      PolicyPush{
          .actor = "ci", .digest = "sha256:ab", .size = 1, .store = "etcd://e:1/p/", .etcd_revision = 2}};
}
template <>
std::vector<RelayHandover> samples() {
  return {RelayHandover{"sent", 10, 2, 4242}, RelayHandover{.side = "received"}};
}
template <>
std::vector<PolicyReload> samples() {
  return {PolicyReload{"failure", "bad yaml", "3"}, PolicyReload{}};
}
template <>
std::vector<LogRotate> samples() {
  return {LogRotate{"relay.audit.jsonl.20261201T000000Z"}};
}
template <>
std::vector<LogRecover> samples() {
  return {LogRecover{7, 3, "{\"ts", "not valid JSON", "after seq 4"}, LogRecover{}};
}
template <>
std::vector<LogReopen> samples() {
  return {LogReopen{"replaced", "a.jsonl.replaced.20261201T000000Z", 99}, LogReopen{"deleted", "", 0}};
}
template <>
std::vector<LogGap> samples() {
  return {LogGap{5, "2026-12-01T11:00:00.001Z", "2026-12-01T11:00:01.001Z", "write: No space left on device"},
          LogGap{1, "", "", ""}};
}
template <>
std::vector<Checkpoint> samples() {
  return {Checkpoint{"relay@h", "SHA256:x", std::string(86, 'A'), 1000, 60, true}};
}

template <class T>
class AuditTypesTest : public ::testing::Test {};
using AllTypes = ::testing::Types<SessionStart, SessionEnd, SessionDeny, GrantAdd, GrantRevoke, GrantExpire,
                                  GrantRequest, GrantApprove, GrantDeny, GrantReview, GrantReject, FlowOpen,
                                  FlowClose, FlowCut, PolicyPush, RelayHandover, PolicyReload, LogRotate,
                                  LogRecover, LogReopen, LogGap, Checkpoint>;
TYPED_TEST_SUITE(AuditTypesTest, AllTypes);

TYPED_TEST(AuditTypesTest, RoundTripsThroughTheLogAndTheReader) {
  TempDir dir;
  auto all = samples<TypeParam>();
  {
    AuditLog log({.path = dir.file("a.jsonl"), .component = "relay", .fsync_each = true});
    for (const auto& r : all) log.append(r);
  }
  std::istringstream in(read_file(dir.file("a.jsonl")));
  std::string line;
  size_t i = 0;
  while (std::getline(in, line)) {
    ASSERT_LT(i, all.size());
    std::string err;
    auto rec = parse_record(line, &err);
    ASSERT_TRUE(rec) << err << ": " << line;
    EXPECT_EQ(rec->type, TypeParam::kType);
    auto back = record_as<TypeParam>(*rec);
    ASSERT_TRUE(back);
    EXPECT_EQ(back->to_json(), all[i].to_json()) << line;
    // Another type's view of it is refused.
    if (std::string(TypeParam::kType) != SessionEnd::kType) {
      EXPECT_FALSE(record_as<SessionEnd>(*rec));
    }
    ++i;
  }
  EXPECT_EQ(i, all.size());
}

// The reader's type list and the typed structs agree.
TEST(AuditTypesListTest, EveryRecordTypeHasAStruct) {
  std::set<std::string> structs = {
      SessionStart::kType,  SessionEnd::kType,   SessionDeny::kType,  GrantAdd::kType,     GrantRevoke::kType,
      GrantExpire::kType,   FlowOpen::kType,     FlowClose::kType,    FlowCut::kType,      PolicyPush::kType,
      RelayHandover::kType, PolicyReload::kType, LogRotate::kType,    LogRecover::kType,   LogReopen::kType,
      LogGap::kType,        Checkpoint::kType,   GrantRequest::kType, GrantApprove::kType, GrantDeny::kType,
      GrantReview::kType,   GrantReject::kType};
  std::set<std::string> listed(std::begin(kRecordTypes), std::end(kRecordTypes));
  EXPECT_EQ(structs, listed);
}

}  // namespace
}  // namespace sshring::metrics
