// Ed25519 keys the OpenSSH way: public key lines ("ssh-ed25519 AAAA... comment"), key blobs,
// "SHA256:..." fingerprints, unencrypted "openssh-key-v1" private key files, and OpenSSL (EVP)
// signing and verification. Every OpenSSL object is owned by a unique_ptr.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace sshring::protocol {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const noexcept { EVP_MD_CTX_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

using Ed25519PublicKey = std::array<uint8_t, 32>;
using Ed25519Signature = std::array<uint8_t, 64>;

inline constexpr std::string_view kSshEd25519 = "ssh-ed25519";

// SSH wire key blob: string "ssh-ed25519", string key.
std::string ed25519_key_blob(const Ed25519PublicKey& key);
// Parses a key blob; nullopt unless it is exactly an ssh-ed25519 blob.
std::optional<Ed25519PublicKey> parse_ed25519_key_blob(std::string_view blob);
// "ssh-ed25519 AAAA... [comment]" -> key. nullopt for other types or malformed lines.
std::optional<Ed25519PublicKey> parse_openssh_public_key(std::string_view line);
std::string format_openssh_public_key(const Ed25519PublicKey& key, std::string_view comment = {});
// "SHA256:" + unpadded base64 of SHA-256(blob), as ssh-keygen -l prints it: of any key blob, and of
// an Ed25519 key's.
std::string ssh_fingerprint(std::string_view blob);
std::string fingerprint(const Ed25519PublicKey& key);

// Verifies an Ed25519 signature. Never throws; false on any failure.
bool ed25519_verify(const Ed25519PublicKey& key, std::string_view data, std::string_view signature);
// Same with a prepared key (saves parsing the key on hot paths).
bool ed25519_verify(EVP_PKEY* key, std::string_view data, std::string_view signature);
Pkey ed25519_public_pkey(const Ed25519PublicKey& key);  // null on failure

// An Ed25519 private key (from a file, or generated for tests).
class Ed25519PrivateKey {
 public:
  // Parses an unencrypted OpenSSH private key file's content. Throws common::UsageError naming
  // `source` and what is wrong (encrypted, wrong type, corrupt).
  static Ed25519PrivateKey from_openssh(std::string_view pem, std::string_view source);
  static Ed25519PrivateKey load_file(const std::string& path);
  static Ed25519PrivateKey generate();
  // The 32-byte seed as a private key.
  static Ed25519PrivateKey from_seed(const std::array<uint8_t, 32>& seed);

  [[nodiscard]] const Ed25519PublicKey& public_key() const { return public_; }
  [[nodiscard]] Ed25519Signature sign(std::string_view data) const;
  // Serialises as an unencrypted openssh-key-v1 file (tests write key files with it).
  [[nodiscard]] std::string to_openssh(std::string_view comment = {}) const;

 private:
  Pkey key_;
  Ed25519PublicKey public_{};
};

// 16 random bytes from the OpenSSL DRBG (throws on failure; control plane).
void random_bytes(uint8_t* out, size_t n);

}  // namespace sshring::protocol
