// Prometheus view of an audit writer (docs/metrics.md): health, failures, checkpoints. Read at scrape
// time from AuditLog::stats(); the log must outlive the server's serving (Server::stop first).
#pragma once

#include "metrics/audit.h"
#include "metrics/server.h"

namespace sshring::metrics {

void register_audit(Server& server, const AuditLog* log);

}  // namespace sshring::metrics
