// libFuzzer target for what a grant store hands a reader: an SSHSIG armored signature and a grant
// object (JSON). Any input parses or is refused without crashing, hanging or leaking; a parsed grant
// round-trips through JSON and its check against a fixed policy never throws. The first byte picks
// the parser so one corpus (grant_corpus/) seeds both.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "policy/grant.h"
#include "policy/parser.h"
#include "policy/sshsig.h"

namespace {

const sshring::policy::Policy& policy() {
  static const auto p = sshring::policy::parse_policy(
      "version: 1\n"
      "principals:\n"
      "  - {name: alice, roles: [sre], keys: [\"ssh-ed25519 "
      "AAAAC3NzaC1lZDI1NTE5AAAAIF3oFxm2mMPRtv6zr+/hoPQwOgi7+TTIJSHigB2Qf3Mg alice@laptop\"]}\n"
      "roles: [{name: sre, targets: [{cidrs: [10.1.0.0/16]}]}]\n"
      "opt_out:\n"
      "  - {id: ops, who: {roles: [sre]}, from: [10.9.0.0/16], to: {cidrs: [10.1.0.0/16]}, max_ttl: 4h,\n"
      "     approvals: {count: 1, roles: [sre]}, expires: 2099-01-01T00:00:00Z}\n",
      "fuzz-policy.yaml");
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sshring::policy;
  if (size < 1 || size > 70 * 1024) return 0;
  std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    std::string why;
    auto s = sshsig_parse(text, &why);
    if (s && s->raw_sig.size() != 64) __builtin_trap();
    (void)sshsig_verify(text, kGrantNamespace, "message", &why);
    return 0;
  }
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    SignedGrant g = signed_grant_from_json(j);
    if (!(signed_grant_from_json(signed_grant_to_json(g)) == g)) __builtin_trap();
    (void)check_grant(policy(), g, 1800000000, nullptr);
  } catch (const sshring::common::UsageError&) {
  }
  return 0;
}
