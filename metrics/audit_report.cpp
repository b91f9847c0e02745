#include "metrics/audit_report.h"
#include "common/civil_time.h"
#include "common/clock.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace sshring::metrics {

namespace {

// Review order: what needs a person first.
const char* const kTagOrder[] = {"bypass_unapproved", "bypass_expired", "bypass_approved", "proxied"};

int tag_rank(const std::string& tag) {
  for (int i = 0; i < 4; ++i) {
    if (tag == kTagOrder[i]) return i;
  }
  return 4;
}

std::string str(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

uint64_t num(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
}

std::string target_of(const std::string& dst, uint64_t dport) {
  return (dst.find(':') != std::string::npos ? "[" + dst + "]" : dst) + ":" + std::to_string(dport);
}

// A fixed-width text table; columns sized to their widest cell.
std::string table(const std::vector<std::string>& head, std::vector<std::vector<std::string>> rows) {
  for (auto& r : rows) {
    for (auto& c : r) {
      if (c.empty()) c = "-";
    }
  }
  std::vector<size_t> w(head.size());
  for (size_t i = 0; i < head.size(); ++i) w[i] = head[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  }
  std::ostringstream out;
  auto line = [&](const std::vector<std::string>& r) {
    std::string s = "  ";
    for (size_t i = 0; i < r.size(); ++i) {
      s += r[i];
      if (i + 1 < r.size()) s += std::string(w[i] - r[i].size() + 2, ' ');
    }
    s.erase(s.find_last_not_of(' ') + 1);
    out << s << "\n";
  };
  line(head);
  for (const auto& r : rows) line(r);
  if (rows.empty()) out << "  (none)\n";
  return out.str();
}

}  // namespace

// Per host / principal / rule counts of sessions and grant events in the window.
void AuditReport::add_fleet(const AuditRecord& rec) {
  const auto& b = rec.body;
  if (rec.type == "session_end" || rec.type == "session_deny") {
    bool end = rec.type == "session_end";
    std::string who = str(b, "principal");
    for (auto* t : {&hosts_[rec.host], &principals_[who.empty() ? "(none)" : who]}) {
      (end ? t->sessions : t->denied) += 1;
      if (end) t->bytes += num(b, "bytes_up") + num(b, "bytes_down");
    }
    return;
  }
  if (rec.type == "grant_request" || rec.type == "grant_approve" || rec.type == "grant_deny") {
    // Approvals and denials name only the grant: its rule and principal come from the request, read
    // earlier from any time (add() learns it after this call, so a request is looked up in the body).
    const nlohmann::json* terms = &b;
    if (rec.type != "grant_request") {
      auto g = grants_.find(str(b, "grant_id"));
      if (g == grants_.end() || g->second.terms.is_null()) return;
      terms = &g->second.terms;
    }
    std::string rule = str(*terms, "rule"), who = str(*terms, "who");
    const bool live = str(b, "status") == "active";
    if (live) ++grant_days_[rec.ts.substr(0, 10)]["added"];
    for (auto* t : {&rules_[rule.empty() ? "(none)" : rule], &principals_[who.empty() ? "(none)" : who]}) {
      if (rec.type == "grant_request") {
        ++t->grants_requested;
        if (live) ++t->grants_added;
      } else if (rec.type == "grant_approve") {
        if (live) {
          ++t->grants_added;
          ++t->grants_approved;
        }
      } else {
        ++t->grants_denied;
      }
    }
    return;
  }
  if (rec.type != "grant_add" && rec.type != "grant_revoke" && rec.type != "grant_expire") return;
  std::string rule = str(b, "rule");
  std::string who = str(b, "who");
  const char* what = rec.type == "grant_add" ? "added" : rec.type == "grant_revoke" ? "revoked" : "expired";
  ++grant_days_[rec.ts.substr(0, 10)][what];
  for (auto* t : {&rules_[rule.empty() ? "(none)" : rule], &principals_[who.empty() ? "(none)" : who]}) {
    if (rec.type == "grant_add") {
      ++t->grants_added;
      if (!str(b, "approver").empty()) ++t->grants_approved;
    } else {
      ++(rec.type == "grant_revoke" ? t->grants_revoked : t->grants_expired);
    }
  }
}

void AuditReport::add(const AuditRecord& rec) {
  const auto& b = rec.body;
  if (rec.ts_ms >= opts_.since_ms && rec.ts_ms <= opts_.until_ms) add_fleet(rec);
  // Grant terms are learned from any time so a flow in the window can name its grant's reason.
  // Signed grants (docs/policy.md) record grant_request (live at once: status "active") and
  // grant_approve (the approval that activates it: status "active").
  const bool requested = rec.type == "grant_add" || rec.type == "grant_request";
  if (requested || rec.type == "grant_approve" || rec.type == "grant_revoke" || rec.type == "grant_expire") {
    auto& g = grants_[str(b, "grant_id")];
    bool in_window = rec.ts_ms >= opts_.since_ms && rec.ts_ms <= opts_.until_ms;
    g.in_window = g.in_window || in_window;
    const bool active = rec.type == "grant_add" || str(b, "status") == "active";
    if (requested || rec.type == "grant_approve") {
      if (requested) {
        g.terms = b;
        if (b.is_object() && b.value("break_glass", false)) {
          g.break_glass = true;
          g.review_due = str(b, "review_due");
        }
      }
      if (g.status == "unknown" || g.status == "pending") g.status = active ? "granted" : "pending";
    } else {
      g.status = rec.type == "grant_revoke" ? "revoked" : "expired";
      g.ended_by = str(b, "actor");
      g.ended_at = rec.ts;
      if (g.terms.is_null()) g.terms = b;
    }
    if (in_window) ++records_;
    return;
  }
  if (rec.type == "grant_review") {  // learned from any time, like the grant it reviews
    auto& g = grants_[str(b, "grant_id")];
    if (g.reviewed_at.empty()) {
      g.reviewed_by = str(b, "signer");
      g.reviewed_at = rec.ts;
    }
    if (g.terms.is_null()) g.terms = b;
    if (rec.ts_ms >= opts_.since_ms && rec.ts_ms <= opts_.until_ms) ++records_;
    return;
  }
  if (rec.ts_ms < opts_.since_ms || rec.ts_ms > opts_.until_ms) return;
  ++records_;
  if (rec.type == "flow_open" || rec.type == "flow_close") {
    const auto& f = b["flow"];
    std::string first_seen = str(b, "first_seen");
    std::string key = rec.host + "|" + str(f, "src") + "|" + std::to_string(num(f, "sport")) + "|" +
                      str(f, "dst") + "|" + std::to_string(num(f, "dport")) + "|" + str(f, "proto") + "|" +
                      first_seen;
    auto [it, fresh] = flows_.try_emplace(key);
    auto& fl = it->second;
    if (fresh) {
      flow_order_.push_back(key);
      fl.host = rec.host;
      fl.src = str(f, "src");
      fl.dst = str(f, "dst");
      fl.proto = str(f, "proto");
      fl.sport = num(f, "sport");
      fl.dport = num(f, "dport");
      fl.first_seen = first_seen.empty() ? rec.ts : first_seen;
      fl.tag = str(b, "tag");
    } else if (tag_rank(str(b, "tag")) < tag_rank(fl.tag)) {
      fl.tag = str(b, "tag");  // the stricter tag wins if open and close disagree
    }
    if (fl.grant_id.empty()) fl.grant_id = str(b, "grant_id");
    if (rec.type == "flow_close") {
      fl.closed = true;
      fl.bytes = num(b, "bytes_in") + num(b, "bytes_out");
      fl.end = str(b, "end");
    }
  } else if (rec.type == "session_end") {
    ++sessions_;
    session_bytes_ += num(b, "bytes_up") + num(b, "bytes_down");
  } else if (rec.type == "session_deny") {
    ++denied_;
  }
}

static std::string window_bound(int64_t ms) {
  return common::format_rfc3339_ms(ms);
}

nlohmann::ordered_json AuditReport::to_json() const {
  nlohmann::ordered_json out;
  out["window"] = {{"since", window_bound(opts_.since_ms)},
                   {"until", opts_.until_ms == INT64_MAX ? "now" : window_bound(opts_.until_ms)}};
  out["records"] = records_;
  out["skipped_lines"] = skipped_;
  const FlowTotals totals = flows_json(out);
  // The report's "now" for expiry and overdue reviews: the end of the window, or the clock, read once.
  const int64_t as_of = std::min(opts_.now_ms ? opts_.now_ms : common::unix_now_ms(), opts_.until_ms);
  grants_json(out, totals.by_grant, as_of);
  break_glass_json(out, totals.by_grant, as_of);
  out["sessions"] = {{"ended", sessions_}, {"denied", denied_}, {"bytes", session_bytes_}};
  fleet_json(out);
  return out;
}

// Flows by tag, the flagged (unapproved, expired) ones, and the top bypass sources and targets.
AuditReport::FlowTotals AuditReport::flows_json(nlohmann::ordered_json& out) const {
  FlowTotals totals;
  std::map<std::string, FlowTotals::Sum> by_tag;
  std::map<std::string, Peer> sources, targets;
  std::vector<const Flow*> flagged;
  for (const auto& key : flow_order_) {
    const auto& f = flows_.at(key);
    auto& t = by_tag[f.tag];
    ++t.flows;
    t.bytes += f.bytes;
    if (!f.grant_id.empty()) {
      ++totals.by_grant[f.grant_id].flows;
      totals.by_grant[f.grant_id].bytes += f.bytes;
    }
    if (f.tag == "proxied") continue;
    for (auto* p : {&sources[f.src], &targets[f.host + " " + target_of(f.dst, f.dport)]}) {
      ++p->flows;
      p->bytes += f.bytes;
      p->unapproved += f.tag == "bypass_unapproved";
      p->expired += f.tag == "bypass_expired";
    }
    if (f.tag == "bypass_unapproved" || f.tag == "bypass_expired") flagged.push_back(&f);
  }

  auto& tags = out["flows_by_tag"] = nlohmann::ordered_json::array();
  for (const char* tag : kTagOrder) {
    auto it = by_tag.find(tag);
    FlowTotals::Sum a = it == by_tag.end() ? FlowTotals::Sum{} : it->second;
    tags.push_back({{"tag", tag}, {"flows", a.flows}, {"bytes", a.bytes}});
  }

  std::stable_sort(flagged.begin(), flagged.end(),
                   [](const Flow* a, const Flow* b) { return tag_rank(a->tag) < tag_rank(b->tag); });
  auto& fl = out["flagged_flows"] = nlohmann::ordered_json::array();
  for (size_t i = 0; i < flagged.size() && i < opts_.max_flows; ++i) {
    const auto* f = flagged[i];
    fl.push_back({{"tag", f->tag},
                  {"host", f->host},
                  {"src", f->src},
                  {"sport", f->sport},
                  {"dst", f->dst},
                  {"dport", f->dport},
                  {"first_seen", f->first_seen},
                  {"bytes", f->bytes},
                  {"end", f->closed ? f->end : "open"},
                  {"grant_id", f->grant_id}});
  }
  out["flagged_flows_total"] = flagged.size();
  out["top_sources"] = top_json(sources, "src");
  out["top_targets"] = top_json(targets, "target");
  return totals;
}

// The `top` peers, most unapproved flows first, then most flows.
nlohmann::ordered_json AuditReport::top_json(const std::map<std::string, Peer>& m, const char* key) const {
  std::vector<std::pair<std::string, Peer>> v(m.begin(), m.end());
  std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
    if (a.second.unapproved != b.second.unapproved) return a.second.unapproved > b.second.unapproved;
    return a.second.flows > b.second.flows;
  });
  auto arr = nlohmann::ordered_json::array();
  for (size_t i = 0; i < v.size() && i < opts_.top; ++i) {
    arr.push_back({{key, v[i].first},
                   {"flows", v[i].second.flows},
                   {"unapproved", v[i].second.unapproved},
                   {"expired", v[i].second.expired},
                   {"bytes", v[i].second.bytes}});
  }
  return arr;
}

// Grants recorded in the window or used by a flow in it, with their status as of `as_of`.
void AuditReport::grants_json(nlohmann::ordered_json& out,
                              const std::map<std::string, FlowTotals::Sum>& by_grant, int64_t as_of) const {
  auto& grants = out["grants"] = nlohmann::ordered_json::array();
  for (const auto& [id, g] : grants_) {
    auto used = by_grant.find(id);
    if (!g.in_window && used == by_grant.end()) continue;
    FlowTotals::Sum a = used == by_grant.end() ? FlowTotals::Sum{} : used->second;
    // A grant without a revoke/expire record is active until its expiry (the expire record is only
    // written when a grant command sweeps the store).
    std::string status = g.status;
    if (status == "granted") {
      auto exp = common::parse_rfc3339_ms(str(g.terms, "expires"));
      status = exp && *exp <= as_of ? "expired" : "active";
    }
    nlohmann::ordered_json j{
        {"grant_id", id},
        {"status", status},
        {"who", str(g.terms, "who")},
        {"from", str(g.terms, "from")},
        {"to", str(g.terms, "to")},
        {"ports",
         g.terms.is_object() && g.terms.contains("ports") ? g.terms["ports"] : nlohmann::json::array()},
        {"expires", str(g.terms, "expires")},
        {"reason", str(g.terms, "reason")},
        {"approver", str(g.terms, "approver")},
        {"actor", str(g.terms, "actor")},
        {"flows", a.flows},
        {"bytes", a.bytes}};
    if (!g.ended_by.empty() || !g.ended_at.empty()) {
      j["ended_at"] = g.ended_at;
      j["ended_by"] = g.ended_by;
    }
    grants.push_back(std::move(j));
  }
}

// Every break-glass grant still awaiting its review, from any time (an unreviewed one does not
// age out of the report), and the ones reviewed or used in the window.
void AuditReport::break_glass_json(nlohmann::ordered_json& out,
                                   const std::map<std::string, FlowTotals::Sum>& by_grant,
                                   int64_t as_of) const {
  auto& glass = out["break_glass"] = nlohmann::ordered_json::array();
  uint64_t overdue = 0;
  for (const auto& [id, g] : grants_) {
    if (!g.break_glass) continue;
    const bool reviewed = !g.reviewed_at.empty();
    if (reviewed && !g.in_window && by_grant.find(id) == by_grant.end()) continue;
    auto due = common::parse_rfc3339_ms(g.review_due);
    // A missing or unreadable due time counts as overdue: the review cannot be shown to be on time.
    const char* review = reviewed ? "reviewed" : (!due || *due < as_of) ? "overdue" : "awaiting";
    overdue += std::string_view(review) == "overdue";
    nlohmann::ordered_json j{{"grant_id", id},
                             {"review", review},
                             {"review_due", g.review_due},
                             {"who", str(g.terms, "who")},
                             {"requester", str(g.terms, "requester")},
                             {"rule", str(g.terms, "rule")},
                             {"reason", str(g.terms, "reason")}};
    if (reviewed) {
      j["reviewed_by"] = g.reviewed_by;
      j["reviewed_at"] = g.reviewed_at;
    }
    glass.push_back(std::move(j));
  }
  out["break_glass_reviews_overdue"] = overdue;
}

// Flow counts by tag for one table row.
static nlohmann::ordered_json tag_counts(const std::map<std::string, uint64_t>& m) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const char* tag : {"bypass_unapproved", "bypass_expired", "bypass_approved", "proxied"}) {
    auto it = m.find(tag);
    j[tag] = it == m.end() ? 0 : it->second;
  }
  return j;
}

void AuditReport::fleet_json(nlohmann::ordered_json& out) const {
  // Flows attributed to hosts (the agent's), principals and rules (through the grant that covered them).
  std::map<std::string, std::map<std::string, uint64_t>> host_flows, who_flows, rule_flows, days;
  for (const auto& key : flow_order_) {
    const auto& f = flows_.at(key);
    ++host_flows[f.host][f.tag];
    ++days[f.first_seen.substr(0, 10)][f.tag];
    auto g = grants_.find(f.grant_id);
    if (g == grants_.end() || f.grant_id.empty()) continue;
    std::string who = str(g->second.terms, "who"), rule = str(g->second.terms, "rule");
    ++who_flows[who.empty() ? "(none)" : who][f.tag];
    ++rule_flows[rule.empty() ? "(none)" : rule][f.tag];
  }
  auto table = [&](const std::map<std::string, Tally>& tallies,
                   std::map<std::string, std::map<std::string, uint64_t>>& flows, const char* key) {
    std::map<std::string, Tally> all = tallies;
    for (const auto& [k, v] : flows) all.try_emplace(k);
    auto arr = nlohmann::ordered_json::array();
    for (const auto& [k, t] : all) {
      arr.push_back({{key, k},
                     {"sessions", t.sessions},
                     {"denied", t.denied},
                     {"session_bytes", t.bytes},
                     {"flows", tag_counts(flows[k])},
                     {"grants",
                      {{"requested", t.grants_requested},
                       {"added", t.grants_added},
                       {"approved", t.grants_approved},
                       {"denied", t.grants_denied},
                       {"revoked", t.grants_revoked},
                       {"expired", t.grants_expired}}}});
    }
    return arr;
  };
  out["by_host"] = table(hosts_, host_flows, "host");
  out["by_principal"] = table(principals_, who_flows, "principal");
  out["by_rule"] = table(rules_, rule_flows, "rule");
  auto& per_day = out["flows_per_day"] = nlohmann::ordered_json::array();
  for (const auto& [day, m] : days) per_day.push_back({{"day", day}, {"flows", tag_counts(m)}});
  auto& gdays = out["grants_per_day"] = nlohmann::ordered_json::array();
  for (const auto& [day, counts] : grant_days_) {
    const auto& m = counts;  // a lambda may not capture a structured binding (C++20 with clang 14)
    auto get = [&](const char* k) { return m.count(k) ? m.at(k) : 0; };
    gdays.push_back(
        {{"day", day}, {"added", get("added")}, {"revoked", get("revoked")}, {"expired", get("expired")}});
  }
}

namespace {

// One table cell: strings as they are, lists comma-joined, anything else as JSON.
std::string cell(const nlohmann::ordered_json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string r;
    for (const auto& e : v) r += (r.empty() ? "" : ",") + (e.is_string() ? e.get<std::string>() : e.dump());
    return r;
  }
  return v.dump();
}

// Flows by tag, the flagged flows, and the top bypass sources and targets.
void text_flows(const nlohmann::ordered_json& j, std::ostringstream& out) {
  out << "\nFlows by tag\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : j["flows_by_tag"])
    rows.push_back({cell(t["tag"]), cell(t["flows"]), cell(t["bytes"])});
  out << table({"TAG", "FLOWS", "BYTES"}, rows);

  out << "\nUnapproved and expired-grant flows (" << cell(j["flagged_flows_total"]) << ")\n";
  rows.clear();
  for (const auto& f : j["flagged_flows"]) {
    rows.push_back({cell(f["tag"]), cell(f["host"]), cell(f["src"]) + ":" + cell(f["sport"]),
                    target_of(cell(f["dst"]), f["dport"].get<uint64_t>()), cell(f["first_seen"]),
                    cell(f["bytes"]), cell(f["end"]), cell(f["grant_id"])});
  }
  out << table({"TAG", "HOST", "SOURCE", "TARGET", "FIRST SEEN", "BYTES", "END", "GRANT"}, rows);

  for (const char* which : {"top_sources", "top_targets"}) {
    bool src = std::string(which) == "top_sources";
    out << "\nTop " << (src ? "sources" : "targets") << " of bypass flows\n";
    rows.clear();
    for (const auto& p : j[which]) {
      rows.push_back({cell(p[src ? "src" : "target"]), cell(p["flows"]), cell(p["unapproved"]),
                      cell(p["expired"]), cell(p["bytes"])});
    }
    out << table({src ? "SOURCE" : "HOST TARGET", "FLOWS", "UNAPPROVED", "EXPIRED", "BYTES"}, rows);
  }
}

// Grants, and break-glass grants with their reviews.
void text_grants(const nlohmann::ordered_json& j, std::ostringstream& out) {
  out << "\nGrants\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& g : j["grants"]) {
    rows.push_back({cell(g["grant_id"]), cell(g["status"]), cell(g["who"]),
                    cell(g["from"]) + " -> " + cell(g["to"]) + ":" + cell(g["ports"]), cell(g["expires"]),
                    cell(g["approver"]), cell(g["flows"]), cell(g["bytes"]), cell(g["reason"])});
  }
  out << table({"GRANT", "STATUS", "WHO", "SCOPE", "EXPIRES", "APPROVER", "FLOWS", "BYTES", "REASON"}, rows);

  out << "\nBreak-glass grants (" << j["break_glass"].size() << ", " << cell(j["break_glass_reviews_overdue"])
      << " overdue for review)\n";
  rows.clear();
  for (const auto& g : j["break_glass"]) {
    std::string review = cell(g["review"]);
    if (g.contains("reviewed_by"))
      review += " by " + cell(g["reviewed_by"]) + " at " + cell(g["reviewed_at"]);
    rows.push_back({cell(g["grant_id"]), cell(g["requester"]), cell(g["who"]), cell(g["rule"]),
                    cell(g["review_due"]), review, cell(g["reason"])});
  }
  out << table({"GRANT", "REQUESTER", "WHO", "RULE", "REVIEW DUE", "REVIEW", "REASON"}, rows);
}

// Per host, principal and rule.
void text_per(const nlohmann::ordered_json& j, std::ostringstream& out) {
  for (const char* which : {"by_host", "by_principal", "by_rule"}) {
    std::string key = std::string(which).substr(3);
    out << "\nPer " << key << "\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& r : j[which]) {
      const auto& fl = r["flows"];
      const auto& g = r["grants"];
      rows.push_back({cell(r[key]), cell(r["sessions"]), cell(r["denied"]), cell(fl["bypass_unapproved"]),
                      cell(fl["bypass_expired"]), cell(fl["bypass_approved"]), cell(g["requested"]),
                      cell(g["added"]), cell(g["approved"]), cell(g["denied"]), cell(g["revoked"]),
                      cell(g["expired"])});
    }
    out << table({"NAME", "SESSIONS", "DENIED", "UNAPPROVED", "EXPIRED", "APPROVED", "REQUESTS", "GRANTS",
                  "APPROVED_GRANTS", "DENIED_GRANTS", "REVOKED", "EXPIRED_GRANTS"},
                 rows);
  }
}

}  // namespace

std::string AuditReport::to_text() const {
  auto j = to_json();
  std::ostringstream out;
  out << "sshring audit report  " << cell(j["window"]["since"]) << " .. " << cell(j["window"]["until"])
      << "  (" << cell(j["records"]) << " records";
  if (j["skipped_lines"].get<uint64_t>() > 0)
    out << ", " << cell(j["skipped_lines"]) << " unreadable lines skipped";
  out << ")\n";
  text_flows(j, out);
  text_grants(j, out);
  text_per(j, out);
  out << "\nProxied sessions: " << cell(j["sessions"]["ended"]) << " ended, " << cell(j["sessions"]["denied"])
      << " denied, " << cell(j["sessions"]["bytes"]) << " bytes\n";
  return out.str();
}

}  // namespace sshring::metrics
