// `sshring relay`: runs the io_uring relay: authenticated mode (--policy) and/or static routes (flags or a
// YAML file). build_relay_config() turns flags into a RelayConfig; authenticated mode adds its handshake
// there.
#include <signal.h>
#include <time.h>

#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <thread>

#include "cli/command.h"
#include "cli/store_flags.h"
#include "common/error.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/sockaddr.h"
#include "metrics/audit.h"
#include "metrics/catalog.h"
#include "metrics/server.h"
#include "relay/auth/auth_service.h"
#include "relay/config.h"
#include "relay/relay.h"

namespace sshring::cli {
namespace {

common::Flags relay_flags() {
  common::Flags f(
      "relay", "sshring relay --listen ADDR:PORT --upstream ADDR:PORT [OPTIONS]",
      "Relays TCP connections (SSH) from a listen address to an upstream through io_uring, splicing\n"
      "payload through pipes so it never enters user space. Routes come from --listen/--upstream\n"
      "and/or a --config file; SIGTERM/SIGINT drain (a second signal ends at once), SIGHUP reloads\n"
      "the config file.");
  f.value("listen", "ADDR:PORT", "address to accept clients on (IPv4 or [IPv6]); port 0 picks one")
      .value("upstream", "ADDR:PORT", "where every client of --listen is relayed to")
      .value("config", "FILE", "YAML file with routes and limits (see docs); reloaded on SIGHUP")
      .value("workers", "N", "worker threads, each with its own io_uring (default: one per CPU)")
      .value("max-sessions", "N", "concurrent sessions before new clients are refused (default 10000)")
      .value("connect-timeout", "D", "upstream connect timeout, e.g. 5s or 500ms (default 5s)")
      .value("idle-timeout", "D", "close sessions idle this long; 0 = never (default 0)")
      .value("drain-timeout", "D", "on SIGTERM, how long running sessions may finish (default 30s)")
      .value("splice-mode", "MODE", "inline (splice(2) on the worker, default) or ring (IORING_OP_SPLICE)")
      .value("metrics", "ADDR:PORT", "serve Prometheus metrics on this address")
      .value("audit-log", "FILE", "append a hash-chained session_end record per session")
      .boolean("audit-syslog", "also send each audit record to syslog/journald (for log shippers)")
      .value("policy", "FILE",
             "authenticated mode: routes without --upstream take signed preambles (sshring connect)")
      .multi("relay-id", "ID", "authenticated mode: an id clients sign for (default: host name)")
      .boolean("quiet", "no per-session log lines");
  add_etcd_flags(f);  // --etcd: authenticated mode with policy and grants from etcd
  add_cache_flag(f);
  f.epilog(
      "Examples:\n"
      "  sshring relay --listen 0.0.0.0:2222 --policy /etc/sshring/policy.yaml --relay-id relay-1 \\\n"
      "      --metrics 127.0.0.1:9101 --audit-log /var/log/sshring/relay.audit.jsonl\n"
      "  sshring relay --listen 0.0.0.0:2222 --upstream 10.0.0.5:22\n"
      "  sshring relay --config /etc/sshring/relay.yaml --metrics 127.0.0.1:9101\n"
      "\n"
      "Config file:\n"
      "  workers: 2\n"
      "  connect_timeout: 5s\n"
      "  routes:\n"
      "    - listen: 0.0.0.0:2222\n"
      "      upstream: 10.0.0.5:22\n"
      "\n"
      "Exit codes: 0 after a drain, 1 on runtime errors, 2 on bad flags or config.");
  return f;
}

std::chrono::milliseconds flag_millis(const common::Flags& f, std::string_view name, bool allow_zero) {
  std::string v = *f.get(name);
  auto d = relay::parse_millis(v);
  if (!d || (!allow_zero && d->count() == 0))
    throw common::UsageError("--" + std::string(name) + " " + v +
                             ": expected a duration like 500ms, 5s or 2m" + (allow_zero ? " (or 0)" : ""));
  return *d;
}

}  // namespace

// Builds the relay configuration from flags and the optional config file (flags win over the file
// for limits; --listen/--upstream add one route to the file's routes). With `handshake` (authenticated
// mode), --listen may come without --upstream and file routes may omit `upstream`: those routes get
// the handshake, which picks the upstream per session.
relay::RelayConfig build_relay_config(const common::Flags& f,
                                      std::shared_ptr<relay::HandshakeFactory> handshake = nullptr) {
  relay::ConfigFile file;
  if (auto path = f.get("config")) file = relay::load_config_file(*path, handshake != nullptr);
  relay::RelayConfig cfg = std::move(file.cfg);
  if (f.has("upstream") && !f.has("listen")) throw common::UsageError("--upstream needs --listen ADDR:PORT");
  if (f.has("listen") && !f.has("upstream") && !handshake)
    throw common::UsageError("--listen needs --upstream ADDR:PORT (or put routes in --config FILE)");
  if (f.has("listen")) {
    relay::Route r;
    r.listen = common::SockAddr::parse_or_throw(*f.get("listen"), "--listen");
    if (f.has("upstream")) r.upstream = common::SockAddr::parse_or_throw(*f.get("upstream"), "--upstream");
    cfg.routes.push_back(std::move(r));
  }
  for (auto& r : cfg.routes)
    if (!r.upstream) r.handshake = handshake;
  if (f.has("workers")) cfg.workers = static_cast<unsigned>(f.get_int("workers", 0, 0, 256));
  if (f.has("max-sessions"))
    cfg.max_sessions = static_cast<uint32_t>(f.get_int("max-sessions", 10000, 1, 10'000'000));
  if (f.has("connect-timeout")) cfg.connect_timeout = flag_millis(f, "connect-timeout", false);
  if (f.has("idle-timeout")) cfg.idle_timeout = flag_millis(f, "idle-timeout", true);
  if (f.has("drain-timeout")) cfg.drain_timeout = flag_millis(f, "drain-timeout", true);
  if (auto m = f.get("splice-mode")) {
    if (*m == "inline") {
      cfg.splice_mode = relay::SpliceMode::kInline;
    } else if (*m == "ring") {
      cfg.splice_mode = relay::SpliceMode::kRing;
    } else {
      throw common::UsageError("--splice-mode " + *m + ": expected inline or ring");
    }
  }
  if (f.flag("quiet")) cfg.log_sessions = false;
  if (cfg.routes.empty())
    throw common::UsageError("no routes: give --listen ADDR:PORT --upstream ADDR:PORT, or --config FILE");
  relay::validate(cfg);
  return cfg;
}

namespace {

nlohmann::json session_end_record(const relay::SessionSummary& s) {
  char id[17];
  std::snprintf(id, sizeof(id), "%016llx", static_cast<unsigned long long>(s.session_id));
  nlohmann::json r = {{"type", "session_end"},
                      {"session_id", id},
                      {"client", s.client.to_string()},
                      {"bytes_up", s.bytes_client_to_upstream},
                      {"bytes_down", s.bytes_upstream_to_client},
                      {"duration_ms", s.duration_ns / 1'000'000},
                      {"reason", relay::end_reason_name(s.reason)}};
  if (s.upstream.len()) r["target_addr"] = s.upstream.to_string();
  if (s.upstream_local.len()) r["upstream_local"] = s.upstream_local.to_string();
  return r;
}

int run_relay(const std::vector<std::string>& args) {
  common::Flags f = relay_flags();
  if (!f.parse(args)) return 0;
  // One session_end record per session (docs/audit.md), batched off the hot loop by AuditLog.
  std::shared_ptr<metrics::AuditLog> audit;
  if (auto path = f.get("audit-log")) {
    metrics::AuditOptions ao;
    ao.path = *path;
    ao.component = "relay";
    ao.syslog = f.flag("audit-syslog");
    audit = std::make_shared<metrics::AuditLog>(ao);
  }
  // The exporter comes first so the policy reloader can count reloads from its first load; it stops
  // serving (StopServing below) before the relay's worker stats go away.
  std::unique_ptr<metrics::Server> metrics_server;
  metrics::PolicyMetrics policy_metrics;
  if (auto m = f.get("metrics")) metrics_server = std::make_unique<metrics::Server>(*m, "relay");
  // Authenticated mode (docs/protocol.md); declared before the relay so it outlives every session.
  std::unique_ptr<relay::auth::AuthService> auth;
  if (f.has("policy") || etcd_requested(f)) {
    if (metrics_server) policy_metrics = metrics::register_policy(*metrics_server);
    auth = std::make_unique<relay::auth::AuthService>(
        relay::auth::AuthServiceOptions{.policy_path = f.get_or("policy", ""),
                                        .relay_ids = f.all("relay-id"),
                                        .audit = audit.get(),
                                        .policy_metrics = metrics_server ? &policy_metrics : nullptr,
                                        .source = snapshot_source(f),
                                        .cache_dir = cache_dir(f)});
  }
  std::shared_ptr<relay::HandshakeFactory> handshake = auth ? auth->factory() : nullptr;
  relay::RelayConfig cfg = build_relay_config(f, handshake);
  if (audit && !auth) {
    // Static routes only: in authenticated mode the handshake's on_end writes the session records.
    cfg.on_session_end = [audit](const relay::SessionSummary& s) { audit->append(session_end_record(s)); };
  }

  // Signals go to this thread only (workers inherit the mask), read with sigtimedwait.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  relay::Relay relay(cfg);
  struct StopServing {
    metrics::Server* server;
    ~StopServing() {
      if (server) server->stop();
    }
  } stop_serving{metrics_server.get()};  // destroyed before `relay`: no scrape reads freed stats
  relay.start();
  if (auto m = f.get("metrics")) {
    auto rm = metrics::register_relay(*metrics_server, relay.stats());
    if (rm.max_sessions) rm.max_sessions->Set(static_cast<double>(cfg.max_sessions));
    if (auth) auth->factory()->set_metrics(rm);
    common::log_info("metrics listening",
                     {{"metrics", *m}, {"port", std::to_string(metrics_server->port())}});
  }
  for (const auto& a : relay.listen_addresses())
    common::log_info("relay listening",
                     {{"listen", a.to_string()}, {"workers", std::to_string(relay.worker_count())}});

  // What SIGHUP reloads; each hook logs its own outcome and keeps the running state on errors.
  // (Authenticated mode adds its policy reload here.)
  std::vector<std::function<void()>> on_sighup;
  if (auth) on_sighup.push_back([&] { auth->reload(); });
  if (f.get("config")) {
    on_sighup.push_back([&] {
      try {
        relay.reload(build_relay_config(f, handshake));
        common::log_info("config reloaded", {{"config", *f.get("config")}});
      } catch (const std::exception& e) {
        common::log_error("config reload failed; keeping the running config", {{"error", e.what()}});
      }
    });
  }

  bool draining = false;
  while (!relay.finished()) {
    timespec ts{0, 200'000'000};
    int sig = sigtimedwait(&set, nullptr, &ts);
    if (sig == SIGHUP) {
      if (on_sighup.empty()) common::log_warn("SIGHUP ignored: nothing to reload (no --config)");
      for (auto& hook : on_sighup) hook();
    } else if (sig == SIGTERM || sig == SIGINT) {
      if (!draining) {
        draining = true;
        common::log_info("draining", {{"signal", sig == SIGTERM ? "TERM" : "INT"},
                                      {"active", std::to_string(relay.sessions_active())}});
        relay.begin_drain();
      } else {
        common::log_warn("second signal: closing every session now");
        relay.stop();
      }
    }
  }
  relay.wait();
  if (audit) audit->flush();
  common::log_info("relay stopped");
  return 0;
}

const Registrar kRelay{{"relay",
                        "relay SSH sessions through io_uring (authenticated with --policy, or static routes)",
                        run_relay}};

}  // namespace
}  // namespace sshring::cli
