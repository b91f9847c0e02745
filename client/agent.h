// A minimal SSH agent client (draft-miller-ssh-agent / OpenSSH PROTOCOL.agent): list identities and
// ask for an Ed25519 signature over SSH_AUTH_SOCK. Client side only (blocking, with a timeout).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "protocol/keys.h"

namespace sshring::client {

class AgentClient {
 public:
  struct Identity {
    std::string blob;  // SSH wire key blob
    std::string comment;
  };

  // Connects to the agent socket. Throws common::UsageError when the path is empty ("SSH_AUTH_SOCK
  // is not set") and common::SystemError when the connect fails.
  explicit AgentClient(const std::string& socket_path,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Socket from the environment (SSH_AUTH_SOCK).
  static AgentClient from_env();

  // SSH_AGENTC_REQUEST_IDENTITIES. Throws std::runtime_error on protocol errors.
  std::vector<Identity> identities();
  // The Ed25519 keys among identities(), in agent order.
  std::vector<protocol::Ed25519PublicKey> ed25519_keys();
  // SSH_AGENTC_SIGN_REQUEST for an ssh-ed25519 key; returns the raw 64-byte signature. Throws
  // std::runtime_error when the agent refuses (e.g. the key is not loaded or confirmation denied).
  protocol::Ed25519Signature sign(const protocol::Ed25519PublicKey& key, std::string_view data);

 private:
  std::string request(const std::string& body);
  common::UniqueFd fd_;
  std::string path_;
};

}  // namespace sshring::client
