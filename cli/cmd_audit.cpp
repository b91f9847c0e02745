// `sshring audit verify FILE...` and `sshring audit report --since 7d [--json] [FILE...]`.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>

#include "cli/command.h"
#include "common/duration.h"
#include "common/error.h"
#include "common/flags.h"
#include "metrics/audit_key.h"
#include "metrics/audit_report.h"
#include "metrics/audit_verify.h"
#include "policy/parser.h"

namespace {

using sshring::common::Flags;
using sshring::common::UsageError;
namespace m = sshring::metrics;
namespace policy = sshring::policy;

constexpr const char* kDefaultDir = "/var/log/sshring";

std::vector<std::vector<std::string>> logs_from(const Flags& f) {
  if (!f.positionals().empty()) return {f.positionals()};
  auto dir = f.get_or("dir", kDefaultDir);
  auto logs = m::find_audit_logs(dir);
  if (logs.empty()) throw UsageError("no audit logs (*.jsonl) in " + dir + "; give FILE... or --dir DIR");
  return logs;
}

m::VerifyOptions verify_options(const Flags& f, std::optional<m::TrustedKeys>& trusted) {
  m::VerifyOptions o;
  o.require_head = true;
  o.collector = f.flag("collector");
  if (auto p = f.get("trusted-keys")) trusted = m::TrustedKeys::load(*p);
  // The policy's audit_keys are trusted as --trusted-keys lines would be (both may be given).
  if (auto p = f.get("policy")) {
    const policy::Policy pol = policy::load_policy_file(*p);
    if (pol.audit_keys.empty())
      throw std::runtime_error(*p + " lists no audit_keys; add them there or give --trusted-keys FILE");
    if (!trusted) trusted.emplace();
    for (const auto& k : pol.audit_keys) {
      trusted->add(k.writer, m::AuditPublicKey{.raw = std::string(k.key.ed25519.begin(), k.key.ed25519.end()),
                                               .fingerprint = k.key.fingerprint});
    }
  }
  if (trusted) o.trusted = &*trusted;
  if (f.has("from-seq")) o.from_seq = static_cast<uint64_t>(f.get_int("from-seq", 0, 1, INT64_MAX));
  return o;
}

void print_result(const m::VerifyResult& res, const std::string& names, bool quiet) {
  for (const auto& w : res.warnings) std::cerr << "warning: " << w.to_string() << "\n";
  for (const auto& g : res.gaps) std::cout << "GAP  " << g.to_string() << "\n";
  if (res.error) {
    std::cout << "FAIL " << res.error->to_string() << "\n";
    std::cout << "     " << res.records << " records verified before it (" << names << ")\n";
  } else if (!res.gaps.empty()) {
    std::cout << "FAIL " << names << ": " << res.gaps.size() << " gap(s) in the chain of " << res.writer
              << "\n";
  } else if (!quiet) {
    std::cout << "OK   " << names << ": " << res.records << " records, last seq " << res.last_seq;
    if (!res.writer.empty()) std::cout << ", writer " << res.writer;
    if (res.checkpoints > 0) std::cout << ", " << res.checkpoints << " signed checkpoints";
    std::cout << ", last hash " << (res.last_hash.empty() ? "-" : res.last_hash) << "\n";
  }
}

std::string textfile_lines(const m::VerifyResult& res, const std::string& file) {
  std::string w = res.writer.empty() ? file : res.writer;
  std::string esc;
  for (char c : w) {
    if (c == '"' || c == '\\') esc.push_back('\\');
    if (c != '\n') esc.push_back(c);
  }
  auto now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  std::string l = "{writer=\"" + esc + "\"} ";
  return "sshring_audit_verify_ok" + l + (res.ok() ? "1" : "0") + "\nsshring_audit_verify_gaps" + l +
         std::to_string(res.gaps.size()) + "\nsshring_audit_verify_timestamp_seconds" + l +
         std::to_string(now.count()) + "\n";
}

// Written beside and renamed, so the collector never reads half a file.
void write_textfile(const std::string& path, const std::string& lines) {
  std::string head =
      "# TYPE sshring_audit_verify_ok gauge\n# TYPE sshring_audit_verify_gaps gauge\n"
      "# TYPE sshring_audit_verify_timestamp_seconds gauge\n";
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << head << lines;
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

int verify(const std::vector<std::string>& args) {
  Flags f(
      "audit verify",
      "sshring audit verify [--trusted-keys FILE] [--policy FILE] [--from-seq N] [--collector] [--dir DIR] "
      "[FILE...]",
      "Checks the hash chain of audit log files and, with trusted keys (--trusted-keys, or the policy's\n"
      "audit_keys with --policy), the signed checkpoints in it.\n"
      "FILEs form one chain in the order given: rotated files oldest first (FILE.YYYYMMDDTHHMMSSZ), then\n"
      "the live FILE. Without FILE, verifies every log in DIR (each writer's chain on a collector).\n"
      "Names the first bad record as FILE:LINE with the reason: edited, reordered or deleted records; a\n"
      "missing head (the oldest file gone); with keys, a bad or missing checkpoint signature (a chain\n"
      "recomputed without the key fails at its first checkpoint) and a tail cut off after the last\n"
      "checkpoint while the writer is stopped. A torn last line (interrupted write) is a warning.");
  f.value("dir", "DIR", "directory searched when no FILE is given", kDefaultDir);
  f.value("trusted-keys", "FILE",
          "trusted audit keys, one 'WRITER-ID ssh-ed25519 BASE64' per line ('*' = any writer); "
          "see `sshring audit key --pub`");
  f.value("policy", "FILE",
          "trust the audit_keys the policy lists (writer and ssh-ed25519 key, docs/policy.md); "
          "with --trusted-keys, both are trusted");
  f.value("from-seq", "N",
          "retained history starts at seq N: a chain whose first record is N or earlier "
          "is not a missing head");
  f.boolean("collector",
            "files gathered by a collector (syslog/RELP): list every seq gap per writer and go on; skip "
            "duplicates; an unsigned tail is a warning");
  f.boolean("quiet", "print only problems");
  f.value("textfile", "FILE",
          "also write the result per writer as Prometheus text (node_exporter textfile collector): "
          "sshring_audit_verify_ok, sshring_audit_verify_gaps, sshring_audit_verify_timestamp_seconds");
  f.epilog(
      "Exit status: 0 chain intact (warnings allowed), 1 chain broken, a gap, a bad signature or a cut\n"
      "tail, 2 usage or read error.\n\n"
      "Examples:\n  sshring audit verify --trusted-keys /etc/sshring/audit-keys "
      "/var/log/sshring/relay.audit.jsonl.2* "
      "/var/log/sshring/relay.audit.jsonl\n"
      "  sshring audit verify --collector --trusted-keys /etc/sshring/audit-keys --dir "
      "/var/log/sshring-collector\n");
  if (!f.parse(args)) return 0;
  std::optional<m::TrustedKeys> trusted;
  m::VerifyOptions opts;
  try {
    opts = verify_options(f, trusted);
  } catch (const std::runtime_error& e) {
    std::cerr << "sshring audit verify: " << e.what() << "\n";
    return 2;
  }
  int rc = 0;
  std::string prom;
  for (const auto& files : logs_from(f)) {
    m::VerifyResult res;
    try {
      res = m::verify_chain(files, opts);
    } catch (const std::runtime_error& e) {
      std::cerr << "sshring audit verify: " << e.what() << "\n";
      return 2;
    }
    std::string names;
    for (const auto& file : files) names += (names.empty() ? "" : " ") + file;
    print_result(res, names, f.flag("quiet"));
    if (!res.ok()) rc = 1;
    prom += textfile_lines(res, files.back());
  }
  if (auto path = f.get("textfile")) write_textfile(*path, prom);
  return rc;
}

int key(const std::vector<std::string>& args) {
  Flags f("audit key", "sshring audit key --audit-key FILE [--pub] [--writer ID]",
          "Shows (or creates) a writer's Ed25519 audit key. Writers create their key on first start\n"
          "(mode 0600); give the public key to verifiers in their --trusted-keys file.");
  f.value("audit-key", "FILE", "the private key file (created if missing)");
  f.boolean("pub", "print the public key ('ssh-ed25519 BASE64')");
  f.value("writer", "ID", "print a trusted-keys line for this writer (component@host, or '*')");
  f.epilog(
      "Example:\n  echo \"relay@$(hostname) $(sshring audit key --pub --audit-key "
      "/var/lib/sshring/relay-audit.key)\""
      " >> /etc/sshring/audit-keys\n");
  if (!f.parse(args)) return 0;
  auto k = m::AuditKey::load_or_create(f.require("audit-key"));
  if (auto w = f.get("writer")) {
    std::cout << *w << " " << k.public_line() << "\n";
  } else if (f.flag("pub")) {
    std::cout << k.public_line() << "\n";
  } else {
    std::cout << k.fingerprint() << " " << f.require("audit-key") << "\n";
  }
  return 0;
}

int report(const std::vector<std::string>& args) {
  Flags f("audit report", "sshring audit report [--since 7d] [--json] [--html FILE] [--dir DIR] [FILE...]",
          "Reviews opt-out use: bypass flows by tag, unapproved and expired-grant flows first, top sources\n"
          "and targets, and every grant with its reason, approver, flows and bytes. Reads every record type\n"
          "from FILEs (relay, agent and grant logs, rotated files included) or all logs in DIR.");
  f.value("since", "DURATION", "report window, back from now (s, m, h, d)", "7d");
  f.value("dir", "DIR", "directory read when no FILE is given", kDefaultDir);
  f.value("top", "N", "rows in the top sources/targets tables", "10");
  f.value("max-flows", "N", "unapproved/expired flows listed one by one", "50");
  f.boolean("json", "print JSON instead of text tables");
  f.value("html", "FILE",
          "also write one self-contained HTML page (tables and inline SVG charts, no scripts)");
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
  if (auto html = f.get("html")) {
    std::ofstream out(*html, std::ios::trunc);
    out << rep.to_html();
    if (!out) throw std::runtime_error("cannot write " + *html);
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
      "       sshring audit key --audit-key FILE --pub   a writer's public audit key\n"
      "Run 'sshring audit SUBCOMMAND --help' for options. Record schema: docs/audit.md.\n";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << usage;
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "verify") return verify(rest);
  if (args[0] == "report") return report(rest);
  if (args[0] == "key") return key(rest);
  throw UsageError("unknown subcommand '" + args[0] + "' (expected verify, report or key)");
}

const sshring::cli::Registrar kAudit{
    {"audit", "verify the audit log chain; report bypass and grant use", run}};

}  // namespace
