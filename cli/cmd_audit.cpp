// `sshring audit verify FILE...` and `sshring audit report --since 7d [--json] [FILE...]`.
#include <chrono>
#include <iostream>

#include "cli/command.h"
#include "common/duration.h"
#include "common/error.h"
#include "common/flags.h"
#include "metrics/audit_report.h"
#include "metrics/audit_verify.h"

namespace {

using sshring::common::Flags;
using sshring::common::UsageError;
namespace m = sshring::metrics;

constexpr const char* kDefaultDir = "/var/log/sshring";

std::vector<std::vector<std::string>> logs_from(const Flags& f) {
  if (!f.positionals().empty()) return {f.positionals()};
  auto dir = f.get_or("dir", kDefaultDir);
  auto logs = m::find_audit_logs(dir);
  if (logs.empty()) throw UsageError("no audit logs (*.jsonl) in " + dir + "; give FILE... or --dir DIR");
  return logs;
}

int verify(const std::vector<std::string>& args) {
  Flags f(
      "audit verify", "sshring audit verify [--dir DIR] [FILE...]",
      "Checks the hash chain of audit log files. FILEs form one chain in the order given: rotated files\n"
      "oldest first (FILE.YYYYMMDDTHHMMSSZ), then the live FILE. Without FILE, verifies every log in DIR.\n"
      "Names the first bad record as FILE:LINE with the reason. A torn last line (interrupted write) is a\n"
      "warning.");
  f.value("dir", "DIR", "directory searched when no FILE is given", kDefaultDir);
  f.boolean("quiet", "print only problems");
  f.epilog(
      "Exit status: 0 chain intact (warnings allowed), 1 chain broken, 2 usage or read error.\n\n"
      "Example:\n  sshring audit verify /var/log/sshring/relay.audit.jsonl.2* "
      "/var/log/sshring/relay.audit.jsonl\n");
  if (!f.parse(args)) return 0;
  int rc = 0;
  for (const auto& files : logs_from(f)) {
    m::VerifyResult res;
    try {
      res = m::verify_chain(files);
    } catch (const std::runtime_error& e) {
      std::cerr << "sshring audit verify: " << e.what() << "\n";
      return 2;
    }
    for (const auto& w : res.warnings) std::cerr << "warning: " << w.to_string() << "\n";
    std::string names;
    for (const auto& file : files) names += (names.empty() ? "" : " ") + file;
    if (!res.ok()) {
      std::cout << "FAIL " << res.error->to_string() << "\n";
      std::cout << "     " << res.records << " records verified before it (" << names << ")\n";
      rc = 1;
    } else if (!f.flag("quiet")) {
      std::cout << "OK   " << names << ": " << res.records << " records, last seq " << res.last_seq
                << ", last hash " << (res.last_hash.empty() ? "-" : res.last_hash) << "\n";
    }
  }
  return rc;
}

int report(const std::vector<std::string>& args) {
  Flags f("audit report", "sshring audit report [--since 7d] [--json] [--dir DIR] [FILE...]",
          "Reviews opt-out use: bypass flows by tag, unapproved and expired-grant flows first, top sources\n"
          "and targets, and every grant with its reason, approver, flows and bytes. Reads every record type\n"
          "from FILEs (relay, agent and grant logs, rotated files included) or all logs in DIR.");
  f.value("since", "DURATION", "report window, back from now (s, m, h, d)", "7d");
  f.value("dir", "DIR", "directory read when no FILE is given", kDefaultDir);
  f.value("top", "N", "rows in the top sources/targets tables", "10");
  f.value("max-flows", "N", "unapproved/expired flows listed one by one", "50");
  f.boolean("json", "print JSON instead of text tables");
  f.epilog(
      "Unreadable lines are counted and skipped (run `sshring audit verify` to check integrity).\n\n"
      "Example:\n  sshring audit report --since 24h /var/log/sshring/agent.audit.jsonl* "
      "/var/log/sshring/grant.audit.jsonl\n");
  if (!f.parse(args)) return 0;
  auto since = sshring::common::parse_duration_or_throw(f.get_or("since", "7d"), "--since");
  auto now = std::chrono::system_clock::now();
  m::ReportOptions opts;
  opts.since_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>((now - since).time_since_epoch()).count();
  opts.top = static_cast<size_t>(f.get_int("top", 10, 1, 1000));
  opts.max_flows = static_cast<size_t>(f.get_int("max-flows", 50, 0, 100000));
  m::AuditReport rep(opts);
  for (const auto& files : logs_from(f)) {
    for (const auto& file : files) {
      m::for_each_line(file, [&](uint64_t, std::string_view line, bool complete) {
        if (!complete) return;  // torn write
        if (auto rec = m::parse_record(line, nullptr)) {
          rep.add(*rec);
        } else {
          rep.skip();
        }
      });
    }
  }
  if (f.flag("json")) {
    std::cout << rep.to_json().dump(2) << "\n";
  } else {
    std::cout << rep.to_text();
  }
  return 0;
}

int run(const std::vector<std::string>& args) {
  const char* usage =
      "Usage: sshring audit verify [FILE...]     check the hash chain, name the first bad record\n"
      "       sshring audit report [--since 7d] [--json] [FILE...]   review bypass flows and grants\n"
      "Run 'sshring audit SUBCOMMAND --help' for options. Record schema: docs/audit.md.\n";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << usage;
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "verify") return verify(rest);
  if (args[0] == "report") return report(rest);
  throw UsageError("unknown subcommand '" + args[0] + "' (expected verify or report)");
}

const sshring::cli::Registrar kAudit{
    {"audit", "verify the audit log chain; report bypass and grant use", run}};

}  // namespace
