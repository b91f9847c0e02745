// authorized_keys parsing and fingerprints, checked against ssh-keygen on fresh keys.
#include <gtest/gtest.h>

#include "common/error.h"
#include "policy/keys.h"
#include "tests/policy/test_util.h"
#include "tests/support/process.h"

namespace sshring::policy {
namespace {

TEST(Keys, ParsesEd25519AndFingerprints) {
  PublicKey k = parse_authorized_key(std::string("  ") + testing::kAliceKey + " \r\n");
  EXPECT_EQ(k.type, "ssh-ed25519");
  EXPECT_EQ(k.comment, "alice@laptop");
  EXPECT_EQ(k.fingerprint, testing::kAliceFingerprint);
  EXPECT_EQ(k.line, testing::kAliceKey);
  EXPECT_EQ(k.blob.size(), 51u);  // string "ssh-ed25519" + string(32 bytes)
  PublicKey same = ed25519_key(k.ed25519, "alice@laptop");
  EXPECT_EQ(same, k);
  EXPECT_EQ(same.line, k.line);
  EXPECT_EQ(
      parse_authorized_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF3oFxm2mMPRtv6zr+/hoPQwOgi7+TTIJSHigB2Qf3Mg")
          .comment,
      "");
}

TEST(Keys, MatchesSshKeygen) {
  sshring::testing::TempDir dir;
  for (int i = 0; i < 3; ++i) {
    std::string key = dir.file("k" + std::to_string(i));
    ASSERT_EQ(sshring::testing::run(
                  {"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "c" + std::to_string(i), "-f", key}),
              0);
    std::string fp;
    ASSERT_EQ(sshring::testing::run({"ssh-keygen", "-lf", key + ".pub"}, &fp), 0);
    PublicKey k = parse_authorized_key(sshring::testing::read_file(key + ".pub"));
    EXPECT_NE(fp.find(k.fingerprint + " c" + std::to_string(i)), std::string::npos)
        << fp << " vs " << k.fingerprint;
  }
}

TEST(Keys, RejectsWithReasons) {
  struct Case {
    const char* line;
    const char* expected;
  } cases[] = {
      {"", "empty key"},
      {"ssh-rsa AAAAB3NzaC1yc2E", "key type ssh-rsa is not supported"},
      {"ecdsa-sha2-nistp256 AAAA", "key type ecdsa-sha2-nistp256 is not supported"},
      {"sk-ssh-ed25519@openssh.com AAAA", "is not supported"},
      {"command=\"x\" ssh-ed25519 AAAA", "options like from=... are not supported"},
      {"ssh-ed25519", "has no base64 key data"},
      {"ssh-ed25519 !!!!", "not valid base64"},
      {"ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ", "does not encode an ssh-ed25519 key"},
      {"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF3oFxm2mMPRtv6z", "exactly one 32-byte public key"},
  };
  for (const auto& c : cases) {
    try {
      parse_authorized_key(c.line);
      ADD_FAILURE() << c.line;
    } catch (const common::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << c.line << ": " << e.what();
    }
  }
}

}  // namespace
}  // namespace sshring::policy
