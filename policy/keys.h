// OpenSSH public keys as written in authorized_keys lines. Only ssh-ed25519 is accepted: the relay
// verifies preamble signatures with Ed25519, so any other key type could never authenticate.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace sshring::policy {

struct PublicKey {
  std::string type;                   // "ssh-ed25519"
  std::array<uint8_t, 32> ed25519{};  // raw public key bytes
  std::string blob;                   // SSH wire encoding (what the fingerprint hashes)
  std::string comment;                // "alice@laptop" (may be empty)
  std::string fingerprint;            // "SHA256:<base64 without padding>", as `ssh-keygen -lf` prints
  std::string line;                   // normalized authorized_keys line: "ssh-ed25519 AAAA... comment"
  bool operator==(const PublicKey& o) const { return blob == o.blob && comment == o.comment; }
};

// Parses one authorized_keys line ("ssh-ed25519 AAAA... comment"). Throws common::UsageError with
// what is wrong: options before the type, unsupported key types, bad base64, wrong blob layout.
PublicKey parse_authorized_key(std::string_view line);
// Builds the key from raw Ed25519 bytes (as the relay receives them).
PublicKey ed25519_key(const std::array<uint8_t, 32>& raw, std::string_view comment = {});

}  // namespace sshring::policy
