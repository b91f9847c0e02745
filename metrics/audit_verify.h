// Reading audit files back: line splitting with hard limits, chain verification across rotated files
// (`sshring audit verify`) and the opt-out review (`sshring audit report`).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "metrics/audit_record.h"

namespace sshring::metrics {

// Calls `fn(line_no, line, complete)` for each line of `path` (line without its newline; `complete`
// is false for a last line without a newline). Lines over kMaxRecordBytes are passed truncated to
// kMaxRecordBytes + 1 bytes so the parser rejects them. Throws std::runtime_error naming the file if it
// cannot be read.
void for_each_line(const std::string& path,
                   const std::function<void(uint64_t line_no, std::string_view line, bool complete)>& fn);

struct AuditFinding {
  std::string file;
  uint64_t line = 0;
  std::string message;
  [[nodiscard]] std::string to_string() const { return file + ":" + std::to_string(line) + ": " + message; }
};

struct VerifyResult {
  uint64_t records = 0;                // records checked
  std::vector<AuditFinding> warnings;  // torn last line, chain continuing from files not given
  std::optional<AuditFinding> error;   // the first bad record; checking stops there
  std::vector<AuditFinding> gaps;      // collector mode: missing seq ranges (checking goes on)
  uint64_t last_seq = 0;
  std::string last_hash;       // SHA-256 of the last good line
  std::string writer;          // component@host of the chain
  uint64_t checkpoints = 0;    // checkpoints whose signature verified
  uint64_t unsigned_tail = 0;  // records after the last verified checkpoint
  [[nodiscard]] bool ok() const { return !error.has_value() && gaps.empty(); }
};

class TrustedKeys;

struct VerifyOptions {
  // Check checkpoint signatures against these keys (by writer, then `*`); null: chain only.
  const TrustedKeys* trusted = nullptr;
  // A chain whose first record does not start it (prev not zeros: the oldest file is gone) is an
  // error, unless from_seq says where the retained history starts (first seq <= from_seq).
  bool require_head = false;
  uint64_t from_seq = 0;
  // Files gathered by a collector: a seq gap is listed (and checking resumes after it) instead of
  // stopping; duplicates of a record already seen are skipped with a warning; the writer is assumed to
  // be running (an unsigned tail is a warning).
  bool collector = false;
};

// Audit files under `dir` (default /var/log/sshring), chain order per log: for each live file FILE,
// its rotated files FILE.<stamp> oldest first, then FILE. Logs are grouped by live file name.
std::vector<std::vector<std::string>> find_audit_logs(const std::string& dir);

// Checks `files` as one chain, in the given order (rotated files first, oldest first, then the live one).
VerifyResult verify_chain(const std::vector<std::string>& files);
VerifyResult verify_chain(const std::vector<std::string>& files, const VerifyOptions& opts);

// True if a writer holds `path` open for appending (it takes an exclusive flock).
bool writer_running(const std::string& path);

}  // namespace sshring::metrics
