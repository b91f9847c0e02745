// Grant audit records built from policy's types: each one goes through the real log and the reader
// (parse_record checks the type's required fields) and reads back, typed, with the grant's terms, its
// signer and the type's own fields.
#include <gtest/gtest.h>

#include <sstream>

#include "bridge/grant_records.h"
#include "metrics/audit.h"
#include "metrics/audit_record.h"
#include "tests/support/process.h"

namespace sshring::bridge {
namespace {

using sshring::testing::read_file;
using sshring::testing::TempDir;

policy::SignedGrant grant() {
  policy::SignedGrant g;
  g.request.id = "g-0123456789ab";
  g.request.who = "alice";
  g.request.from = *policy::Cidr::parse("10.9.0.0/24");
  g.request.to = *policy::Cidr::parse("10.1.2.3/32");
  g.request.ports = *policy::PortSet::parse("22,2222");
  g.request.rule = "prod-direct";
  g.request.ttl_seconds = 3600;
  g.request.reason = "kernel patch INC-42";
  g.request.created = 1'800'000'000;
  g.request.requester = "alice";
  g.request.os_user = "mallory";
  g.request.host = "laptop";
  return g;
}

const GrantActor kCarol{"carol", "SHA256:carol", "carol", "sec-desk"};

// Appends `body` to a fresh log and parses the line back.
metrics::AuditRecord through_the_log(const nlohmann::json& body) {
  TempDir dir;
  {
    metrics::AuditLog log({.path = dir.file("a.jsonl"), .component = "grant", .fsync_each = true});
    log.append(body);
  }
  std::istringstream in(read_file(dir.file("a.jsonl")));
  std::string line;
  std::getline(in, line);
  std::string err;
  auto rec = metrics::parse_record(line, &err);
  EXPECT_TRUE(rec) << err << ": " << line;
  return rec ? *rec : metrics::AuditRecord{};
}

void expect_terms(const metrics::GrantTerms& t) {
  EXPECT_EQ(t.grant_id, "g-0123456789ab");
  EXPECT_EQ(t.who, "alice");
  EXPECT_EQ(t.from, "10.9.0.0/24");
  EXPECT_EQ(t.to, "10.1.2.3/32");
  EXPECT_EQ(t.ports, (std::vector<uint16_t>{22, 2222}));
  EXPECT_EQ(t.rule, "prod-direct");
  EXPECT_EQ(t.ttl_seconds, std::optional<uint64_t>(3600));
  EXPECT_EQ(t.requester, "alice");
}

void expect_carol(const metrics::GrantSigner& s) {
  EXPECT_EQ(s.signer, "carol");
  EXPECT_EQ(s.key_fingerprint, "SHA256:carol");
  EXPECT_EQ(s.os_user, "carol");
  EXPECT_EQ(s.signer_host, "sec-desk");
}

TEST(GrantRecords, RequestUnderABreakGlassRuleCarriesItsReviewDeadline) {
  policy::CheckedGrant chk;
  chk.object = grant();
  chk.status = policy::GrantStatus::kActive;
  chk.break_glass = true;
  chk.activated = true;
  chk.review_due = 1'800'086'400;
  auto rec = through_the_log(grant_request_record(chk, kCarol).to_json());
  auto r = metrics::record_as<metrics::GrantRequest>(rec);
  ASSERT_TRUE(r);
  expect_terms(*r);
  expect_carol(*r);
  EXPECT_EQ(r->actor, "carol");
  EXPECT_EQ(r->reason, "kernel patch INC-42");
  EXPECT_EQ(r->status, "active");
  EXPECT_EQ(r->break_glass, std::optional<bool>(true));
  EXPECT_EQ(r->review_due, "2027-01-16T08:00:00Z");
  // The envelope's host is the writer's, not the one recorded beside the signature.
  EXPECT_NE(rec.host, "sec-desk");

  // A pending request has no deadline yet; an ordinary rule writes no break_glass at all.
  chk.activated = false;
  chk.status = policy::GrantStatus::kPending;
  EXPECT_FALSE(grant_request_record(chk, kCarol).to_json().contains("review_due"));
  chk.break_glass = false;
  EXPECT_FALSE(grant_request_record(chk, kCarol).to_json().contains("break_glass"));
}

TEST(GrantRecords, DecisionsCarryTermsSignerAndTheirOwnField) {
  const auto g = grant();
  auto a = metrics::record_as<metrics::GrantApprove>(
      through_the_log(grant_approve_record(g, kCarol, "active").to_json()));
  ASSERT_TRUE(a);
  expect_terms(*a);
  expect_carol(*a);
  EXPECT_EQ(a->status, "active");

  auto d = metrics::record_as<metrics::GrantDeny>(
      through_the_log(grant_deny_record(g, kCarol, "not in the freeze").to_json()));
  ASSERT_TRUE(d);
  expect_terms(*d);
  expect_carol(*d);
  EXPECT_EQ(d->reason, "not in the freeze");

  auto rv = metrics::record_as<metrics::GrantReview>(
      through_the_log(grant_review_record(g, kCarol, "justified").to_json()));
  ASSERT_TRUE(rv);
  expect_terms(*rv);
  expect_carol(*rv);
  EXPECT_EQ(rv->note, "justified");

  auto rk = metrics::record_as<metrics::GrantRevoke>(
      through_the_log(grant_revoke_record(g, kCarol, "incident over").to_json()));
  ASSERT_TRUE(rk);
  expect_terms(*rk);
  expect_carol(*rk);
  EXPECT_EQ(rk->reason, "incident over");
  EXPECT_EQ(rk->actor, "carol");
}

TEST(GrantRecords, RejectNamesTheReasonAndTheRequesterAsRecorded) {
  policy::CheckedGrant c;
  c.object = grant();
  c.reject_reason = "bad_signature";
  c.detail = "request signature does not verify";
  c.requester_fingerprint = "SHA256:alice";
  auto r = metrics::record_as<metrics::GrantReject>(through_the_log(grant_reject_record(c).to_json()));
  ASSERT_TRUE(r);
  expect_terms(*r);
  EXPECT_EQ(r->actor, "system");
  EXPECT_EQ(r->reason, "bad_signature");
  EXPECT_EQ(r->detail, "request signature does not verify");
  EXPECT_EQ(r->signer, "");  // nobody signed a rejection
  EXPECT_EQ(r->key_fingerprint, "SHA256:alice");
  EXPECT_EQ(r->os_user, "mallory");
  EXPECT_EQ(r->signer_host, "laptop");
}

TEST(GrantRecords, ExpireNamesTheEndOfTheGrantOrOfItsPendingWindow) {
  policy::CheckedGrant c;
  c.object = grant();
  c.activated = true;
  c.terms.expires = 1'800'003'600;
  c.pending_until = 1'800'000'600;
  auto live = metrics::record_as<metrics::GrantExpire>(through_the_log(grant_expire_record(c).to_json()));
  ASSERT_TRUE(live);
  expect_terms(*live);
  EXPECT_EQ(live->actor, "system");
  EXPECT_EQ(live->expires, "2027-01-15T09:00:00Z");
  c.activated = false;
  EXPECT_EQ(grant_expire_record(c).expires, "2027-01-15T08:10:00Z");
}

}  // namespace
}  // namespace sshring::bridge
