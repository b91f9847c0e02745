// A crafted set of agent and grant audit logs with known report numbers (report and CLI tests).
#pragma once

#include "metrics/audit.h"
#include "tests/support/process.h"

namespace sshring::metrics {

inline nlohmann::json flow(const std::string& src, int sport, const std::string& dst) {
  return {{"src", src}, {"dst", dst}, {"sport", sport}, {"dport", 22}, {"proto", "tcp"}};
}

// Agent and grant logs with known content: 2 unapproved flows from 10.0.0.66, 1 expired-grant flow,
// 3 approved flows under g1, 1 proxied flow, and one unapproved flow still open.
inline void craft(const sshring::testing::TempDir& dir) {
  {
    AuditLog grants({.path = dir.file("grant.audit.jsonl"), .component = "grant", .fsync_each = true});
    grants.append({{"type", "grant_add"},
                   {"grant_id", "g1"},
                   {"who", "alice"},
                   {"from", "10.0.0.0/24"},
                   {"to", "10.0.1.5"},
                   {"ports", {22}},
                   {"expires", "2099-01-01T00:00:00Z"},
                   {"reason", "INC-42 relay outage"},
                   {"approver", "bob"},
                   {"actor", "alice"}});
    grants.append({{"type", "grant_add"},
                   {"grant_id", "g2"},
                   {"who", "carol"},
                   {"to", "10.0.1.6"},
                   {"expires", "2020-01-01T00:00:00Z"},
                   {"reason", "migration"},
                   {"actor", "carol"}});
    grants.append({{"type", "grant_expire"}, {"grant_id", "g2"}, {"actor", "system"}});
  }
  AuditLog agent({.path = dir.file("agent.audit.jsonl"), .component = "agent", .fsync_each = true});
  auto open_close = [&](const std::string& src, int sport, const std::string& dst, const std::string& tag,
                        const std::string& grant, uint64_t in, uint64_t out, const std::string& first_seen) {
    nlohmann::json o{
        {"type", "flow_open"}, {"flow", flow(src, sport, dst)}, {"tag", tag}, {"first_seen", first_seen}};
    if (!grant.empty()) o["grant_id"] = grant;
    agent.append(o);
    nlohmann::json c = o;
    c["type"] = "flow_close";
    c.update({{"packets_in", 10},
              {"packets_out", 9},
              {"bytes_in", in},
              {"bytes_out", out},
              {"end", "fin"},
              {"last_seen", first_seen}});
    agent.append(c);
  };
  open_close("10.0.0.66", 5001, "10.0.1.5", "bypass_unapproved", "", 100, 1000, "2026-11-30T10:00:00.000Z");
  open_close("10.0.0.66", 5002, "10.0.1.7", "bypass_unapproved", "", 50, 500, "2026-11-30T10:01:00.000Z");
  open_close("10.0.0.8", 5003, "10.0.1.6", "bypass_expired", "g2", 7, 3, "2026-11-30T10:02:00.000Z");
  for (int i = 0; i < 3; ++i) {
    open_close("10.0.0.9", 6000 + i, "10.0.1.5", "bypass_approved", "g1", 1000, 2000,
               "2026-11-30T11:00:00.000Z");
  }
  open_close("10.0.2.1", 7000, "10.0.1.5", "proxied", "", 4, 4, "2026-11-30T12:00:00.000Z");
  // An open without a close yet (still running).
  agent.append({{"type", "flow_open"},
                {"flow", flow("10.0.0.66", 5004, "10.0.1.5")},
                {"tag", "bypass_unapproved"},
                {"first_seen", "2026-11-30T12:30:00.000Z"}});
}

}  // namespace sshring::metrics
