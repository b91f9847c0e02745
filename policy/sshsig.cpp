#include "policy/sshsig.h"

#include <openssl/sha.h>

#include <array>
#include <cstring>
#include <memory>

#include "common/base64.h"
#include "common/error.h"
#include "protocol/keys.h"
#include "protocol/wire.h"

namespace sshring::policy {
namespace {

constexpr std::string_view kMagic = "SSHSIG";
constexpr std::string_view kBegin = "-----BEGIN SSH SIGNATURE-----";
constexpr std::string_view kEnd = "-----END SSH SIGNATURE-----";
constexpr uint32_t kVersion = 1;
using protocol::kSshEd25519;

std::string hash(std::string_view alg, std::string_view message) {
  if (alg == "sha256") {
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(message.data()), message.size(), md);
    return std::string(reinterpret_cast<const char*>(md), sizeof md);
  }
  unsigned char md[SHA512_DIGEST_LENGTH];
  SHA512(reinterpret_cast<const unsigned char*>(message.data()), message.size(), md);
  return std::string(reinterpret_cast<const char*>(md), sizeof md);
}

std::string signed_data(std::string_view ns, std::string_view alg, std::string_view message) {
  protocol::Writer d;
  d.bytes(kMagic);
  d.str32(ns);
  d.str32("");
  d.str32(alg);
  d.str32(hash(alg, message));
  return d.take();
}

std::optional<Sshsig> fail(std::string* why, std::string_view what) {
  if (why) *why = std::string(what);
  return std::nullopt;
}

// The base64 body between the armor lines, whitespace removed.
std::optional<std::string> unarmor(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.remove_suffix(1);
  if (!text.starts_with(kBegin) || !text.ends_with(kEnd)) return std::nullopt;
  text = text.substr(kBegin.size(), text.size() - kBegin.size() - kEnd.size());
  std::string b64;
  for (char c : text) {
    if (c == '\n' || c == '\r') continue;
    b64 += c;
  }
  return common::base64_decode(b64);
}

}  // namespace

std::string sshsig_signed_data(std::string_view ns, std::string_view message) {
  return signed_data(ns, "sha512", message);
}

std::optional<Sshsig> sshsig_parse(std::string_view armored, std::string* why) {
  if (armored.size() > kMaxSshsigArmorBytes) return fail(why, "signature longer than 2048 bytes");
  auto blob = unarmor(armored);
  if (!blob) return fail(why, "not an armored SSH SIGNATURE (BEGIN/END lines, base64 body)");
  protocol::Reader r(*blob);
  if (r.bytes(kMagic.size()) != kMagic) return fail(why, "missing SSHSIG magic");
  if (r.u32() != kVersion) return fail(why, "unsupported SSHSIG version");
  std::string_view key_blob = r.str32(256);
  Sshsig s;
  s.ns = std::string(r.str32(256));
  std::string_view reserved = r.str32(256);
  s.hash_alg = std::string(r.str32(64));
  std::string_view sig = r.str32(256);
  if (!r.done()) return fail(why, "truncated or trailing data in SSHSIG blob");
  if (!reserved.empty()) return fail(why, "reserved field not empty");
  if (s.hash_alg != "sha512" && s.hash_alg != "sha256")
    return fail(why, "hash algorithm must be sha512 or sha256");
  auto raw = protocol::parse_ed25519_key_blob(key_blob);
  if (!raw) return fail(why, "signing key is not ssh-ed25519");
  s.key = ed25519_key(*raw);
  protocol::Reader sr(sig);
  std::string_view st = sr.str32(64);
  std::string_view sraw = sr.str32(128);
  if (!sr.done() || st != kSshEd25519 || sraw.size() != 64) return fail(why, "signature is not ssh-ed25519");
  s.raw_sig = std::string(sraw);
  return s;
}

bool ed25519_verify_raw(const PublicKey& key, std::string_view data, std::string_view sig64) {
  return protocol::ed25519_verify(key.ed25519, data, sig64);
}

std::optional<PublicKey> sshsig_verify(std::string_view armored, std::string_view ns,
                                       std::string_view message, std::string* why) {
  auto s = sshsig_parse(armored, why);
  if (!s) return std::nullopt;
  if (s->ns != ns) {
    if (why) *why = "signature namespace '" + s->ns.substr(0, 64) + "' is not '" + std::string(ns) + "'";
    return std::nullopt;
  }
  if (!ed25519_verify_raw(s->key, signed_data(ns, s->hash_alg, message), s->raw_sig)) {
    if (why) *why = "signature does not verify";
    return std::nullopt;
  }
  return s->key;
}

std::string sshsig_sign(const SshsigSigner& signer, std::string_view ns, std::string_view message) {
  std::string raw = signer.sign_raw(sshsig_signed_data(ns, message));
  if (raw.size() != 64) throw common::UsageError("signer returned a signature of the wrong size");
  protocol::Writer sig;
  sig.str32(kSshEd25519);
  sig.str32(raw);
  protocol::Writer blob;
  blob.bytes(kMagic);
  blob.u32(kVersion);
  blob.str32(signer.key.blob);
  blob.str32(ns);
  blob.str32("");
  blob.str32("sha512");
  blob.str32(sig.data());
  std::string b64 = common::base64_encode(blob.data());
  std::string out = std::string(kBegin) + "\n";
  for (size_t i = 0; i < b64.size(); i += 70) out += b64.substr(i, 70) + "\n";
  return out + std::string(kEnd) + "\n";
}

}  // namespace sshring::policy
