#include "metrics/audit_verify.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "common/base64.h"
#include "common/unique_fd.h"
#include "metrics/audit_key.h"
#include "metrics/audit_types.h"

namespace sshring::metrics {

void for_each_line(const std::string& path,
                   const std::function<void(uint64_t line_no, std::string_view line, bool complete)>& fn) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  std::string line;  // current line, capped at kMaxRecordBytes + 1
  bool overflow = false;
  uint64_t line_no = 0;
  std::string buf(1 << 16, '\0');
  while (true) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    std::string_view chunk(buf.data(), static_cast<size_t>(n));
    while (!chunk.empty()) {
      auto nl = chunk.find('\n');
      std::string_view part = chunk.substr(0, nl);
      if (!overflow) {
        size_t room = kMaxRecordBytes + 1 - line.size();
        line.append(part.substr(0, room));
        overflow = part.size() > room;
      }
      if (nl == std::string_view::npos) break;
      fn(++line_no, line, true);
      line.clear();
      overflow = false;
      chunk.remove_prefix(nl + 1);
    }
  }
  if (!line.empty()) fn(++line_no, line, false);
}

std::vector<std::vector<std::string>> find_audit_logs(const std::string& dir) {
  namespace fs = std::filesystem;
  std::map<std::string, std::vector<std::string>> logs;  // live name -> rotated files
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    auto name = e.path().filename().string();
    auto pos = name.find(".jsonl");
    if (pos == std::string::npos) continue;
    std::string live = name.substr(0, pos + 6);
    // Rotated files are FILE.<digits...>; anything else beside the log (FILE.lock, FILE.bak) is not ours.
    bool rotated = name.size() > live.size() + 1 && name[live.size()] == '.' &&
                   std::isdigit(static_cast<unsigned char>(name[live.size() + 1]));
    if (name.size() > live.size() && !rotated) continue;
    auto& files = logs[(fs::path(dir) / live).string()];
    if (rotated) files.push_back(e.path().string());
  }
  if (ec) throw std::runtime_error("cannot list " + dir + ": " + ec.message());
  std::vector<std::vector<std::string>> out;
  for (auto& [live_name, rotated] : logs) {
    const std::string& live = live_name;  // a lambda may not capture a structured binding (clang 14)
    // FILE.YYYYMMDDTHHMMSSZ[.N]: by stamp, then by the .N of a clash within the same second.
    auto key = [&](const std::string& f) {
      std::string rest = f.substr(live.size() + 1);
      auto dot = rest.find('.');
      uint64_t n = dot == std::string::npos ? 0 : std::strtoull(rest.c_str() + dot + 1, nullptr, 10);
      return std::make_pair(rest.substr(0, dot), n);
    };
    std::sort(rotated.begin(), rotated.end(),
              [&](const std::string& a, const std::string& b) { return key(a) < key(b); });
    if (fs::exists(live)) rotated.push_back(live);
    out.push_back(std::move(rotated));
  }
  return out;
}

namespace {

std::string range(uint64_t from, uint64_t to) {
  return from == to ? std::to_string(from) : std::to_string(from) + ".." + std::to_string(to);
}

// One chain, record by record. Each check either passes, adds a warning, or sets the error and stops.
class ChainChecker {
 public:
  ChainChecker(const VerifyOptions& o, VerifyResult& r) : opts_(o), res_(r) {}

  void line(const std::string& file, uint64_t line_no, std::string_view text, bool complete) {
    if (res_.error) return;
    AuditFinding here{file, line_no, ""};
    if (!complete) {
      warn(here, "torn last line (" + std::to_string(text.size()) +
                     " bytes without a newline): an interrupted write, not part of the chain");
      return;
    }
    std::string why;
    auto rec = parse_record(text, &why);
    if (!rec) return fail(here, "not a valid audit record: " + why);
    std::string hash = sha256_hex(text);
    if (!started_) {
      if (!head(*rec, here)) return;
    } else if (!link(*rec, hash, here)) {
      return;
    }
    if (!checkpoint(*rec, here)) return;
    ++res_.records;
    remember(*rec, std::move(hash), here);
  }

  // After the last file: what the end of the chain proves.
  void finish(const std::string& last_file) {
    if (res_.error || !opts_.trusted || !started_) return;
    res_.unsigned_tail = since_cp_;
    if (last_final_ && since_cp_ == 0) return;
    AuditFinding end{last_file, prev_loc_.line, ""};
    std::string bound = every_ ? std::to_string(every_) : std::to_string(kAssumedEvery);
    std::string n = std::to_string(since_cp_);
    if (opts_.collector || writer_running(last_file)) {
      warn(end, n + " records after the last checkpoint are not signed yet (the writer is running); if the " +
                    "tail was cut, up to " + bound + " records may be missing after seq " +
                    std::to_string(prev_seq_));
      return;
    }
    fail(end, "the log ends at seq " + std::to_string(prev_seq_) +
                  " without a final checkpoint and no writer holds it: the tail was cut off (or the writer " +
                  "crashed and has not restarted); " + n +
                  " records after the last checkpoint are unsigned " + "and up to " + bound +
                  " records may be missing after seq " + std::to_string(prev_seq_));
  }

 private:
  static constexpr uint64_t kAssumedEvery = 1000;  // before the first checkpoint says otherwise

  void warn(AuditFinding f, std::string msg) {
    f.message = std::move(msg);
    res_.warnings.push_back(std::move(f));
  }
  void fail(AuditFinding f, std::string msg) {
    f.message = std::move(msg);
    res_.error = std::move(f);
  }

  bool head(const AuditRecord& rec, const AuditFinding& here) {
    started_ = true;
    res_.writer = rec.component + "@" + rec.host;
    if (rec.prev == kZeroHash) {
      if (rec.seq == 1) return true;
      fail(here, "first record of the chain has seq " + std::to_string(rec.seq) + ", expected 1");
      return false;
    }
    if (opts_.from_seq > 0) {
      if (rec.seq <= opts_.from_seq) return true;
      fail(here, "retained history should start at seq " + std::to_string(opts_.from_seq) +
                     " (--from-seq) but the first record is seq " + std::to_string(rec.seq) + ": records " +
                     range(opts_.from_seq, rec.seq - 1) + " are missing");
      return false;
    }
    if (rec.type == "log_rotate" && !opts_.require_head) {
      warn(here, "chain continues from " + rec.body.value("previous_file", std::string("an earlier file")) +
                     ", which was not given: records before seq " + std::to_string(rec.seq) +
                     " are not checked");
      return true;
    }
    if (rec.type == "log_rotate") {
      fail(here, "the head of the chain is missing: it continues from " +
                     rec.body.value("previous_file", std::string("an earlier file")) +
                     ", which was not given (deleted?); records 1.." + std::to_string(rec.seq - 1) +
                     " are not here. Give the earlier files, or --from-seq " + std::to_string(rec.seq) +
                     " if history before it was retired on purpose");
      return false;
    }
    fail(here,
         "first record does not start a chain (prev is not zeros) and is not a log_rotate record: records "
         "before it were removed (or give the earlier rotated files first, or --from-seq " +
             std::to_string(rec.seq) + " if history before it was retired on purpose)");
    return false;
  }

  // Checks seq and prev against the previous record. Collector mode lists gaps and resyncs.
  bool link(const AuditRecord& rec, const std::string& hash, const AuditFinding& here) {
    bool seq_ok = rec.seq == prev_seq_ + 1;
    bool prev_ok = rec.prev == prev_hash_;
    if (seq_ok && prev_ok) return true;
    if (!seq_ok && opts_.collector && rec.seq <= prev_seq_ && seen(rec.seq, hash)) {
      warn(here, "duplicate of seq " + std::to_string(rec.seq) + " (delivered twice), skipped");
      skip_ = true;
      return false;
    }
    if (!seq_ok && rec.seq > prev_seq_ + 1 && opts_.collector) {
      AuditFinding gap = here;
      gap.message = res_.writer + ": seq " + range(prev_seq_ + 1, rec.seq - 1) + " missing (after seq " +
                    std::to_string(prev_seq_) + "): lost in transit or deleted";
      res_.gaps.push_back(gap);
      since_cp_ = 0;  // the lost records may have held a checkpoint
      return true;
    }
    if (!seq_ok) {
      std::string where = " (" + prev_loc_.file + ":" + std::to_string(prev_loc_.line) + ")";
      std::string msg =
          "seq " + std::to_string(rec.seq) + " follows seq " + std::to_string(prev_seq_) + where;
      msg += rec.seq > prev_seq_ + 1
                 ? ": records " + range(prev_seq_ + 1, rec.seq - 1) + " were deleted or moved"
                 : ": records were reordered, duplicated or inserted";
      if (!prev_ok) msg += "; prev does not match the previous line either";
      fail(here, msg);
      return false;
    }
    // seq is consecutive, so nothing was removed: the previous line's bytes (or this record's prev)
    // were changed.
    fail(prev_loc_, "record seq " + std::to_string(prev_seq_) +
                        " was modified: its SHA-256 does not match prev of the next record (" + here.file +
                        ":" + std::to_string(here.line) + ")");
    --res_.records;  // the previous record is not good after all
    return false;
  }

  bool checkpoint(const AuditRecord& rec, const AuditFinding& here) {
    if (skip_) return false;
    if (rec.type == "log_recover" && rec.body.contains("unsigned_tail")) {
      if (opts_.trusted && since_cp_ > 0)
        warn(here, "the writer restarted after a crash: " + std::to_string(since_cp_) +
                       " records before it were never covered by a checkpoint (" +
                       rec.body.value("unsigned_tail", std::string()) + ")");
      since_cp_ = 0;
      return true;
    }
    if (rec.type != "checkpoint") {
      ++since_cp_;
      last_final_ = false;
      uint64_t bound = every_ ? every_ : (opts_.trusted ? kAssumedEvery : 0);
      if (opts_.trusted && bound && since_cp_ > bound && !opts_.collector) {
        fail(here, std::to_string(since_cp_) + " records since the last checkpoint, over its interval of " +
                       std::to_string(bound) + ": checkpoints were removed or the chain was rewritten");
        return false;
      }
      return true;
    }
    if (!opts_.trusted) return true;
    auto cp = Checkpoint::from(rec.body);
    return verify_signature(rec, cp, here);
  }

  bool verify_signature(const AuditRecord& rec, const Checkpoint& cp, const AuditFinding& here) {
    if (cp.writer != res_.writer) {
      fail(here, "checkpoint names writer '" + cp.writer.substr(0, 80) + "' but the records are from " +
                     res_.writer);
      return false;
    }
    auto keys = opts_.trusted->for_writer(cp.writer);
    if (keys.empty()) {
      fail(here, "no trusted audit key for writer " + cp.writer + " (add a line '" + cp.writer +
                     " ssh-ed25519 ...' to the trusted keys)");
      return false;
    }
    auto sig = common::base64_decode(cp.sig);
    std::string msg =
        checkpoint_message(cp.writer, rec.seq, rec.prev, rec.ts, cp.every, cp.interval_s, cp.final);
    bool good = false;
    for (const auto* k : keys) good = good || (sig && k->verify(msg, *sig));
    if (!good) {
      fail(here,
           "checkpoint seq " + std::to_string(rec.seq) + " of " + cp.writer +
               ": signature does not verify with a trusted key: the records up to it were changed and " +
               "the chain recomputed, or the checkpoint was forged (key " + cp.key_fp.substr(0, 60) + ")");
      return false;
    }
    ++res_.checkpoints;
    since_cp_ = 0;
    every_ = cp.every;
    last_final_ = cp.final;
    return true;
  }

  bool seen(uint64_t seq, const std::string& hash) const {
    for (const auto& [s, h] : recent_) {
      if (s == seq && h == hash) return true;
    }
    return false;
  }

  void remember(const AuditRecord& rec, std::string hash, const AuditFinding& here) {
    if (opts_.collector) {
      recent_.emplace_back(rec.seq, hash);
      if (recent_.size() > 4096) recent_.pop_front();
    }
    prev_hash_ = std::move(hash);
    prev_seq_ = rec.seq;
    prev_loc_ = here;
    res_.last_seq = prev_seq_;
    res_.last_hash = prev_hash_;
  }

 public:
  void reset_skip() { skip_ = false; }

 private:
  const VerifyOptions& opts_;
  VerifyResult& res_;
  bool started_ = false;
  bool skip_ = false;
  std::string prev_hash_;
  uint64_t prev_seq_ = 0;
  AuditFinding prev_loc_;
  uint64_t since_cp_ = 0;
  uint64_t every_ = 0;
  bool last_final_ = false;
  std::deque<std::pair<uint64_t, std::string>> recent_;
};

}  // namespace

bool writer_running(const std::string& path) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  return ::flock(fd.get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
}

VerifyResult verify_chain(const std::vector<std::string>& files) {
  return verify_chain(files, VerifyOptions{});
}

VerifyResult verify_chain(const std::vector<std::string>& files, const VerifyOptions& opts) {
  VerifyResult res;
  ChainChecker check(opts, res);
  for (const auto& file : files) {
    if (res.error) break;
    for_each_line(file, [&](uint64_t line_no, std::string_view line, bool complete) {
      check.reset_skip();
      check.line(file, line_no, line, complete);
    });
  }
  if (!files.empty()) check.finish(files.back());
  return res;
}

}  // namespace sshring::metrics
