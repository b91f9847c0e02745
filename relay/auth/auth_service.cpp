#include "relay/auth/auth_service.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "bridge/grant_records.h"
#include "common/host.h"
#include "metrics/audit.h"
#include "metrics/catalog.h"

namespace sshring::relay::auth {

std::string default_relay_id() {
  return common::host_name("sshring-relay");
}

AuthService::AuthService(AuthServiceOptions opts) : ids_(opts.relay_ids) {
  if (ids_.empty()) ids_.push_back(default_relay_id());
  policy::ReloaderOptions ro;
  ro.policy_path = opts.policy_path;
  ro.watch = opts.watch;
  ro.observer = policy::observe(opts.policy_metrics);
  ro.source = opts.source;  // etcd (set by the CLI): policy_path is then unused
  if (opts.cache_dir) ro.cache_dir = *opts.cache_dir;
  // Revocations and denials this process verified outlive their removal from the store; on disk
  // where a cache directory is in use (given, or the default one with a source).
  if (opts.cache_dir || ro.source) ro.ledger_path = policy::decision_ledger_path(ro.cache_dir);
  ro.handle_sighup = false;  // the relay command owns signals and calls reload()
  if (!opts.audit_path.empty())
    audit_ = std::make_unique<metrics::AuditLog>(
        metrics::AuditOptions{.path = opts.audit_path, .component = "relay"});
  // Stored grants this relay refuses to honour: counted once each (the observer), with one
  // grant_reject record.
  ro.on_grant_rejected = [audit = audit_ ? audit_.get() : opts.audit](const policy::CheckedGrant& c) {
    if (audit) audit->append(bridge::grant_reject_record(c));
  };
  reloader_ = std::make_unique<policy::Reloader>(cache_, ro);
  reloader_->reload_or_throw();
  AuthOptions a = std::move(opts.auth);
  a.relay_ids = ids_;
  a.audit = audit_ ? audit_.get() : opts.audit;
  factory_ = std::make_shared<AuthHandshakeFactory>(cache_, std::move(a));
  // Threads started here (reloader) inherit a mask with every signal blocked, so SIGTERM/SIGHUP
  // reach the thread that waits for them (the relay command's sigtimedwait).
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  reloader_->start();
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

AuthService::~AuthService() {
  reloader_->stop();
  factory_.reset();
}

bool AuthService::reload(std::string* error) {
  return reloader_->reload(error);
}

}  // namespace sshring::relay::auth
