// The client side of the preamble (`sshring connect`, tests, benchmarks): connect to the relay, send
// one signed HELLO, read exactly one reply frame and not a byte more, so whatever follows the OK
// (the target's SSH banner) stays in the socket for the SSH client. Blocking; control plane.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

#include "common/unique_fd.h"
#include "protocol/keys.h"
#include "protocol/preamble.h"

namespace sshring::client {

// Something that signs a transcript with an Ed25519 key: a key file or an ssh-agent.
struct Signer {
  protocol::Ed25519PublicKey public_key{};
  std::function<protocol::Ed25519Signature(std::string_view)> sign;
};
Signer file_signer(const std::string& key_path);
// Uses SSH_AUTH_SOCK. `select_pub`: optional public key file (.pub) or "ssh-ed25519 ..." line
// choosing the agent key; otherwise the agent's first ed25519 key. Throws UsageError when none.
Signer agent_signer(const std::string& select_pub = {});

// Builds a signed HELLO (fresh random nonce, current time).
protocol::Hello make_hello(const Signer& signer, std::string relay_id, std::string principal,
                           std::string target, uint16_t port, uint64_t now_ms);

// The relay said DENY.
// `s` with every byte outside printable ASCII replaced by '?' (text from the relay, shown to a user).
std::string printable_text(std::string_view s);

class DeniedError : public std::runtime_error {
 public:
  DeniedError(uint16_t reason, const std::string& message);
  [[nodiscard]] uint16_t reason() const { return reason_; }
  [[nodiscard]] const std::string& detail() const { return detail_; }  // printable ASCII only
  // 20 + reason, or kExitCodeBase + kMaxReason + 1 for codes this client does not know.
  [[nodiscard]] int exit_code() const;

 private:
  uint16_t reason_;
  std::string detail_;
};

// For a DENY the user can fix on the client side: the line that says how (empty when there is none).
// wrong_relay: the relay names its id (docs/protocol.md, "this relay's id is 'ID'"), so the hint says
// which --relay-id to pass instead of `sent_relay_id`.
std::string deny_hint(const DeniedError& e, const std::string& sent_relay_id);

struct ConnectOptions {
  std::string relay;      // "HOST:PORT" ("[v6]:PORT"); HOST may be a name
  std::string relay_id;   // empty: HOST of `relay`
  std::string principal;  // empty: the login name
  std::string target;
  uint16_t port = 22;
  std::chrono::milliseconds timeout{15000};  // connect + handshake
};

struct Connected {
  common::UniqueFd fd;  // blocking TCP socket, positioned right after the OK frame
  uint64_t session_id = 0;
};

// The relay id the HELLO is signed for: --relay-id, else the HOST of --relay.
std::string effective_relay_id(const ConnectOptions& opts);

// Sends the HELLO on an already connected socket and reads the reply frame. Throws DeniedError,
// std::runtime_error (protocol / IO) or common::SystemError.
uint64_t handshake_on(int fd, const protocol::Hello& hello, std::chrono::milliseconds timeout);
// Resolves and connects to the relay, then handshake_on(). Throws like it, plus UsageError.
Connected connect_via_relay(const ConnectOptions& opts, const Signer& signer);

// Splits "HOST:PORT" / "[V6]:PORT". Throws UsageError naming `what`.
std::pair<std::string, uint16_t> split_host_port(const std::string& text, std::string_view what);
// $USER, else the passwd entry of the real uid.
std::string login_name();
uint64_t unix_ms_now();

// Hands `fd` to the process at the other end of the Unix socket `channel` (ssh's ProxyUseFdpass:
// one data byte plus SCM_RIGHTS). Throws SystemError.
void send_fd(int channel, int fd);
// Copies stdin -> sock and sock -> stdout until the socket closes; half-closes the socket when stdin
// ends. Returns 0, or 1 on an I/O error (printed to stderr).
int pump_stdio(int sock, int in_fd = 0, int out_fd = 1);

}  // namespace sshring::client
