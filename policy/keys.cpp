#include "policy/keys.h"

#include "common/base64.h"
#include "common/error.h"
#include "protocol/keys.h"
#include "protocol/wire.h"

namespace sshring::policy {
namespace {

[[noreturn]] void bad(std::string_view why) {
  throw common::UsageError(std::string(why));
}

}  // namespace

PublicKey ed25519_key(const std::array<uint8_t, 32>& raw, std::string_view comment) {
  PublicKey k;
  k.type = protocol::kSshEd25519;
  k.ed25519 = raw;
  k.blob = protocol::ed25519_key_blob(raw);
  k.comment = comment;
  k.fingerprint = protocol::ssh_fingerprint(k.blob);
  k.line = protocol::format_openssh_public_key(raw, comment);
  return k;
}

PublicKey parse_authorized_key(std::string_view line) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
      s.remove_suffix(1);
    return s;
  };
  line = trim(line);
  if (line.size() > 4096) bad("key line longer than 4096 characters");
  if (line.empty()) bad("empty key; expected \"ssh-ed25519 AAAA... comment\"");
  auto sp = line.find_first_of(" \t");
  std::string_view type = line.substr(0, sp);
  if (type != protocol::kSshEd25519) {
    if (type.starts_with("ssh-") || type.starts_with("ecdsa-") || type.starts_with("sk-")) {
      bad("key type " + std::string(type) + " is not supported; only ssh-ed25519 keys are accepted");
    }
    bad("expected an authorized_keys line starting with ssh-ed25519 (options like from=... are not "
        "supported), got '" +
        std::string(type.substr(0, 40)) + "'");
  }
  if (sp == std::string_view::npos) bad("ssh-ed25519 key has no base64 key data");
  std::string_view rest = trim(line.substr(sp));
  auto sp2 = rest.find_first_of(" \t");
  std::string_view b64 = rest.substr(0, sp2);
  std::string_view comment = sp2 == std::string_view::npos ? std::string_view{} : trim(rest.substr(sp2));
  auto decoded = common::base64_decode(b64);
  if (!decoded) bad("ssh-ed25519 key data is not valid base64");
  protocol::Reader type_of(*decoded);
  if (type_of.str32(protocol::kSshEd25519.size()) != protocol::kSshEd25519 || !type_of.ok())
    bad("key data does not encode an ssh-ed25519 key");
  auto raw = protocol::parse_ed25519_key_blob(*decoded);
  if (!raw) bad("ssh-ed25519 key data must hold exactly one 32-byte public key");
  return ed25519_key(*raw, comment);
}

}  // namespace sshring::policy
