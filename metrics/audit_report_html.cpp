// `sshring audit report --html FILE`: the report as one self-contained page. Tables and inline SVG bar
// charts only (no scripts, no external assets), so it opens anywhere, prints, and can be mailed.
// Each chart is an <svg class="chart" data-chart=NAME data-bars=N>; every bar is a <rect class="bar">
// with a <title> naming its label and value.
#include <sstream>

#include "metrics/audit_report.h"

namespace sshring::metrics {

namespace {

using OJ = nlohmann::ordered_json;

std::string esc(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string cell(const OJ& v) {
  return esc(v.is_string() ? v.get<std::string>() : v.dump());
}

struct Series {
  const char* name;
  const char* color;
};
const Series kTags[] = {{"bypass_unapproved", "#c0392b"},
                        {"bypass_expired", "#e67e22"},
                        {"bypass_approved", "#2980b9"},
                        {"proxied", "#27ae60"}};
const Series kGrantSeries[] = {{"added", "#2980b9"}, {"revoked", "#8e44ad"}, {"expired", "#7f8c8d"}};

// A stacked bar chart: one bar per row, one segment per series (values read by `value(row, series)`).
template <class Value>
std::string chart(const char* id, const std::string& title, const std::vector<std::string>& labels,
                  const std::vector<Series>& series, Value value) {
  const int w = 1100, h = 260, left = 60, bottom = 70, top = 30;
  double max = 1;
  for (size_t i = 0; i < labels.size(); ++i) {
    double sum = 0;
    for (const auto& s : series) sum += value(i, s.name);
    max = std::max(max, sum);
  }
  size_t n = std::max<size_t>(labels.size(), 1);
  double bw = std::min(60.0, (w - left - 20) / static_cast<double>(n) * 0.7);
  double step = (w - left - 20) / static_cast<double>(n);
  std::ostringstream o;
  size_t bars = 0;
  std::ostringstream body;
  for (size_t i = 0; i < labels.size(); ++i) {
    double x = left + step * static_cast<double>(i) + (step - bw) / 2, y = h - bottom;
    for (const auto& s : series) {
      double v = value(i, s.name);
      if (v <= 0) continue;
      double bh = (h - bottom - top) * v / max;
      y -= bh;
      body << "<rect class=\"bar\" x=\"" << x << "\" y=\"" << y << "\" width=\"" << bw << "\" height=\"" << bh
           << "\" fill=\"" << s.color << "\"><title>" << esc(labels[i]) << " " << s.name << ": " << v
           << "</title></rect>";
      ++bars;
    }
    body << "<text x=\"" << x + bw / 2 << "\" y=\"" << h - bottom + 14
         << "\" font-size=\"11\" text-anchor=\"end\" transform=\"rotate(-30 " << x + bw / 2 << " "
         << h - bottom + 14 << ")\">" << esc(labels[i].substr(0, 28)) << "</text>";
  }
  o << "<h3>" << esc(title) << "</h3><svg class=\"chart\" data-chart=\"" << id << "\" data-bars=\"" << bars
    << "\" width=\"" << w << "\" height=\"" << h << "\" viewBox=\"0 0 " << w << " " << h
    << "\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"" << esc(title) << "\">";
  o << "<line x1=\"" << left << "\" y1=\"" << h - bottom << "\" x2=\"" << w - 10 << "\" y2=\"" << h - bottom
    << "\" stroke=\"#333\"/><text x=\"" << left - 6 << "\" y=\"" << top + 4
    << "\" font-size=\"11\" text-anchor=\"end\">" << max << "</text><text x=\"" << left - 6 << "\" y=\""
    << h - bottom << "\" font-size=\"11\" text-anchor=\"end\">0</text>";
  o << body.str();
  double lx = left;
  for (const auto& s : series) {
    o << "<rect x=\"" << lx << "\" y=\"6\" width=\"10\" height=\"10\" fill=\"" << s.color << "\"/><text x=\""
      << lx + 14 << "\" y=\"15\" font-size=\"11\">" << s.name << "</text>";
    lx += 150;
  }
  if (labels.empty())
    o << "<text x=\"" << w / 2 << "\" y=\"" << h / 2 << "\" text-anchor=\"middle\">no data</text>";
  o << "</svg>\n";
  return o.str();
}

std::string html_table(const std::vector<std::string>& head,
                       const std::vector<std::vector<std::string>>& rows) {
  std::ostringstream o;
  o << "<table><tr>";
  for (const auto& h : head) o << "<th>" << esc(h) << "</th>";
  o << "</tr>";
  for (const auto& r : rows) {
    o << "<tr>";
    for (const auto& c : r) o << "<td>" << c << "</td>";
    o << "</tr>";
  }
  if (rows.empty()) o << "<tr><td colspan=\"" << head.size() << "\">(none)</td></tr>";
  o << "</table>\n";
  return o.str();
}

// Bars per row of a by_* table: flows by tag.
std::string fleet_chart(const OJ& rows, const char* key, const char* id, const std::string& title) {
  std::vector<std::string> labels;
  std::vector<const OJ*> rp;
  for (const auto& r : rows) {
    labels.push_back(r[key].get<std::string>());
    rp.push_back(&r);
  }
  return chart(id, title, labels, {std::begin(kTags), std::end(kTags)},
               [&](size_t i, const char* tag) { return (*rp[i])["flows"][tag].get<double>(); });
}

std::string fleet_table(const OJ& rows, const char* key) {
  std::vector<std::vector<std::string>> out;
  for (const auto& r : rows) {
    const auto& f = r["flows"];
    const auto& g = r["grants"];
    out.push_back({cell(r[key]), cell(r["sessions"]), cell(r["denied"]), cell(f["bypass_unapproved"]),
                   cell(f["bypass_expired"]), cell(f["bypass_approved"]), cell(g["requested"]),
                   cell(g["added"]), cell(g["approved"]), cell(g["denied"]), cell(g["revoked"]),
                   cell(g["expired"])});
  }
  return html_table({key, "sessions", "denied", "unapproved flows", "expired-grant flows", "approved flows",
                     "grant requests", "grants added", "approved", "denied", "revoked", "expired"},
                    out);
}

}  // namespace

namespace {

// Bypass flows per day by tag, and their totals.
void html_flows(const OJ& j, std::ostringstream& o) {
  o << "<h2>Bypass flows</h2>";
  std::vector<std::string> days;
  std::vector<const OJ*> dayrows;
  for (const auto& d : j["flows_per_day"]) {
    days.push_back(d["day"].get<std::string>());
    dayrows.push_back(&d);
  }
  o << chart("flows_per_day", "Bypass flows per day by tag", days, {std::begin(kTags), std::end(kTags)},
             [&](size_t i, const char* tag) { return (*dayrows[i])["flows"][tag].get<double>(); });
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : j["flows_by_tag"])
    rows.push_back({cell(t["tag"]), cell(t["flows"]), cell(t["bytes"])});
  o << html_table({"tag", "flows", "bytes"}, rows);
}

// Grants over time and in the window, and break-glass grants with their reviews.
void html_grants(const OJ& j, std::ostringstream& o) {
  o << "<h2>Grants</h2>";
  std::vector<std::string> gdays;
  std::vector<const OJ*> grows;
  for (const auto& d : j["grants_per_day"]) {
    gdays.push_back(d["day"].get<std::string>());
    grows.push_back(&d);
  }
  o << chart("grants_over_time", "Grants over time", gdays,
             {std::begin(kGrantSeries), std::end(kGrantSeries)},
             [&](size_t i, const char* k) { return (*grows[i])[k].get<double>(); });
  std::vector<std::vector<std::string>> rows;
  for (const auto& g : j["grants"]) {
    rows.push_back({cell(g["grant_id"]), cell(g["status"]), cell(g["who"]),
                    cell(g["from"]) + " &rarr; " + cell(g["to"]) + ":" + cell(g["ports"]), cell(g["expires"]),
                    cell(g["approver"]), cell(g["flows"]), cell(g["reason"])});
  }
  o << html_table({"grant", "status", "who", "scope", "expires", "approver", "flows", "reason"}, rows);

  o << "<h2>Break-glass grants</h2>";
  rows.clear();
  for (const auto& g : j["break_glass"]) {
    std::string review = cell(g["review"]);
    if (g.contains("reviewed_by"))
      review += " by " + cell(g["reviewed_by"]) + " at " + cell(g["reviewed_at"]);
    rows.push_back({cell(g["grant_id"]), cell(g["requester"]), cell(g["who"]), cell(g["rule"]),
                    cell(g["review_due"]), review, cell(g["reason"])});
  }
  o << html_table({"grant", "requester", "who", "rule", "review due", "review", "reason"}, rows);
}

// Sources of unapproved flows, and the flagged flows.
void html_unapproved(const OJ& j, std::ostringstream& o) {
  o << "<h2>Unapproved bypass sources</h2>";
  std::vector<std::string> srcs;
  std::vector<const OJ*> srows;
  for (const auto& p : j["top_sources"]) {
    if (p["unapproved"].get<uint64_t>() == 0) continue;
    srcs.push_back(p["src"].get<std::string>());
    srows.push_back(&p);
  }
  o << chart("top_unapproved_sources", "Top unapproved sources", srcs, {kTags[0]},
             [&](size_t i, const char*) { return (*srows[i])["unapproved"].get<double>(); });
  std::vector<std::vector<std::string>> rows;
  for (const auto& f : j["flagged_flows"]) {
    rows.push_back({cell(f["tag"]), cell(f["host"]), cell(f["src"]) + ":" + cell(f["sport"]),
                    cell(f["dst"]) + ":" + cell(f["dport"]), cell(f["first_seen"]), cell(f["bytes"]),
                    cell(f["end"])});
  }
  o << html_table({"tag", "host", "source", "target", "first seen", "bytes", "end"}, rows);
}

}  // namespace

std::string AuditReport::to_html() const {
  OJ j = to_json();
  std::ostringstream o;
  o << "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sshring audit report</title>"
       "<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px "
       "0 20px}"
       "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f0f0f0}"
       "h2{border-bottom:1px solid #ddd;margin-top:28px}svg{background:#fafafa;border:1px solid #eee}</style>"
       "</head><body>\n";
  o << "<h1>sshring audit report</h1><p>Window " << cell(j["window"]["since"]) << " .. "
    << cell(j["window"]["until"]) << ": " << cell(j["records"]) << " records, " << cell(j["skipped_lines"])
    << " unreadable lines skipped. "
    << "Proxied sessions: " << cell(j["sessions"]["ended"]) << " ended, " << cell(j["sessions"]["denied"])
    << " denied.</p>\n";

  html_flows(j, o);
  o << "<h2>Per rule</h2>" << fleet_chart(j["by_rule"], "rule", "flows_per_rule", "Flows per opt-out rule")
    << fleet_table(j["by_rule"], "rule");
  o << "<h2>Per principal</h2>"
    << fleet_chart(j["by_principal"], "principal", "flows_per_principal",
                   "Flows per principal (through their grants)")
    << fleet_table(j["by_principal"], "principal");
  o << "<h2>Per host</h2>" << fleet_table(j["by_host"], "host");

  html_grants(j, o);
  html_unapproved(j, o);
  o << "</body></html>\n";
  return o.str();
}

}  // namespace sshring::metrics
