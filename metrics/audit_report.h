// `sshring audit report`: a review of opt-out use built from flow, grant and session records.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "metrics/audit_record.h"

namespace sshring::metrics {

struct ReportOptions {
  int64_t since_ms = 0;  // records with ts before this are ignored (grant terms are still learned)
  int64_t until_ms = INT64_MAX;
  int64_t now_ms = 0;     // "now" for overdue reviews and expiry (0: the wall clock when the report is built)
  size_t top = 10;        // rows in the top sources / targets tables
  size_t max_flows = 50;  // unapproved/expired flows listed one by one
};

class AuditReport {
 public:
  explicit AuditReport(ReportOptions opts) : opts_(opts) {}

  // Feeds one parsed record (any order within a file; files oldest first).
  void add(const AuditRecord& rec);
  // Counts a line that did not parse (reported, not fatal).
  void skip() { ++skipped_; }

  [[nodiscard]] nlohmann::ordered_json to_json() const;
  [[nodiscard]] std::string to_text() const;
  // One self-contained page (no external assets, no JavaScript): the tables and inline SVG charts.
  [[nodiscard]] std::string to_html() const;

 private:
  struct Flow {
    std::string host, src, dst, proto, tag, grant_id, first_seen, end;
    uint64_t sport = 0, dport = 0, bytes = 0;
    bool closed = false;
  };
  struct Grant {
    nlohmann::json terms;  // fields of grant_add
    std::string status = "unknown";
    std::string ended_by;
    std::string ended_at;
    bool in_window = false;
    // Break-glass grants (grant_request with break_glass): the after-the-fact review.
    bool break_glass = false;
    std::string review_due, reviewed_by, reviewed_at;
  };
  ReportOptions opts_;
  uint64_t records_ = 0, skipped_ = 0;
  std::map<std::string, Flow> flows_;  // key: host|src|sport|dst|dport|proto|first_seen
  std::vector<std::string> flow_order_;
  std::map<std::string, Grant> grants_;
  uint64_t sessions_ = 0, denied_ = 0, session_bytes_ = 0;
  // Fleet tables: per relay/agent host, per principal, per opt-out rule.
  struct Tally {
    // Grants: requested (signed requests), added (went live: grant_add, a request live at once or
    // its activating approval), approved (live through an approval), denied (signed denials).
    uint64_t sessions = 0, denied = 0, bytes = 0, grants_requested = 0, grants_added = 0, grants_approved = 0,
             grants_denied = 0, grants_revoked = 0, grants_expired = 0;
  };
  std::map<std::string, Tally> hosts_, principals_, rules_;
  std::map<std::string, std::map<std::string, uint64_t>> grant_days_;  // day -> added|revoked|expired -> n
  void add_fleet(const AuditRecord& rec);
  void fleet_json(nlohmann::ordered_json& out) const;
  // to_json, one section a method.
  struct FlowTotals {
    struct Sum {
      uint64_t flows = 0, bytes = 0;
    };
    std::map<std::string, Sum> by_grant;  // flows and bytes each grant carried
  };
  struct Peer {
    uint64_t flows = 0, bytes = 0, unapproved = 0, expired = 0;
  };
  FlowTotals flows_json(nlohmann::ordered_json& out) const;
  nlohmann::ordered_json top_json(const std::map<std::string, Peer>& m, const char* key) const;
  void grants_json(nlohmann::ordered_json& out, const std::map<std::string, FlowTotals::Sum>& by_grant,
                   int64_t as_of) const;
  void break_glass_json(nlohmann::ordered_json& out, const std::map<std::string, FlowTotals::Sum>& by_grant,
                        int64_t as_of) const;
};

}  // namespace sshring::metrics
