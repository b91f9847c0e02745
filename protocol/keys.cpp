#include "protocol/keys.h"

#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/base64.h"
#include "common/error.h"
#include "protocol/wire.h"

namespace sshring::protocol {
namespace {

constexpr std::string_view kBegin = "-----BEGIN OPENSSH PRIVATE KEY-----";
constexpr std::string_view kEnd = "-----END OPENSSH PRIVATE KEY-----";
constexpr std::string_view kAuthMagic{"openssh-key-v1\0", 15};
constexpr size_t kMaxKeyFile = size_t{16} * 1024;

[[noreturn]] void bad_key(std::string_view source, std::string_view what) {
  throw common::UsageError("key file " + std::string(source) + ": " + std::string(what) +
                           " (expected an unencrypted OpenSSH ed25519 key: ssh-keygen -t ed25519 -N '')");
}

}  // namespace

std::string ed25519_key_blob(const Ed25519PublicKey& key) {
  Writer w;
  w.str32(kSshEd25519);
  w.str32(std::string_view(reinterpret_cast<const char*>(key.data()), key.size()));
  return w.take();
}

std::optional<Ed25519PublicKey> parse_ed25519_key_blob(std::string_view blob) {
  Reader r(blob);
  auto type = r.str32(32);
  auto raw = r.str32(32);
  if (!r.done() || type != kSshEd25519 || raw.size() != 32) return std::nullopt;
  Ed25519PublicKey k;
  std::memcpy(k.data(), raw.data(), 32);
  return k;
}

std::optional<Ed25519PublicKey> parse_openssh_public_key(std::string_view line) {
  while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
  if (line.substr(0, kSshEd25519.size()) != kSshEd25519) return std::nullopt;
  line.remove_prefix(kSshEd25519.size());
  if (line.empty() || (line.front() != ' ' && line.front() != '\t')) return std::nullopt;
  while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
  auto end = line.find_first_of(" \t\r\n");
  auto b64 = line.substr(0, end);
  if (b64.size() > 128) return std::nullopt;
  auto blob = common::base64_decode(b64);
  if (!blob) return std::nullopt;
  return parse_ed25519_key_blob(*blob);
}

std::string format_openssh_public_key(const Ed25519PublicKey& key, std::string_view comment) {
  std::string s = std::string(kSshEd25519) + " " + common::base64_encode(ed25519_key_blob(key));
  if (!comment.empty()) s += " " + std::string(comment);
  return s;
}

std::string ssh_fingerprint(std::string_view blob) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(blob.data()), blob.size(), md);
  return "SHA256:" +
         common::base64_encode(std::string_view(reinterpret_cast<const char*>(md), sizeof md), false);
}

std::string fingerprint(const Ed25519PublicKey& key) {
  return ssh_fingerprint(ed25519_key_blob(key));
}

Pkey ed25519_public_pkey(const Ed25519PublicKey& key) {
  return Pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, key.data(), key.size()));
}

bool ed25519_verify(EVP_PKEY* key, std::string_view data, std::string_view signature) {
  if (key == nullptr || signature.size() != 64) return false;
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key) != 1) return false;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                          signature.size(), reinterpret_cast<const unsigned char*>(data.data()),
                          data.size()) == 1;
}

bool ed25519_verify(const Ed25519PublicKey& key, std::string_view data, std::string_view signature) {
  Pkey pk = ed25519_public_pkey(key);
  return ed25519_verify(pk.get(), data, signature);
}

void random_bytes(uint8_t* out, size_t n) {
  if (RAND_bytes(out, static_cast<int>(n)) != 1) throw std::runtime_error("RAND_bytes failed");
}

Ed25519PrivateKey Ed25519PrivateKey::from_seed(const std::array<uint8_t, 32>& seed) {
  Ed25519PrivateKey k;
  k.key_.reset(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed.data(), seed.size()));
  size_t len = k.public_.size();
  if (!k.key_ || EVP_PKEY_get_raw_public_key(k.key_.get(), k.public_.data(), &len) != 1 || len != 32)
    throw std::runtime_error("Ed25519 key setup failed");
  return k;
}

Ed25519PrivateKey Ed25519PrivateKey::generate() {
  std::array<uint8_t, 32> seed;
  random_bytes(seed.data(), seed.size());
  return from_seed(seed);
}

Ed25519Signature Ed25519PrivateKey::sign(std::string_view data) const {
  Ed25519Signature sig{};
  MdCtx ctx(EVP_MD_CTX_new());
  size_t len = sig.size();
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1 ||
      EVP_DigestSign(ctx.get(), sig.data(), &len, reinterpret_cast<const unsigned char*>(data.data()),
                     data.size()) != 1 ||
      len != sig.size())
    throw std::runtime_error("Ed25519 signing failed");
  return sig;
}

Ed25519PrivateKey Ed25519PrivateKey::from_openssh(std::string_view pem, std::string_view source) {
  if (pem.size() > kMaxKeyFile) bad_key(source, "too large");
  auto b = pem.find(kBegin);
  auto e = pem.find(kEnd);
  if (b == std::string_view::npos || e == std::string_view::npos || e < b)
    bad_key(source, "no OPENSSH PRIVATE KEY block");
  std::string body;  // the PEM body wraps its base64 over lines
  for (char c : pem.substr(b + kBegin.size(), e - b - kBegin.size()))
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') body.push_back(c);
  auto raw = common::base64_decode(body);
  if (!raw) bad_key(source, "bad base64");
  Reader r(*raw);
  if (r.bytes(kAuthMagic.size()) != kAuthMagic) bad_key(source, "not openssh-key-v1");
  auto cipher = r.str32(64);
  auto kdf = r.str32(64);
  r.str32(1024);  // kdf options
  uint32_t nkeys = r.u32();
  if (!r.ok()) bad_key(source, "truncated header");
  if (cipher != "none" || kdf != "none") bad_key(source, "the key is encrypted (use ssh-agent for it)");
  if (nkeys != 1) bad_key(source, "expected exactly one key");
  auto pub_blob = r.str32(1024);
  auto priv = r.str32(kMaxKeyFile);
  if (!r.ok()) bad_key(source, "truncated");
  auto pub = parse_ed25519_key_blob(pub_blob);
  if (!pub) bad_key(source, "not an ed25519 key");
  Reader p(priv);
  uint32_t check1 = p.u32();
  uint32_t check2 = p.u32();
  auto type = p.str32(64);
  auto pk = p.str32(64);
  auto sk = p.str32(128);  // seed || public key
  if (!p.ok() || check1 != check2) bad_key(source, "corrupt private section");
  if (type != kSshEd25519 || pk.size() != 32 || sk.size() != 64) bad_key(source, "not an ed25519 key");
  if (std::memcmp(pk.data(), pub->data(), 32) != 0 || std::memcmp(sk.data() + 32, pub->data(), 32) != 0)
    bad_key(source, "public and private parts disagree");
  std::array<uint8_t, 32> seed;
  std::memcpy(seed.data(), sk.data(), 32);
  Ed25519PrivateKey k = from_seed(seed);
  OPENSSL_cleanse(seed.data(), seed.size());
  if (k.public_ != *pub) bad_key(source, "the private key does not match its public key");
  return k;
}

Ed25519PrivateKey Ed25519PrivateKey::load_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw common::UsageError("cannot read key file " + path + " (check --identity)");
  std::string content;
  content.resize(kMaxKeyFile + 1);
  in.read(content.data(), static_cast<std::streamsize>(content.size()));
  content.resize(static_cast<size_t>(in.gcount()));
  Ed25519PrivateKey k = from_openssh(content, path);
  OPENSSL_cleanse(content.data(), content.size());
  return k;
}

std::string Ed25519PrivateKey::to_openssh(std::string_view comment) const {
  std::array<uint8_t, 32> seed;
  size_t len = seed.size();
  if (EVP_PKEY_get_raw_private_key(key_.get(), seed.data(), &len) != 1)
    throw std::runtime_error("Ed25519 export failed");
  std::string pk(reinterpret_cast<const char*>(public_.data()), 32);
  Writer priv;
  uint32_t check;
  random_bytes(reinterpret_cast<uint8_t*>(&check), sizeof(check));
  priv.u32(check);
  priv.u32(check);
  priv.str32(kSshEd25519);
  priv.str32(pk);
  priv.str32(std::string(reinterpret_cast<const char*>(seed.data()), 32) + pk);
  priv.str32(comment);
  for (uint8_t pad = 1; priv.size() % 8 != 0; ++pad) priv.u8(pad);
  Writer w;
  w.bytes(kAuthMagic);
  w.str32("none");
  w.str32("none");
  w.str32("");
  w.u32(1);
  w.str32(ed25519_key_blob(public_));
  w.str32(priv.data());
  std::string b64 = common::base64_encode(w.data());
  std::string out = std::string(kBegin) + "\n";
  for (size_t i = 0; i < b64.size(); i += 70) out += b64.substr(i, 70) + "\n";
  out += std::string(kEnd) + "\n";
  OPENSSL_cleanse(seed.data(), seed.size());
  return out;
}

}  // namespace sshring::protocol
