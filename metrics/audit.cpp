// Hash-chained JSON-lines audit log. Each line's `prev` is the hex SHA-256 of the previous line's bytes
// (without its newline); the chain continues across rotation, restarts and a deleted live file.
// Schema: docs/audit.md.
//
// Appenders seal records into the chain under `mu` and queue the lines in chunks; one drainer at a time
// (the writer thread, or the caller in fsync_each mode, flush and commit) writes them outside the lock,
// so appenders never wait for the disk. A chunk that starts with a rotation renames the file first. A
// failed write puts its chunks back at the head of the queue: nothing sealed is lost or reordered while
// the disk is full, and the chain on disk stays intact.
#include "metrics/audit.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <stdexcept>
#include <string_view>
#include <thread>

#include "common/base64.h"
#include "common/civil_time.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/host.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "metrics/audit_key.h"
#include "metrics/audit_record.h"
#include "metrics/audit_syslog.h"
#include "metrics/audit_types.h"

namespace sshring::metrics {

namespace fs = std::filesystem;

namespace {

// A line longer than this is not read back on open (we write far smaller records).
constexpr size_t kTailScan = 1 << 20;
// Batched mode: write and sync before the interval once this much is sealed (about 3,000 records).
constexpr size_t kWakeBytes = 1u << 20;
// Batched mode: records waiting in the inbox that wake the writer thread before its interval.
constexpr size_t kWakeRecords = 256;

// Writes all of `data`; false with *err set on failure.
bool write_all(int fd, std::string_view data, std::string* err) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      *err = std::string("write: ") + std::strerror(errno);
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string pread_all(int fd, off_t off, size_t len, const std::string& path) {
  std::string buf(len, '\0');
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, buf.data() + got, len - got, off + static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      common::throw_errno("read audit log " + path);
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  buf.resize(got);
  return buf;
}

std::string utc_stamp() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char stamp[32];
  return std::strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm) > 0 ? stamp : "unknown-time";
}

// "relay.audit.jsonl.20261130T145324Z" (plus ".N" if that name exists or was just chosen).
// Names chosen but not yet renamed (queued rotations) count as taken.
std::string rotated_name(const std::string& path, std::set<std::string>& chosen) {
  std::string base = path + "." + utc_stamp();
  std::string name = base;
  for (int i = 1; fs::exists(name) || chosen.count(name) != 0; ++i) name = base + "." + std::to_string(i);
  if (chosen.size() > 1024) chosen.clear();  // long renamed: fs::exists covers them
  chosen.insert(name);
  return name;
}

// Cuts long strings (kMaxStringBytes) anywhere in the record, as append_json_string does.
void clamp_strings(nlohmann::json& j) {
  if (j.is_string()) {
    auto& s = j.get_ref<std::string&>();
    if (s.size() > kMaxStringBytes) {
      s.resize(kMaxStringBytes);
      s += kTruncatedMark;
    }
  } else if (j.is_structured()) {
    for (auto& v : j) clamp_strings(v);
  }
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Lines queued for the disk; `rotate_to` set: rename the live file to it before writing `data`.
struct Chunk {
  std::string data;
  std::string rotate_to;
  std::vector<std::string> syslog;  // RFC 5424 messages of these lines, sent once they are on disk
};

}  // namespace

struct AuditLog::Impl {
  AuditOptions opts;
  std::string host = common::host_name("unknown");
  std::string writer_id;  // component@host
  std::optional<AuditKey> key;
  std::string key_fp;

  // Chain state and queue; guarded by mu.
  std::mutex mu;
  std::condition_variable wake_cv;   // the writer thread
  std::condition_variable drain_cv;  // a drain finished
  std::deque<Chunk> pending;
  size_t pending_bytes = 0;
  uint64_t logical_size = 0;  // live file size plus queued bytes that go to it
  uint64_t seq = 0;           // seq of the last record
  std::string last_hash = kZeroHash;
  uint64_t appended = 0;  // records sealed
  uint64_t durable = 0;   // records known on disk
  bool draining = false;
  bool stop = false;
  std::set<std::string> rotated_names;
  uint64_t since_checkpoint = 0;
  std::chrono::steady_clock::time_point last_checkpoint = std::chrono::steady_clock::now();
  std::string last_error;
  LogGap gap;  // records dropped while unwritable, not yet recorded

  // Batched mode: append() only stamps the record and queues it here, under its own lock; the writer
  // thread (or whoever flushes, commits or reads stats) seals the inbox into the chain in order. So the
  // caller's thread (a relay worker, the agent's event loop) never pays for serializing, hashing and
  // checkpoint signing. Lock order: mu, then inbox_mu.
  struct Inbound {
    nlohmann::json record;                 // append(json)
    std::function<nlohmann::json()> make;  // append(typed): built when sealed
    const char* type;                      // append(typed with fields()): written when sealed
    std::function<void(BodyFields&)> fill;
    SessionEvent session;  // append_session (session.type set): formatted when sealed
    int64_t ts_ms;
  };
  std::mutex inbox_mu;
  std::vector<Inbound> inbox;
  std::atomic<size_t> inbox_size{0};
  // A sealed batch, handed back so the appending thread frees what it allocated (the typed records'
  // strings and closures). Freed on the sealing thread instead, every record's memory crossed threads:
  // glibc then sends each free to the producer's arena under its lock and the producer's own cache
  // runs dry, which cost a relay worker more than the append itself (bench/auth, audit:1).
  std::vector<Inbound> spent;

  // Counters readable without the lock.
  std::atomic<bool> ok{true};
  std::atomic<uint64_t> write_errors{0}, dropped{0}, reopened{0}, syslog_errors{0}, checkpoints{0};
  std::atomic<int64_t> last_checkpoint_unix{0};

  // The files; used only by the drainer (draining == true) and the constructor.
  common::UniqueFd fd;
  uint64_t disk_size = 0;
  std::optional<SyslogSender> syslog;

  std::thread writer;

  explicit Impl(AuditOptions o) : opts(std::move(o)) {}

  // Opens `opts.path` (O_EXCL when `exclusive`: restoring a deleted file must not append to a stranger's).
  common::UniqueFd open_path(bool exclusive) const {
    int flags = O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | (exclusive ? O_EXCL : 0);
    common::UniqueFd f(::open(opts.path.c_str(), flags, 0640));
    if (!f) common::throw_errno("open audit log " + opts.path);
    // One writer per file: a second process would fork the chain.
    if (::flock(f.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        throw std::runtime_error(
            "audit log " + opts.path +
            " is held by another process (one writer per file; give each component its own)");
      }
      common::throw_errno("lock audit log " + opts.path);
    }
    return f;
  }

  // Reads the tail: continues seq and hash from the last complete line, cuts off a torn line.
  std::optional<LogRecover> recover_tail() {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) common::throw_errno("stat audit log " + opts.path);
    auto size = static_cast<uint64_t>(st.st_size);
    logical_size = disk_size = size;
    if (size == 0) return std::nullopt;
    uint64_t scan = std::min<uint64_t>(size, kTailScan);
    std::string tail = pread_all(fd.get(), static_cast<off_t>(size - scan), scan, opts.path);
    std::optional<LogRecover> note;
    if (tail.back() != '\n') {
      // A crash mid-write: drop the partial line and say so in the next record.
      auto nl = tail.rfind('\n');
      uint64_t keep = nl == std::string::npos ? size - scan : size - scan + nl + 1;
      std::string torn = tail.substr(nl == std::string::npos ? 0 : nl + 1);
      if (::ftruncate(fd.get(), static_cast<off_t>(keep)) != 0)
        common::throw_errno("truncate torn audit line " + opts.path);
      ::fsync(fd.get());
      note = LogRecover{.torn_offset = keep, .torn_bytes = size - keep, .torn_text = torn.substr(0, 512)};
      common::log_warn("audit log had a torn last line; continuing the chain from the last complete line",
                       {{"file", opts.path}, {"torn_bytes", std::to_string(size - keep)}});
      tail.resize(nl == std::string::npos ? 0 : nl + 1);
      logical_size = disk_size = keep;
    }
    if (tail.empty()) return note;
    tail.pop_back();  // the newline
    auto start = tail.rfind('\n');
    std::string last = tail.substr(start == std::string::npos ? 0 : start + 1);
    last_hash = sha256_hex(last);
    std::string err;
    auto rec = parse_record(last, &err);
    if (rec) {
      seq = rec->seq;
    } else {
      // Keep chaining from its hash (so verify still points at it); restart seq visibly.
      if (!note) note = LogRecover{};
      note->last_line_error = err;
    }
    // With a key, a clean stop ends in a final checkpoint: anything else is a crash (or a cut tail), and
    // the records since the last checkpoint are not signed. Say so in the chain.
    bool clean = rec && rec->type == Checkpoint::kType && Checkpoint::from(rec->body).final;
    if (key && !clean) {
      if (!note) note = LogRecover{};
      note->unsigned_tail = "previous writer stopped after seq " + std::to_string(seq) +
                            " without a final checkpoint (crash, or records cut off the end)";
    }
    return note;
  }

  // Builds the line for `record`, advances the chain. Caller holds mu.
  std::string seal(nlohmann::json record, const std::string& ts, std::vector<std::string>* syslog_out) {
    clamp_strings(record);
    std::string type = record["type"].is_string() ? record["type"].get<std::string>() : "";
    for (const char* k : {"type", "ts", "component", "host", "seq", "prev"}) record.erase(k);
    // Invalid UTF-8 from a peer (a principal, a torn line) must not stop the log: replace it.
    std::string rest = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);  // {...} or {}
    std::string_view body(rest);
    body = body.size() > 2 ? body.substr(1, body.size() - 2) : std::string_view();
    return seal_body(type, body, ts, syslog_out);
  }

  // `body`: the type's fields as `"k":v,...` (no braces), already cut and escaped.
  std::string seal_body(std::string_view type, std::string_view body, const std::string& ts,
                        std::vector<std::string>* syslog_out) {
    // The envelope first, in a fixed order (readable with grep/jq), then the type's fields. Built as
    // text: this is the writer's hot path.
    if (envelope_tail.empty()) {
      constexpr auto kReplace = nlohmann::json::error_handler_t::replace;
      envelope_tail = ",\"component\":" + nlohmann::json(opts.component).dump(-1, ' ', false, kReplace) +
                      ",\"host\":" + nlohmann::json(host).dump(-1, ' ', false, kReplace) + ",\"seq\":";
    }
    ++seq;
    std::string text;
    text.reserve(160 + body.size());
    text.append("{\"ts\":\"").append(ts).append("\",\"type\":");
    append_json_string(text, type);
    text.append(envelope_tail)
        .append(std::to_string(seq))
        .append(",\"prev\":\"")
        .append(last_hash)
        .append("\"");
    if (!body.empty()) {
      text.push_back(',');
      text.append(body);
    }
    text.push_back('}');
    std::string hash = sha256_hex(text);
    if (syslog_out && opts.syslog) {
      syslog_out->push_back(format_rfc5424(SyslogFields{.ts = ts,
                                                        .host = host,
                                                        .type = std::string(type),
                                                        .writer = writer_id,
                                                        .seq = seq,
                                                        .prev = last_hash,
                                                        .hash = hash},
                                           text));
    }
    last_hash = std::move(hash);
    ++appended;
    text.push_back('\n');
    return text;
  }

  // common::format_rfc3339_ms, with the seconds part formatted once per second (the hot path). Caller
  // holds mu.
  std::string now_rfc3339() { return format_ts(common::unix_now_ms()); }
  // The time a sealed record carries. A record stamped at append() can be sealed after one stamped a
  // little later (a commit or a checkpoint sealed while it sat in the inbox); such small inversions
  // take the chain's last time, so times never go back along the chain. A larger step back is the
  // clock itself (NTP, an operator) and is kept, so the log shows it.
  int64_t chain_time(int64_t ms) {
    constexpr int64_t kQueueSlackMs = 1000;
    if (ms < last_ts_ms && last_ts_ms - ms < kQueueSlackMs) ms = last_ts_ms;
    last_ts_ms = ms;
    return ms;
  }
  int64_t last_ts_ms = 0;
  std::string format_ts(int64_t ms) {
    ms = chain_time(ms);
    if (common::floor_div(ms, 1000) != ts_cache_sec) {
      ts_cache_sec = common::floor_div(ms, 1000);
      ts_cache = common::format_rfc3339_ms(ms);
    }
    const auto frac = static_cast<unsigned>(ms - ts_cache_sec * 1000);  // 0..999
    std::string out = ts_cache;
    char* mmm = out.data() + out.size() - 4;  // "...SS.mmmZ"
    mmm[0] = static_cast<char>('0' + frac / 100);
    mmm[1] = static_cast<char>('0' + frac / 10 % 10);
    mmm[2] = static_cast<char>('0' + frac % 10);
    return out;
  }
  int64_t ts_cache_sec = -1;
  std::string ts_cache;

  Chunk& tail_chunk() {
    if (pending.empty()) pending.emplace_back();
    return pending.back();
  }

  std::string envelope_tail;  // ,"component":...,"host":...,"seq":  (constant per writer)

  void put_locked(nlohmann::json record, int64_t ts_ms) {
    Chunk& c = tail_chunk();
    put_text_locked(c, seal(std::move(record), format_ts(ts_ms), &c.syslog));
  }
  void put_fields_locked(const char* type, const std::function<void(BodyFields&)>& fill, int64_t ts_ms) {
    BodyFields f;
    fill(f);
    std::string body;
    f.write(body);
    Chunk& c = tail_chunk();
    put_text_locked(c, seal_body(type, body, format_ts(ts_ms), &c.syslog));
  }
  void put_text_locked(Chunk& c, const std::string& text) {
    c.data += text;
    pending_bytes += text.size();
    logical_size += text.size();
    ++since_checkpoint;
  }

  // Signs (writer, seq, chain hash, time) and appends the checkpoint. Caller holds mu.
  void checkpoint_locked(bool final) {
    std::string ts = now_rfc3339();
    uint64_t interval_s = static_cast<uint64_t>(opts.checkpoint_interval.count());
    Checkpoint cp{.writer = writer_id,
                  .key_fp = key_fp,
                  .every = opts.checkpoint_every,
                  .interval_s = interval_s,
                  .final = final};
    cp.sig = common::base64_encode(
        key->sign(checkpoint_message(writer_id, seq + 1, last_hash, ts, cp.every, interval_s, final)));
    Chunk& c = tail_chunk();
    std::string text = seal(cp.to_json(), ts, &c.syslog);
    c.data += text;
    pending_bytes += text.size();
    logical_size += text.size();
    since_checkpoint = 0;
    last_checkpoint = std::chrono::steady_clock::now();
    last_checkpoint_unix.store(unix_now(), std::memory_order_relaxed);
    checkpoints.fetch_add(1, std::memory_order_relaxed);
  }

  void maybe_checkpoint_locked() {
    if (!key) return;
    bool due_count = opts.checkpoint_every > 0 && since_checkpoint >= opts.checkpoint_every;
    bool due_time = std::chrono::steady_clock::now() - last_checkpoint >= opts.checkpoint_interval;
    if (due_count || due_time) checkpoint_locked(false);
  }

  void enqueue_locked(nlohmann::json record, int64_t ts_ms = common::unix_now_ms()) {
    put_locked(std::move(record), ts_ms);
    after_put_locked();
  }
  void enqueue_fields_locked(const char* type, const std::function<void(BodyFields&)>& fill, int64_t ts_ms) {
    put_fields_locked(type, fill, ts_ms);
    after_put_locked();
  }
  // A checkpoint or a rotation when one is due.
  void after_put_locked() {
    maybe_checkpoint_locked();
    if (opts.rotate_bytes > 0 && logical_size >= opts.rotate_bytes) {
      std::string name = rotated_name(opts.path, rotated_names);
      pending.emplace_back().rotate_to = name;
      logical_size = 0;
      put_locked(LogRotate{fs::path(name).filename().string()}.to_json(), common::unix_now_ms());
      maybe_checkpoint_locked();
    }
  }

  // --- drainer side (draining == true, mu not held) ---

  // The live path must still name our file: if it was deleted or replaced, put the chain (read back
  // from our descriptor) into a new file at the path, so nothing written so far is lost.
  bool check_live_file(std::optional<LogReopen>* reopen, std::string* err) {
    struct stat ours {
    }, at_path{};
    if (!fd || ::fstat(fd.get(), &ours) != 0 || !S_ISREG(ours.st_mode)) return true;
    bool missing = ::stat(opts.path.c_str(), &at_path) != 0;
    if (!missing && at_path.st_dev == ours.st_dev && at_path.st_ino == ours.st_ino) return true;
    LogReopen note{.reason = missing ? "deleted" : "replaced"};
    try {
      if (!missing) {
        std::string aside = opts.path + ".replaced." + utc_stamp();
        if (::rename(opts.path.c_str(), aside.c_str()) != 0) common::throw_errno("move aside " + opts.path);
        note.moved_to = fs::path(aside).filename().string();
      }
      common::UniqueFd fresh = open_path(/*exclusive=*/true);
      std::string data = pread_all(fd.get(), 0, disk_size, opts.path);
      if (!write_all(fresh.get(), data, err) || ::fdatasync(fresh.get()) != 0) {
        ::unlink(opts.path.c_str());
        if (err->empty()) *err = std::string("fdatasync: ") + std::strerror(errno);
        return false;
      }
      note.restored_bytes = data.size();
      fd = std::move(fresh);
    } catch (const std::exception& e) {
      *err = e.what();
      return false;
    }
    common::log_warn("audit log was " + note.reason + " under the writer; restored the chain into a new file",
                     {{"file", opts.path}, {"restored_bytes", std::to_string(note.restored_bytes)}});
    reopened.fetch_add(1, std::memory_order_relaxed);
    *reopen = note;
    return true;
  }

  bool rotate_file(const std::string& to, std::string* err) {
    if (::rename(opts.path.c_str(), to.c_str()) != 0) {
      // Keep writing to the same file: a failed rename loses nothing.
      write_errors.fetch_add(1, std::memory_order_relaxed);
      common::log_error("audit rotation failed; continuing in the same file",
                        {{"file", opts.path}, {"error", std::strerror(errno)}});
      return true;
    }
    fd.reset();
    try {
      fd = open_path(false);
      disk_size = 0;
    } catch (const std::exception& e) {
      *err = e.what();
      return false;
    }
    return true;
  }

  bool write_data(const std::string& data, std::string* err) {
    if (!fd) {
      try {
        fd = open_path(false);
        struct stat st {};
        disk_size = ::fstat(fd.get(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
      } catch (const std::exception& e) {
        *err = e.what();
        return false;
      }
    }
    if (!write_all(fd.get(), data, err) || ::fdatasync(fd.get()) != 0) {
      if (err->empty()) *err = std::string("fdatasync: ") + std::strerror(errno);
      // A partial line would corrupt the retry: cut back to the last good size (not possible on a
      // device such as /dev/full, which holds nothing anyway).
      if (::ftruncate(fd.get(), static_cast<off_t>(disk_size)) != 0 && errno != EINVAL) {
        common::log_error("audit log: cannot cut a partial write", {{"file", opts.path}});
      }
      return false;
    }
    disk_size += data.size();
    return true;
  }

  // Writes `work` in order; returns how many chunks reached the disk.
  size_t write_chunks(std::deque<Chunk>& work, std::string* err, std::optional<LogReopen>* reopen) {
    if (!check_live_file(reopen, err)) return 0;
    size_t i = 0;
    for (; i < work.size(); ++i) {
      Chunk& c = work[i];
      if (!c.rotate_to.empty()) {
        if (!rotate_file(c.rotate_to, err)) break;
        c.rotate_to.clear();  // done: a retry must not rename again
      }
      if (!c.data.empty() && !write_data(c.data, err)) break;
      if (syslog) {
        for (const auto& m : c.syslog) {
          if (!syslog->send(m)) syslog_errors.fetch_add(1, std::memory_order_relaxed);
        }
      }
    }
    return i;
  }

  // Batched append: stamped under the inbox lock, so the chain's order is also the order of the
  // timestamps; the writer is woken once enough is waiting (else its interval picks it up).
  void push_inbox(Inbound in) {
    size_t queued = 0;
    std::vector<Inbound> trash;  // destroyed here, after the lock
    {
      std::lock_guard ilk(inbox_mu);
      if (!spent.empty()) trash.swap(spent);
      in.ts_ms = common::unix_now_ms();
      inbox.push_back(std::move(in));
      queued = inbox.size();
      inbox_size.store(queued, std::memory_order_relaxed);
    }
    if (queued == kWakeRecords) wake_cv.notify_one();
  }

  // Seals what append() queued in the inbox into the chain, in order. Caller holds mu.
  void absorb_locked() {
    // Room for the next batch, made before the lock so producers do not wait for it, and so they do
    // not grow the vector record by record. Only an optimization: without memory, producers grow it.
    std::vector<Inbound> fresh;
    try {
      fresh.reserve(std::max<size_t>(inbox_size.load(std::memory_order_relaxed), kWakeRecords));
    } catch (const std::bad_alloc&) {
      fresh = {};
    }
    std::vector<Inbound> batch;
    {
      std::lock_guard ilk(inbox_mu);
      batch.swap(inbox);
      inbox.swap(fresh);
      inbox_size.store(0, std::memory_order_relaxed);
    }
    if (batch.empty()) return;
    for (auto& in : batch) {
      if (drop_if_full_locked()) continue;
      if (in.session.type != nullptr) {
        try {
          SessionFields text;
          enqueue_fields_locked(
              in.session.type, [&](BodyFields& f) { in.session.fields(f, text); }, in.ts_ms);
        } catch (const std::exception& e) {  // allocation: lost like a dropped record, and counted
          dropped.fetch_add(1, std::memory_order_relaxed);
          common::log_error("audit record could not be built", {{"file", opts.path}, {"error", e.what()}});
        }
        continue;
      }
      if (in.fill) {
        try {
          enqueue_fields_locked(in.type, in.fill, in.ts_ms);
        } catch (const std::exception& e) {  // allocation: lost like a dropped record, and counted
          dropped.fetch_add(1, std::memory_order_relaxed);
          common::log_error("audit record could not be built", {{"file", opts.path}, {"error", e.what()}});
        }
        continue;
      }
      if (in.make) {
        try {
          in.record = in.make();
        } catch (const std::exception& e) {  // allocation: lost like a dropped record, and counted
          dropped.fetch_add(1, std::memory_order_relaxed);
          common::log_error("audit record could not be built", {{"file", opts.path}, {"error", e.what()}});
          continue;
        }
      }
      enqueue_locked(std::move(in.record), in.ts_ms);
    }
    std::lock_guard ilk(inbox_mu);
    if (spent.empty()) spent.swap(batch);  // else the producer is behind: free them here
  }

  // Writes the queue. Called with `lk` (on mu) held; returns with it held. True if all of it is on disk.
  bool drain(std::unique_lock<std::mutex>& lk) {
    drain_cv.wait(lk, [&] { return !draining; });
    absorb_locked();
    if (pending.empty()) return ok.load(std::memory_order_relaxed);
    draining = true;
    std::deque<Chunk> work;
    work.swap(pending);
    pending_bytes = 0;
    uint64_t upto = appended;
    lk.unlock();
    std::string err;
    std::optional<LogReopen> reopen;
    size_t done = write_chunks(work, &err, &reopen);
    lk.lock();
    draining = false;
    bool success = done == work.size();
    if (success) {
      durable = std::max(durable, upto);
      if (!ok.exchange(true)) common::log_info("audit log writable again", {{"file", opts.path}});
      if (gap.dropped > 0) {
        enqueue_locked(gap.to_json());
        gap = LogGap{};
      }
    } else {
      // Back to the head of the queue, in order, ahead of what was appended meanwhile.
      for (size_t i = work.size(); i-- > done;) {
        pending_bytes += work[i].data.size();
        pending.push_front(std::move(work[i]));
      }
      write_errors.fetch_add(1, std::memory_order_relaxed);
      ok.store(false, std::memory_order_relaxed);
      last_error = err;
      common::log_error("audit write failed", {{"file", opts.path}, {"error", err}});
    }
    if (reopen) enqueue_locked(reopen->to_json());
    drain_cv.notify_all();
    return success;
  }

  // While unwritable, records beyond the buffer are dropped before they enter the chain, and counted.
  bool drop_if_full_locked() {
    if (ok.load(std::memory_order_relaxed) || pending_bytes < opts.max_pending_bytes) return false;
    std::string ts = common::format_rfc3339_ms(common::unix_now_ms());
    if (gap.dropped++ == 0) {
      gap.first_dropped = ts;
      gap.error = last_error;
    }
    gap.last_dropped = ts;
    dropped.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  void writer_loop() {
    std::unique_lock lk(mu);
    auto last_drain = std::chrono::steady_clock::now();
    while (true) {
      // Woken by a full inbox it only seals (bounded memory); it writes and syncs once the interval
      // is up or kWakeBytes are sealed. Each fdatasync is a journal commit and device interrupts on
      // the relay's cores: syncing per 256 records instead cost bench/auth 5-10% of its handshakes on
      // a virtio disk, and the contract is only the interval.
      const auto due_at = last_drain + opts.batch_interval;
      wake_cv.wait_until(lk, due_at, [&] {
        return stop || pending_bytes >= kWakeBytes ||
               inbox_size.load(std::memory_order_relaxed) >= kWakeRecords;
      });
      absorb_locked();
      if (!stop) maybe_checkpoint_locked();
      const auto now = std::chrono::steady_clock::now();
      if (stop || now >= due_at || pending_bytes >= kWakeBytes) {
        if (!pending.empty()) drain(lk);
        last_drain = now;
      }
      if (stop) return;
    }
  }
};

AuditLog::AuditLog(AuditOptions opts) : impl_(std::make_unique<Impl>(std::move(opts))) {
  auto& d = *impl_;
  if (d.opts.path.empty()) throw std::runtime_error("audit log path is empty (set --audit-log FILE)");
  if (d.opts.component.empty()) d.opts.component = "sshring";
  d.writer_id = d.opts.component + "@" + d.host;
  if (d.opts.checkpoint_interval.count() <= 0) d.opts.checkpoint_interval = kDefaultCheckpointInterval;
  auto parent = fs::path(d.opts.path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    if (ec)
      throw std::runtime_error("audit log " + d.opts.path + ": cannot create " + parent.string() + ": " +
                               ec.message());
  }
  if (!d.opts.key_path.empty()) {
    d.key = AuditKey::load_or_create(d.opts.key_path);
    d.key_fp = d.key->fingerprint();
  }
  if (d.opts.syslog) d.syslog.emplace(d.opts.syslog_socket);
  d.fd = d.open_path(false);
  auto note = d.recover_tail();
  if (note) {
    std::lock_guard lk(d.mu);
    d.enqueue_locked(note->to_json());
  }
  if (!d.opts.fsync_each) d.writer = std::thread([this] { impl_->writer_loop(); });
  if (note) flush();
}

AuditLog::~AuditLog() {
  auto& d = *impl_;
  {
    std::lock_guard lk(d.mu);
    try {
      d.absorb_locked();
      if (d.key) d.checkpoint_locked(/*final=*/true);
    } catch (const std::exception&) {
      // Out of memory: the chain ends without its final checkpoint, as after a crash.
    }
    d.stop = true;
  }
  d.wake_cv.notify_all();
  // What can throw from here is allocation (the last write, the log line): the records it concerns
  // already count as write errors, and a destructor must not throw.
  try {
    if (d.writer.joinable()) d.writer.join();
    if (!flush()) {
      common::log_error("audit log closed with records not on disk",
                        {{"file", d.opts.path}, {"error", d.last_error}});
    }
  } catch (const std::exception&) {
    // see above
  }
}

namespace {
void check_record(const nlohmann::json& record) {
  if (!record.is_object() || !record.contains("type") || !record["type"].is_string()) {
    throw std::invalid_argument("audit record must be a JSON object with a string \"type\"");
  }
}
}  // namespace

void AuditLog::append(nlohmann::json record) {
  check_record(record);
  auto& d = *impl_;
  if (!d.opts.fsync_each) {
    d.push_inbox(
        {.record = std::move(record), .make = {}, .type = nullptr, .fill = {}, .session = {}, .ts_ms = 0});
    return;
  }
  // fsync-each: sealed and written before append returns. Unwritable: retry first, drop only if the
  // buffer is still full.
  std::unique_lock lk(d.mu);
  if (!d.ok.load(std::memory_order_relaxed) && d.pending_bytes >= d.opts.max_pending_bytes) d.drain(lk);
  if (d.drop_if_full_locked()) return;
  d.enqueue_locked(std::move(record));
  d.drain(lk);
}

void AuditLog::append_deferred(std::function<nlohmann::json()> make) {
  auto& d = *impl_;
  if (d.opts.fsync_each) {
    append(make());
    return;
  }
  d.push_inbox(
      {.record = nullptr, .make = std::move(make), .type = nullptr, .fill = {}, .session = {}, .ts_ms = 0});
}

void AuditLog::append_session(SessionEvent e) {
  const std::string_view type = e.type != nullptr ? e.type : "";
  if (type != SessionStart::kType && type != SessionEnd::kType && type != SessionDeny::kType)
    throw std::invalid_argument("append_session: type must be session_start, session_end or session_deny");
  auto& d = *impl_;
  if (d.opts.fsync_each) {
    SessionFields text;
    BodyFields f;
    e.fields(f, text);
    append(f.to_json(e.type));
    return;
  }
  d.push_inbox(
      {.record = nullptr, .make = {}, .type = nullptr, .fill = {}, .session = std::move(e), .ts_ms = 0});
}

void AuditLog::append_fields_deferred(const char* type, std::function<void(BodyFields&)> fill) {
  auto& d = *impl_;
  if (d.opts.fsync_each) {
    BodyFields f;
    fill(f);
    append(f.to_json(type));
    return;
  }
  d.push_inbox(
      {.record = nullptr, .make = {}, .type = type, .fill = std::move(fill), .session = {}, .ts_ms = 0});
}

bool AuditLog::commit(nlohmann::json record, std::string* error) {
  check_record(record);
  auto& d = *impl_;
  std::unique_lock lk(d.mu);
  d.absorb_locked();  // records appended before this one go first
  auto fail = [&](const std::string& why) {
    if (error) *error = "audit log " + d.opts.path + " cannot be written (" + why + ")";
    return false;
  };
  // Earlier records first; then ours must be the only thing queued so it can be taken back.
  for (int i = 0; i < 3 && !d.pending.empty(); ++i) {
    if (!d.drain(lk)) return fail(d.last_error);
  }
  bool alone = d.pending.empty();
  const uint64_t seq = d.seq, appended = d.appended, since = d.since_checkpoint, size = d.logical_size;
  const std::string hash = d.last_hash;
  d.enqueue_locked(std::move(record));
  const uint64_t ours = d.appended;
  if (d.drain(lk)) return true;
  if (alone && d.appended == ours) {
    // Nobody chained onto it: take it back out, as if never appended.
    d.pending.clear();
    d.pending_bytes = 0;
    d.seq = seq;
    d.appended = appended;
    d.since_checkpoint = since;
    d.logical_size = size;
    d.last_hash = hash;
    return fail(d.last_error);
  }
  return fail(d.last_error + "; the record stays queued and is written when the log recovers");
}

bool AuditLog::flush() {
  auto& d = *impl_;
  std::unique_lock lk(d.mu);
  d.absorb_locked();  // what append() queued counts as appended before this call
  uint64_t target = d.appended;
  d.drain(lk);
  return d.durable >= target;
}

bool AuditLog::writable() const {
  return impl_->ok.load(std::memory_order_relaxed);
}

uint64_t AuditLog::write_errors() const {
  return impl_->write_errors.load(std::memory_order_relaxed);
}

const std::string& AuditLog::writer_id() const {
  return impl_->writer_id;
}

AuditStats AuditLog::stats() const {
  auto& d = *impl_;
  AuditStats s;
  {
    std::lock_guard lk(d.mu);
    d.absorb_locked();  // what was appended counts as sealed once anyone asks
    s.records = d.appended;
  }
  s.checkpoints = d.checkpoints.load(std::memory_order_relaxed);
  s.write_errors = d.write_errors.load(std::memory_order_relaxed);
  s.dropped = d.dropped.load(std::memory_order_relaxed);
  s.reopened = d.reopened.load(std::memory_order_relaxed);
  s.syslog_errors = d.syslog_errors.load(std::memory_order_relaxed);
  s.writable = d.ok.load(std::memory_order_relaxed);
  s.last_checkpoint_unix = d.last_checkpoint_unix.load(std::memory_order_relaxed);
  s.checkpoint_interval_s = d.key ? static_cast<uint64_t>(d.opts.checkpoint_interval.count()) : 0;
  return s;
}

}  // namespace sshring::metrics
