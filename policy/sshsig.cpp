#include "policy/sshsig.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <array>
#include <cstring>
#include <memory>

#include "common/base64.h"
#include "common/error.h"

namespace sshring::policy {
namespace {

constexpr std::string_view kMagic = "SSHSIG";
constexpr std::string_view kBegin = "-----BEGIN SSH SIGNATURE-----";
constexpr std::string_view kEnd = "-----END SSH SIGNATURE-----";
constexpr uint32_t kVersion = 1;
constexpr std::string_view kEd25519 = "ssh-ed25519";

void put_u32(std::string* out, uint32_t n) {
  char b[4] = {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
               static_cast<char>(n)};
  out->append(b, 4);
}
void put_string(std::string* out, std::string_view s) {
  put_u32(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

// Bounded reader over an SSH wire buffer: every failure turns ok() false and yields empty values.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  uint32_t u32() {
    if (!ok_ || in_.size() < 4) return fail(), 0;
    auto b = reinterpret_cast<const unsigned char*>(in_.data());
    uint32_t n = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
    in_.remove_prefix(4);
    return n;
  }
  std::string_view str(size_t limit) {
    uint32_t n = u32();
    if (!ok_ || n > limit || in_.size() < n) return fail(), std::string_view{};
    auto s = in_.substr(0, n);
    in_.remove_prefix(n);
    return s;
  }
  std::string_view raw(size_t n) {
    if (!ok_ || in_.size() < n) return fail(), std::string_view{};
    auto s = in_.substr(0, n);
    in_.remove_prefix(n);
    return s;
  }
  [[nodiscard]] bool ok() const { return ok_; }
  [[nodiscard]] bool done() const { return ok_ && in_.empty(); }

 private:
  void fail() { ok_ = false; }
  std::string_view in_;
  bool ok_ = true;
};

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
  std::string d(kMagic);
  put_string(&d, ns);
  put_string(&d, "");
  put_string(&d, alg);
  put_string(&d, hash(alg, message));
  return d;
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
  Reader r(*blob);
  if (r.raw(kMagic.size()) != kMagic) return fail(why, "missing SSHSIG magic");
  if (r.u32() != kVersion) return fail(why, "unsupported SSHSIG version");
  std::string_view key_blob = r.str(256);
  Sshsig s;
  s.ns = std::string(r.str(256));
  std::string_view reserved = r.str(256);
  s.hash_alg = std::string(r.str(64));
  std::string_view sig = r.str(256);
  if (!r.done()) return fail(why, "truncated or trailing data in SSHSIG blob");
  if (!reserved.empty()) return fail(why, "reserved field not empty");
  if (s.hash_alg != "sha512" && s.hash_alg != "sha256")
    return fail(why, "hash algorithm must be sha512 or sha256");
  Reader k(key_blob);
  std::string_view kt = k.str(64);
  std::string_view kraw = k.str(64);
  if (!k.done() || kt != kEd25519 || kraw.size() != 32) return fail(why, "signing key is not ssh-ed25519");
  std::array<uint8_t, 32> raw{};
  std::memcpy(raw.data(), kraw.data(), 32);
  s.key = ed25519_key(raw);
  Reader sr(sig);
  std::string_view st = sr.str(64);
  std::string_view sraw = sr.str(128);
  if (!sr.done() || st != kEd25519 || sraw.size() != 64) return fail(why, "signature is not ssh-ed25519");
  s.raw_sig = std::string(sraw);
  return s;
}

bool ed25519_verify_raw(const PublicKey& key, std::string_view data, std::string_view sig64) {
  if (sig64.size() != 64) return false;
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pk(
      EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, key.ed25519.data(), key.ed25519.size()),
      EVP_PKEY_free);
  if (!pk) return false;
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pk.get()) != 1) return false;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig64.data()), sig64.size(),
                          reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
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
  std::string blob(kMagic);
  put_u32(&blob, kVersion);
  put_string(&blob, signer.key.blob);
  put_string(&blob, ns);
  put_string(&blob, "");
  put_string(&blob, "sha512");
  std::string sig;
  put_string(&sig, kEd25519);
  put_string(&sig, raw);
  put_string(&blob, sig);
  std::string b64 = common::base64_encode(blob);
  std::string out = std::string(kBegin) + "\n";
  for (size_t i = 0; i < b64.size(); i += 70) out += b64.substr(i, 70) + "\n";
  return out + std::string(kEnd) + "\n";
}

}  // namespace sshring::policy
