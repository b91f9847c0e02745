// OpenSSH signatures ("SSHSIG", PROTOCOL.sshsig): what `ssh-keygen -Y sign -n NAMESPACE` writes and
// `ssh-keygen -Y verify` checks. Grants are signed in this format so anyone can check a grant's
// signatures with stock OpenSSH tools (docs/policy.md shows how).
//
// A signer signs the "signed data" blob, never the message itself:
//   "SSHSIG" || string namespace || string reserved("") || string hash_alg || string H(message)
// and the armored signature carries
//   "SSHSIG" || uint32 version(1) || string public_key || string namespace || string reserved
//          || string hash_alg || string signature(string "ssh-ed25519" || string raw[64])
// Only ssh-ed25519 keys, hash sha512 (what ssh-keygen uses) or sha256. Parsing is strict and bounded:
// the armored text is untrusted input (tests/policy/sshsig_fuzz_test.cpp).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "policy/keys.h"

namespace sshring::policy {

inline constexpr std::string_view kGrantNamespace = "sshring-grant@v1";
inline constexpr size_t kMaxSshsigArmorBytes = 2048;  // an Ed25519 SSHSIG armors to about 300 bytes

// The blob the signer signs (hash sha512).
std::string sshsig_signed_data(std::string_view ns, std::string_view message);

struct Sshsig {
  PublicKey key;
  std::string ns;
  std::string hash_alg;
  std::string raw_sig;  // 64 bytes
};

// Parses "-----BEGIN SSH SIGNATURE-----\n...\n-----END SSH SIGNATURE-----". Never throws; on error
// returns nullopt and says what is wrong in *why.
std::optional<Sshsig> sshsig_parse(std::string_view armored, std::string* why);

// Parses and checks `armored` over `message` in namespace `ns`. Returns the signing key, or nullopt
// with the reason in *why. Never throws.
std::optional<PublicKey> sshsig_verify(std::string_view armored, std::string_view ns,
                                       std::string_view message, std::string* why);

// A signing key held elsewhere (ssh-agent, a key file): `sign_raw` returns the raw 64-byte Ed25519
// signature of the bytes it is given, or throws.
struct SshsigSigner {
  PublicKey key;
  std::function<std::string(std::string_view data)> sign_raw;
};

// Signs `message` and returns the armored signature (as ssh-keygen -Y sign writes it).
std::string sshsig_sign(const SshsigSigner& signer, std::string_view ns, std::string_view message);

// Raw Ed25519 verification with OpenSSL. Never throws.
bool ed25519_verify_raw(const PublicKey& key, std::string_view data, std::string_view sig64);

}  // namespace sshring::policy
