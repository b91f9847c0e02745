// Audit signing keys: each writer signs its checkpoints with an Ed25519 key of its own (a PKCS#8 PEM
// file, created 0600 on first start); verifiers trust public keys given from outside the log, one line
// per writer in the spirit of OpenSSH's allowed_signers:
//   relay@bastion1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... [comment]
//   *              ssh-ed25519 AAAA...        (a fleet-wide key: any writer)
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sshring::metrics {

class AuditKey {
 public:
  // Loads the private key at `path`, or creates it (mode 0600, parent directories 0700) if the file
  // does not exist. Throws std::runtime_error naming the file and the fix on any other failure
  // (unreadable, not an Ed25519 key, group/other-readable).
  static AuditKey load_or_create(const std::string& path);
  // Loads an existing key (for `sshring audit key --pub`); throws if missing.
  static AuditKey load(const std::string& path);

  AuditKey(AuditKey&&) noexcept;
  AuditKey& operator=(AuditKey&&) noexcept;
  ~AuditKey();

  // Raw 64-byte Ed25519 signature over `msg`.
  [[nodiscard]] std::string sign(std::string_view msg) const;
  // "ssh-ed25519 BASE64" (the SSH wire blob), as in authorized_keys.
  [[nodiscard]] std::string public_line() const;
  // "SHA256:..." as `ssh-keygen -lf` prints it.
  [[nodiscard]] std::string fingerprint() const;

 private:
  struct Impl;
  explicit AuditKey(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The public half: 32 raw key bytes from an "ssh-ed25519 BASE64" pair.
struct AuditPublicKey {
  std::string raw;  // 32 bytes
  std::string fingerprint;
  // Checks a raw 64-byte signature.
  [[nodiscard]] bool verify(std::string_view msg, std::string_view sig) const;
};

// Parses "ssh-ed25519 BASE64"; nullopt and *error set otherwise.
std::optional<AuditPublicKey> parse_public_key(std::string_view type, std::string_view b64,
                                               std::string* error);

class TrustedKeys {
 public:
  // Parses a trusted-keys file (format above; '#' comments and blank lines allowed). Throws
  // std::runtime_error with FILE:LINE: on a bad line.
  static TrustedKeys load(const std::string& path);
  // Adds one entry (also used for keys listed in the policy's audit_keys).
  void add(const std::string& writer, AuditPublicKey key);
  // Keys trusted for `writer`: its own lines, then the `*` lines.
  [[nodiscard]] std::vector<const AuditPublicKey*> for_writer(const std::string& writer) const;
  [[nodiscard]] bool empty() const { return keys_.empty(); }

 private:
  std::multimap<std::string, AuditPublicKey> keys_;
};

}  // namespace sshring::metrics
