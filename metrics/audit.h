// One audit log for relay, agent and grant changes: JSON lines, hash-chained (each record carries
// the SHA-256 of the previous line), durable, rotated by size without breaking the chain. With an audit
// key, signed checkpoints every N records or T seconds and at clean shutdown prove the chain was
// written by the key's holder; with syslog on, each record also goes out as an RFC 5424 message.
// Schema: docs/audit.md. Record structs: metrics/audit_types.h.
//
// Failure semantics: a write that fails (disk full, I/O error) keeps its records pending and retries;
// `writable()` is false until a write succeeds again, so callers can refuse work they could not audit.
// `commit()` returns only once its record is on disk, or takes the record back out of the chain and
// returns false. If the live file is deleted or replaced, the writer restores the chain into a new file
// at the same path (from its open descriptor) and records that it did.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "metrics/audit_body.h"

namespace sshring::metrics {

struct SessionEvent;  // metrics/audit_types.h

inline constexpr uint64_t kDefaultCheckpointEvery = 1000;
inline constexpr std::chrono::seconds kDefaultCheckpointInterval{60};

struct AuditOptions {
  std::string path;                               // e.g. /var/log/sshring/relay.audit.jsonl
  std::string component;                          // "relay", "agent", "grant"
  bool fsync_each = false;                        // true: append() returns after the record is on disk
  std::chrono::milliseconds batch_interval{200};  // batched mode: bound on time to disk
  uint64_t rotate_bytes = 256ull << 20;           // rotate when the file grows past this
  bool syslog = false;                            // also send each record as RFC 5424 to syslog_socket
  std::string syslog_socket = "/dev/log";         // unix datagram socket of the local syslog daemon
  std::string key_path;  // Ed25519 audit key (created if missing); empty: no checkpoints
  uint64_t checkpoint_every = kDefaultCheckpointEvery;
  std::chrono::seconds checkpoint_interval = kDefaultCheckpointInterval;  // also a heartbeat when idle
  uint64_t max_pending_bytes = 64ull << 20;  // while unwritable: buffer this much, then drop (log_gap)
};

struct AuditStats {
  uint64_t records = 0;      // records sealed into the chain (checkpoints included)
  uint64_t checkpoints = 0;  // checkpoints written
  uint64_t write_errors = 0;
  uint64_t dropped = 0;        // records dropped while the log was unwritable (each gap is a log_gap record)
  uint64_t reopened = 0;       // live file found deleted or replaced and restored
  uint64_t syslog_errors = 0;  // messages the syslog socket did not take
  bool writable = true;
  int64_t last_checkpoint_unix = 0;  // 0: none yet
  uint64_t checkpoint_interval_s = 0;
};

class AuditLog {
 public:
  // Opens (creating directories and the file as needed) and continues the chain from the last
  // complete line. Throws std::runtime_error naming the file on failure.
  explicit AuditLog(AuditOptions opts);
  ~AuditLog();  // final checkpoint (with a key), flushes
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Appends one record. `record` must be an object with a "type" field; the log adds ts, component,
  // host, seq and prev. Thread-safe; in batched mode it does not wait for the disk. Never throws on
  // I/O failure (counted, logged, retried).
  void append(nlohmann::json record);
  // A typed record (metrics/audit_types.h). In batched mode its line is built by the thread that
  // seals it, not by the caller: a relay worker pays for one move and one allocation per record. Types
  // with fields() (the session records) are written straight into the line, without a json object.
  template <class R>
  requires requires(const R& r) { r.to_json(); }
  void append(R r) {
    if constexpr (requires(BodyFields & f) { r.fields(f); }) {
      append_fields_deferred(R::kType, [r = std::move(r)](BodyFields& f) { r.fields(f); });
    } else {
      append_deferred([r = std::move(r)] { return r.to_json(); });
    }
  }
  // A session_start, session_end or session_deny from a relay: queued as raw values and formatted on
  // the sealing thread (at once in fsync-each mode). No allocation on the caller's thread. Throws
  // std::invalid_argument for any other type.
  void append_session(SessionEvent e);
  // Appends the record `make` returns, called later on the sealing thread (at once in fsync-each
  // mode). `make` must return an object with a "type" field and must not touch this log.
  void append_deferred(std::function<nlohmann::json()> make);
  // Appends a record of `type` (a literal) whose fields `fill` lists, called later on the sealing
  // thread; the views it adds must stay valid while it runs (they point into the closure).
  void append_fields_deferred(const char* type, std::function<void(BodyFields&)> fill);
  // Appends and waits until the record is on disk. On failure the record is taken back out of the
  // chain (it never reaches the file) and false is returned with *error set.
  bool commit(nlohmann::json record, std::string* error = nullptr);
  template <class R>
  requires requires(const R& r) { r.to_json(); }
  bool commit(const R& r, std::string* error = nullptr) { return commit(r.to_json(), error); }
  // Writes every record appended so far; true if they are all on disk.
  bool flush();
  // Cheap health check (one atomic load): false while the last write failed.
  [[nodiscard]] bool writable() const;
  // Writes that failed (disk full, I/O error); each is also logged.
  [[nodiscard]] uint64_t write_errors() const;
  [[nodiscard]] AuditStats stats() const;
  // component@host: names the writer in checkpoints, syslog and trusted-keys files.
  [[nodiscard]] const std::string& writer_id() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sshring::metrics
