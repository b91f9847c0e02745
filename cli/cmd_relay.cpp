// `sshring relay`: runs the io_uring relay: authenticated mode (--policy) and/or static routes (flags or a
// YAML file). build_relay_config() turns flags into a RelayConfig; authenticated mode adds its handshake
// there.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <string_view>
#include <thread>

#include "cli/command.h"
#include "cli/store_flags.h"
#include "common/error.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/sockaddr.h"
#include "metrics/audit.h"
#include "metrics/audit_metrics.h"
#include "metrics/audit_types.h"
#include "metrics/catalog.h"
#include "metrics/server.h"
#include "policy/etcd/nonce_claims.h"
#include "policy/etcd/session_ledger.h"
#include "relay/auth/auth_service.h"
#include "relay/config.h"
#include "relay/handover.h"
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
      .value(
          "max-startups", "S:R:F",
          "authenticated routes: unauthenticated connections; from S on refuse R% rising to all at F\n"
          "(random early drop, like sshd's MaxStartups; default 256:30:2048); not counted in --max-sessions")
      .value("max-startups-per-source", "N",
             "unauthenticated connections per source network, counted at accept (default 16)")
      .value("per-source-netblock", "V4:V6", "prefix lengths that make one source network (default 32:64)")
      .value("max-handshakes-per-source", "N",
             "authenticated routes: connections per client IP past their first byte and not yet\n"
             "connected upstream (default 64; raise it for many clients behind one NAT)")
      .value("shared-replay", "MODE",
             "with --etcd: each preamble nonce is also claimed in etcd, so a preamble replayed to\n"
             "another relay with the same --relay-id is refused. auto (default): when etcd does not\n"
             "answer, decide on this relay's replay cache (counted); require: refuse then; off: this\n"
             "relay's cache only (no etcd write per session)")
      .value("first-byte-timeout", "D",
             "close an unauthenticated connection that sent nothing by then (default 3s)")
      .value("connect-timeout", "D", "upstream connect timeout, e.g. 5s or 500ms (default 5s)")
      .value("idle-timeout", "D", "close sessions idle this long; 0 = never (default 0)")
      .value("drain-timeout", "D", "on SIGTERM, how long running sessions may finish (default 30s)")
      .value("splice-mode", "MODE", "inline (splice(2) on the worker, default) or ring (IORING_OP_SPLICE)")
      .value("metrics", "ADDR:PORT", "serve Prometheus metrics on this address")
      .value("audit-log", "FILE", "append a hash-chained session_end record per session")
      .boolean("audit-syslog", "also send each audit record to syslog/journald (for log shippers)")
      .value("audit-syslog-socket", "PATH", "unix socket --audit-syslog sends RFC 5424 messages to",
             "/dev/log")
      .value("audit-key", "FILE", "Ed25519 key signing audit checkpoints (created 0600 if missing)")
      .value("audit-failure", "refuse|continue",
             "while the audit log cannot be written: refuse new authenticated sessions (default) or admit "
             "them unrecorded",
             "refuse")
      .value("policy", "FILE",
             "authenticated mode: routes without --upstream take signed preambles (sshring connect)")
      .multi("relay-id", "ID", "authenticated mode: an id clients sign for (default: host name)")
      .boolean("quiet", "no per-session log lines")
      .value("control-socket", "PATH",
             "hand-over control socket (mode 0600, same user only, in a directory only this user or root "
             "can write); 'none' disables it",
             relay::kDefaultControlSocket)
      .boolean("takeover",
               "take over the relay serving --control-socket: its listeners and every established "
               "session move to this process without a reset; it exits when empty");
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
      "Live upgrade: start the new binary with the same flags plus --takeover (docs/operations.md).\n"
      "\n"
      "With --etcd, relays count each principal's sessions together: max_sessions holds across the\n"
      "fleet (counts under PREFIX/sessions/counts/, one lease per relay process; docs/etcd.md).\n"
      "\n"
      "Exit codes: 0 after a drain or after handing everything to a --takeover process, 1 on runtime\n"
      "errors, 2 on bad flags or config; with --takeover also 3 no relay of this user answers on the\n"
      "control socket (or its directory is not this user's alone: nothing was taken over), 4 the running "
      "relay's state cannot be read here or it\n"
      "refused, 5 the hand-over failed half-way; after 3, 4 and 5 the running relay serves on.");
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
                                      const std::shared_ptr<relay::HandshakeFactory>& handshake = nullptr) {
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
  if (auto v = f.get("max-startups")) relay::parse_max_startups(*v, "--max-startups", cfg.startups);
  if (f.has("max-startups-per-source"))
    cfg.startups.per_source = static_cast<uint32_t>(f.get_int("max-startups-per-source", 16, 1, 10'000'000));
  if (auto v = f.get("per-source-netblock")) relay::parse_netblock(*v, "--per-source-netblock", cfg.startups);
  if (f.has("first-byte-timeout"))
    cfg.startups.first_byte_timeout = flag_millis(f, "first-byte-timeout", false);
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

// Raw values: the audit log's sealing thread formats them, not the worker.
metrics::SessionEvent session_end_record(const relay::SessionSummary& s) {
  metrics::SessionEvent e;
  e.type = metrics::SessionEnd::kType;
  e.session_id = s.session_id;
  e.client = s.client;
  e.target_addr = s.upstream;
  e.upstream_local = s.upstream_local;
  e.bytes_up = s.bytes_client_to_upstream;
  e.bytes_down = s.bytes_upstream_to_client;
  e.duration_ms = s.duration_ns / 1'000'000;
  e.reason = relay::end_reason_name(s.reason);
  return e;
}

bool audit_refuses(const common::Flags& f) {
  auto v = f.get_or("audit-failure", "refuse");
  if (v != "refuse" && v != "continue")
    throw common::UsageError("--audit-failure " + v + ": expected refuse or continue");
  return v == "refuse";
}

nlohmann::json handover_record(const char* side, const relay::HandoverServer::Counts& c) {
  return metrics::RelayHandover{.side = side,
                                .sessions = c.sessions,
                                .listeners = c.listeners,
                                .peer_pid = static_cast<uint64_t>(std::max(c.peer_pid, 0))}
      .to_json();
}

std::shared_ptr<metrics::AuditLog> open_audit(const common::Flags& f) {
  if (!f.get("audit-log")) return nullptr;
  metrics::AuditOptions ao;
  ao.path = *f.get("audit-log");
  ao.component = "relay";
  ao.syslog = f.flag("audit-syslog");
  ao.syslog_socket = f.get_or("audit-syslog-socket", "/dev/log");
  ao.key_path = f.get_or("audit-key", "");
  return std::make_shared<metrics::AuditLog>(ao);
}

// systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram to $NOTIFY_SOCKET.
// Type=notify units learn READY=1 and, after a hand-over, the new MAINPID from here.
void notify_systemd(const std::string& state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || (path[0] != '/' && path[0] != '@')) return;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  size_t n = std::strlen(path);
  if (n >= sizeof(a.sun_path)) return;
  std::memcpy(a.sun_path, path, n);
  if (a.sun_path[0] == '@') a.sun_path[0] = '\0';  // abstract namespace
  common::UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return;
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n);
  if (::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&a), len) < 0)
    common::log_warn("cannot notify systemd", {{"socket", path}, {"error", std::strerror(errno)}});
}

// One relay process: its parts are members in the order they start, so they are destroyed in the
// reverse order: the hand-over server first, the metrics exporter stops serving before the relay's
// stats go away, and the auth service outlives every session.
class RelayProcess {
 public:
  explicit RelayProcess(const common::Flags& f)
      : f_(f),
        takeover_(f.flag("takeover")),
        control_(f.get_or("control-socket", relay::kDefaultControlSocket)) {
    if (takeover_ && control_ == "none") throw common::UsageError("--takeover needs a --control-socket PATH");
  }

  int run() {
    open_outputs();
    start_auth();
    handshake_ = auth_ ? auth_->factory() : nullptr;
    cfg_ = build_relay_config(f_, handshake_);
    if (f_.get("audit-log") && !auth_) {
      // Static routes only: in authenticated mode the handshake's on_end writes the session records.
      // By reference: with --takeover the log opens after start, before any session can end.
      cfg_.on_session_end = [this](const relay::SessionSummary& s) {
        if (audit_) audit_->append_session(session_end_record(s));
      };
    }
    // Signals go to this thread only (workers inherit the mask), read with sigtimedwait.
    sigemptyset(&signals_);
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&signals_, sig);
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);

    relay_ = std::make_unique<relay::Relay>(cfg_);
    stop_serving_.server = metrics_server_.get();
    if (takeover_) {
      take_over();
    } else {
      // A plain start (after a restart or a crash) has no replay cache from the relay before it.
      if (auth_) auth_->factory()->refuse_hellos_from_before_start();
      relay_->start();
    }
    register_relay_metrics();
    for (const auto& a : relay_->listen_addresses())
      common::log_info("relay listening",
                       {{"listen", a.to_string()}, {"workers", std::to_string(relay_->worker_count())}});
    serve_handovers();
    if (takeover_) relay_->resume_after_handover();
    notify_systemd("READY=1\nMAINPID=" + std::to_string(::getpid()));
    wait_for_signals();
    relay_->wait();
    if (audit_) audit_->flush();
    common::log_info("relay stopped");
    return 0;
  }

 private:
  // One session_end record per session (docs/audit.md), batched off the hot loop by AuditLog. With
  // --takeover the log opens only after the old relay wrote its last record (one chain). The exporter
  // comes first so the policy reloader can count reloads from its first load; with --takeover its
  // families are registered now but the port is bound only once the old relay let go of it.
  void open_outputs() {
    if (!takeover_) audit_ = open_audit(f_);
    if (auto m = f_.get("metrics")) {
      metrics_server_ = std::make_unique<metrics::Server>("relay");
      if (!takeover_) metrics_server_->listen(*m);
    }
    if (metrics_server_ && audit_) metrics::register_audit(*metrics_server_, audit_.get());
  }

  relay::auth::AuthOptions auth_options() const {
    relay::auth::AuthOptions o;
    o.refuse_when_audit_unwritable = audit_refuses(f_);
    if (f_.has("max-handshakes-per-source"))
      o.max_handshakes_per_source =
          static_cast<uint32_t>(f_.get_int("max-handshakes-per-source", 64, 1, 10'000'000));
    return o;
  }

  // Authenticated mode (docs/protocol.md).
  void start_auth() {
    if (!f_.has("policy") && !etcd_requested(f_)) return;
    if (metrics_server_) policy_metrics_ = metrics::register_policy(*metrics_server_);
    auto ids = f_.all("relay-id");
    auto auth = auth_options();
    const std::string shared = f_.get_or("shared-replay", "auto");
    if (shared != "auto" && shared != "require" && shared != "off")
      throw common::UsageError("--shared-replay " + shared + ": use auto, require or off");
    std::optional<std::chrono::milliseconds> window;
    if (shared != "off") window = auth.max_skew + auth.max_future_skew;  // a nonce is live this long
    auto fleet = fleet_relay(f_, ids.empty() ? relay::auth::default_relay_id() : ids.front(), window);
    if (shared == "require" && !fleet.claims)
      throw common::UsageError("--shared-replay require needs --etcd (or an etcd:// grant store)");
    ledger_ = fleet.ledger;
    claims_ = fleet.claims;
    if (ledger_) ledger_->start();
    if (claims_) claims_->start();
    if (metrics_server_ && ledger_) register_fleet_metrics();
    auth.session_ledger = ledger_;
    auth.nonce_claims = claims_;
    auth.require_nonce_claims = shared == "require";
    auth_ = std::make_unique<relay::auth::AuthService>(
        relay::auth::AuthServiceOptions{.policy_path = f_.get_or("policy", ""),
                                        .relay_ids = f_.all("relay-id"),
                                        .audit = audit_.get(),
                                        .policy_metrics = metrics_server_ ? &policy_metrics_ : nullptr,
                                        .auth = std::move(auth),
                                        .source = snapshot_source(f_),
                                        .cache_dir = cache_dir(f_)});
  }

  // Fleet-wide session counts (docs/etcd.md): whether they are current, what the other relays hold.
  void register_fleet_metrics() {
    metrics::register_fleet(
        *metrics_server_,
        [ledger = std::weak_ptr(ledger_), claims = std::weak_ptr(claims_),
         with_claims = claims_ != nullptr]() -> std::optional<metrics::FleetStats> {
          auto l = ledger.lock();
          if (!l) return std::nullopt;
          const auto st = l->status();
          metrics::FleetStats f{
              .up = st.up, .others = st.others, .relays = st.instances, .errors = st.errors};
          if (auto c = claims.lock(); c && with_claims) {
            const auto n = c->counts();
            f.claims = true;
            f.fresh = n.fresh;
            f.replayed = n.replayed;
            f.unavailable = n.unavailable;
            f.failed = n.failed;
          }
          return f;
        });
  }

  // --takeover: everything of the running relay's, parked, before this process writes a byte of audit.
  void take_over() {
    takeover_client_ = std::make_unique<relay::HandoverClient>(control_);
    relay::RelayExport state = takeover_client_->receive();
    const size_t sessions = state.sessions.size(), listeners = state.listeners.size();
    try {
      relay_->start_from(std::move(state));
    } catch (const std::exception& e) {
      takeover_client_->refuse(e.what());
      throw relay::HandoverError(relay::kTakeoverRefused, std::string("--takeover: ") + e.what());
    }
    // Test hook: die half-way, after taking everything and before READY.
    if (const char* crash = std::getenv("SSHRING_TEST_HANDOVER_CRASH");
        crash && std::string(crash) == "before_ready")
      std::abort();
    if (!takeover_client_->ready_and_wait_done())
      common::log_warn(
          "--takeover: the old relay went away without DONE; carrying on with what it handed over");
    const int from = takeover_client_->peer_pid();
    audit_ = open_audit(f_);
    if (auth_) auth_->factory()->set_audit(audit_.get());
    if (audit_) audit_->append(handover_record("received", {listeners, sessions, from}));
    common::log_info("took over", {{"sessions", std::to_string(sessions)},
                                   {"listeners", std::to_string(listeners)},
                                   {"from_pid", std::to_string(from)}});
    if (metrics_server_) metrics_server_->listen(*f_.get("metrics"));
    if (metrics_server_ && audit_) metrics::register_audit(*metrics_server_, audit_.get());
  }

  void register_relay_metrics() {
    auto m = f_.get("metrics");
    if (!m) return;
    relay_metrics_ = metrics::register_relay(*metrics_server_, relay_->stats());
    if (relay_metrics_.max_sessions) relay_metrics_.max_sessions->Set(static_cast<double>(cfg_.max_sessions));
    if (auth_) auth_->factory()->set_metrics(relay_metrics_);
    common::log_info("metrics listening",
                     {{"metrics", *m}, {"port", std::to_string(metrics_server_->port())}});
  }

  // At commit this relay writes its record, flushes the audit log and lets go of it (one writer per
  // file: the new relay continues its chain; no session is left here to write to it), and stops
  // serving metrics so the new process can take the port.
  void let_go(const relay::HandoverServer::Counts& c) {
    if (audit_) {
      audit_->append(handover_record("sent", c));
      audit_->flush();
    }
    if (auth_) auth_->factory()->set_audit(nullptr);
    audit_.reset();
    if (metrics_server_) metrics_server_->stop();
    // The new process is the service now (systemd tracks it instead of this one, which exits).
    if (c.peer_pid > 0) notify_systemd("MAINPID=" + std::to_string(c.peer_pid));
  }

  // The control socket for the next hand-over.
  void serve_handovers() {
    if (control_ == "none") return;
    try {
      handover_ = std::make_unique<relay::HandoverServer>(
          *relay_, control_, [this](const relay::HandoverServer::Counts& c) { let_go(c); },
          // What each hand-over attempt on this (old) side came to.
          [handovers = relay_metrics_.handovers](std::string_view result) {
            if (handovers) handovers->Add({{"result", std::string(result)}}).Increment();
          });
    } catch (const common::UsageError& e) {
      common::log_warn("no hand-over control socket", {{"error", e.what()}});
    }
  }

  // What SIGHUP reloads; each logs its own outcome and keeps the running state on errors.
  void reload() {
    if (auth_) auth_->reload();
    if (f_.get("config")) {
      try {
        relay_->reload(build_relay_config(f_, handshake_));
        common::log_info("config reloaded", {{"config", *f_.get("config")}});
      } catch (const std::exception& e) {
        common::log_error("config reload failed; keeping the running config", {{"error", e.what()}});
      }
    }
    if (!auth_ && !f_.get("config")) common::log_warn("SIGHUP ignored: nothing to reload (no --config)");
  }

  // SIGHUP reloads; the first SIGTERM/SIGINT drains, a second one closes every session now.
  void wait_for_signals() {
    bool draining = false;
    while (!relay_->finished()) {
      timespec ts{0, 200'000'000};
      int sig = sigtimedwait(&signals_, nullptr, &ts);
      if (sig == SIGHUP) {
        reload();
      } else if ((sig == SIGTERM || sig == SIGINT) && !draining) {
        draining = true;
        common::log_info("draining", {{"signal", sig == SIGTERM ? "TERM" : "INT"},
                                      {"active", std::to_string(relay_->sessions_active())}});
        relay_->begin_drain();
      } else if (sig == SIGTERM || sig == SIGINT) {
        common::log_warn("second signal: closing every session now");
        if (handover_) handover_->abort();  // a hand-over holding the sessions lets go of them first
        relay_->stop();
      }
    }
  }

  const common::Flags& f_;
  const bool takeover_;
  const std::string control_;
  std::shared_ptr<metrics::AuditLog> audit_;
  std::unique_ptr<metrics::Server> metrics_server_;
  metrics::PolicyMetrics policy_metrics_;
  std::unique_ptr<relay::auth::AuthService> auth_;
  std::shared_ptr<relay::HandshakeFactory> handshake_;
  relay::RelayConfig cfg_;
  sigset_t signals_{};
  std::unique_ptr<relay::Relay> relay_;
  struct StopServing {
    metrics::Server* server = nullptr;
    ~StopServing() {
      if (server) server->stop();
    }
  } stop_serving_;  // destroyed before relay_: no scrape reads freed stats
  std::unique_ptr<relay::HandoverClient> takeover_client_;
  std::shared_ptr<policy::etcd::EtcdSessionLedger> ledger_;
  std::shared_ptr<policy::etcd::EtcdNonceClaims> claims_;
  metrics::RelayMetrics relay_metrics_;
  std::unique_ptr<relay::HandoverServer> handover_;
};

int run_relay_impl(const std::vector<std::string>& args) {
  common::Flags f = relay_flags();
  if (!f.parse(args)) return 0;
  return RelayProcess(f).run();
}

int run_relay(const std::vector<std::string>& args) {
  try {
    return run_relay_impl(args);
  } catch (const relay::HandoverError& e) {
    std::cerr << "sshring relay: " << e.what() << "\n";
    return e.code();
  }
}

const Registrar kRelay{{"relay",
                        "relay SSH sessions through io_uring (authenticated with --policy, or static routes)",
                        run_relay}};

}  // namespace
}  // namespace sshring::cli
