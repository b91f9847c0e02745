// One audit log for relay, agent and grant changes: JSON lines, hash-chained (each record carries
// the SHA-256 of the previous line), durable, rotated by size without breaking the chain.
// Schema: docs/audit.md. Record types: session_start, session_end, session_deny, grant_add,
// grant_revoke, grant_expire, flow_open, flow_close, policy_reload.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace sshring::metrics {

struct AuditOptions {
  std::string path;                               // e.g. /var/log/sshring/relay.audit.jsonl
  std::string component;                          // "relay", "agent", "grant"
  bool fsync_each = false;                        // true: append() returns after the record is on disk
  std::chrono::milliseconds batch_interval{200};  // batched mode: bound on time to disk
  uint64_t rotate_bytes = 256ull << 20;           // rotate when the file grows past this
  bool syslog = false;                            // also send each record to syslog/journald
};

class AuditLog {
 public:
  // Opens (creating directories and the file as needed) and continues the chain from the last
  // complete line. Throws std::runtime_error naming the file on failure.
  explicit AuditLog(AuditOptions opts);
  ~AuditLog();  // flushes
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Appends one record. `record` must be an object with a "type" field; the log adds ts, component,
  // host, seq and prev. Thread-safe; in batched mode it does not wait for the disk.
  void append(nlohmann::json record);
  // Blocks until every record appended so far is written and fsynced.
  void flush();
  // Writes that failed (disk full, I/O error); each is also logged. Also exported by the owner as a
  // metric where it has one.
  [[nodiscard]] uint64_t write_errors() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sshring::metrics
