#include "metrics/audit_metrics.h"

namespace sshring::metrics {

void register_audit(Server& server, const AuditLog* log) {
  server.add_collector([log] {
    AuditStats s = log->stats();
    Labels l{{"writer", log->writer_id()}};
    std::vector<prometheus::MetricFamily> out;
    auto counter = [&](const char* name, const char* help, uint64_t v) {
      auto f = counter_family(name, help);
      add_sample(f, l, static_cast<double>(v));
      out.push_back(std::move(f));
    };
    auto gauge = [&](const char* name, const char* help, double v) {
      auto f = gauge_family(name, help);
      add_sample(f, l, v);
      out.push_back(std::move(f));
    };
    counter("sshring_audit_records_total", "Audit records sealed into the chain (checkpoints included).",
            s.records);
    counter("sshring_audit_write_errors_total", "Audit log writes that failed (retried).", s.write_errors);
    counter("sshring_audit_dropped_total", "Audit records dropped while the log was unwritable (see log_gap).",
            s.dropped);
    counter("sshring_audit_reopened_total", "Times the live audit file was found deleted or replaced.",
            s.reopened);
    counter("sshring_audit_syslog_errors_total", "Audit records the syslog socket did not take.", s.syslog_errors);
    counter("sshring_audit_checkpoints_total", "Signed audit checkpoints written.", s.checkpoints);
    gauge("sshring_audit_writable", "1 while the audit log can be written, 0 after a failed write.",
          s.writable ? 1 : 0);
    gauge("sshring_audit_last_checkpoint_timestamp_seconds", "Unix time of the last signed checkpoint (0: none).",
          static_cast<double>(s.last_checkpoint_unix));
    gauge("sshring_audit_checkpoint_interval_seconds",
          "Promised longest time between checkpoints (0: no audit key).",
          static_cast<double>(s.checkpoint_interval_s));
    return out;
  });
}

}  // namespace sshring::metrics
