#include "policy/keys.h"

#include <openssl/sha.h>

#include <cstring>

#include "common/base64.h"
#include "common/error.h"

namespace sshring::policy {
namespace {

constexpr std::string_view kEd25519 = "ssh-ed25519";

void put_string(std::string* out, std::string_view s) {
  uint32_t n = static_cast<uint32_t>(s.size());
  char len[4] = {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                 static_cast<char>(n)};
  out->append(len, 4);
  out->append(s);
}

bool get_string(std::string_view* in, std::string_view* s) {
  if (in->size() < 4) return false;
  auto b = reinterpret_cast<const unsigned char*>(in->data());
  uint32_t n = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
  if (in->size() - 4 < n) return false;
  *s = in->substr(4, n);
  in->remove_prefix(4 + n);
  return true;
}

[[noreturn]] void bad(std::string_view why) {
  throw common::UsageError(std::string(why));
}

}  // namespace

std::string fingerprint_sha256(std::string_view blob) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(blob.data()), blob.size(), md);
  return "SHA256:" +
         common::base64_encode(std::string_view(reinterpret_cast<const char*>(md), sizeof md), false);
}

PublicKey ed25519_key(const std::array<uint8_t, 32>& raw, std::string_view comment) {
  PublicKey k;
  k.type = kEd25519;
  k.ed25519 = raw;
  put_string(&k.blob, kEd25519);
  put_string(&k.blob, std::string_view(reinterpret_cast<const char*>(raw.data()), raw.size()));
  k.comment = comment;
  k.fingerprint = fingerprint_sha256(k.blob);
  k.line = std::string(kEd25519) + " " + common::base64_encode(k.blob);
  if (!comment.empty()) k.line += " " + std::string(comment);
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
  if (type != kEd25519) {
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
  const std::string& blob = *decoded;
  std::string_view in = blob, t, raw;
  if (!get_string(&in, &t) || t != kEd25519) bad("key data does not encode an ssh-ed25519 key");
  if (!get_string(&in, &raw) || raw.size() != 32 || !in.empty()) {
    bad("ssh-ed25519 key data must hold exactly one 32-byte public key");
  }
  std::array<uint8_t, 32> bytes{};
  std::memcpy(bytes.data(), raw.data(), 32);
  return ed25519_key(bytes, comment);
}

}  // namespace sshring::policy
