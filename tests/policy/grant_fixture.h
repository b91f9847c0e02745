// Signed-grant fixtures: people with fresh Ed25519 keys, a policy naming them, and helpers that
// sign requests and decisions the way `sshring grant` does.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "policy/grant.h"
#include "policy/parser.h"
#include "protocol/keys.h"

namespace protocol = sshring::protocol;

namespace sshring::policy::testing {

struct Person {
  std::string name;
  std::shared_ptr<protocol::Ed25519PrivateKey> key;
  PublicKey pub;
  [[nodiscard]] SshsigSigner signer() const {
    auto k = key;
    return SshsigSigner{pub, [k](std::string_view data) {
                          auto s = k->sign(data);
                          return std::string(reinterpret_cast<const char*>(s.data()), s.size());
                        }};
  }
  [[nodiscard]] std::string key_line() const { return pub.line; }
};

inline Person person(std::string name) {
  Person p;
  p.key = std::make_shared<protocol::Ed25519PrivateKey>(protocol::Ed25519PrivateKey::generate());
  p.pub = ed25519_key(p.key->public_key(), name + "@test");
  p.name = std::move(name);
  return p;
}

inline GrantRequest request_for(const std::string& who, const std::string& rule, const char* from,
                                const char* to, int64_t ttl, UnixSeconds created,
                                const std::string& requester = "") {
  GrantRequest r;
  r.id = "g-" + std::string(12, '0');
  r.who = who;
  r.requester = requester.empty() ? who : requester;
  r.rule = rule;
  r.from = *Cidr::parse(from);
  r.to = *Cidr::parse(to);
  r.ports = PortSet::single(22);
  r.ttl_seconds = ttl;
  r.reason = "INC-42 maintenance";
  r.created = created;
  r.os_user = "tester";
  r.host = "testhost";
  return r;
}

inline SignedGrant signed_by(const Person& p, GrantRequest r, const std::string& id) {
  SignedGrant g;
  r.id = id;
  g.request = std::move(r);
  sign_request(g, p.signer());
  return g;
}

inline void add_decision(SignedGrant& g, const Person& p, DecisionKind k, UnixSeconds at,
                         std::string note = {}) {
  GrantDecision d{k, p.name, at, std::move(note), "tester", "testhost", {}};
  sign_decision(g.request, d, p.signer());
  g.decisions.push_back(std::move(d));
}

}  // namespace sshring::policy::testing
