// Hash-chained JSON-lines audit log. Each line's `prev` is the hex SHA-256 of the previous line's bytes
// (without its newline); the chain continues across rotation and across restarts. Schema: docs/audit.md.
#include "metrics/audit.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "metrics/audit_record.h"

namespace sshring::metrics {

namespace fs = std::filesystem;

namespace {

// A line longer than this is not read back on open (we write far smaller records).
constexpr size_t kTailScan = 1 << 20;

std::string hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

void write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      common::throw_errno("write audit log " + path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
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

// "relay.audit.jsonl.20261130T145324Z" (plus ".N" if a rotation in the same second exists already).
std::string rotated_name(const std::string& path) {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
  std::string base = path + "." + stamp;
  std::string name = base;
  for (int i = 1; fs::exists(name); ++i) name = base + "." + std::to_string(i);
  return name;
}

// Readers reject lines over kMaxRecordBytes, so one oversized field (a long parser error, a hostile
// principal) must not make a record unverifiable: long strings are cut, and marked as cut.
constexpr size_t kMaxStringBytes = 4096;
void clamp_strings(nlohmann::json& j) {
  if (j.is_string()) {
    auto& s = j.get_ref<std::string&>();
    if (s.size() > kMaxStringBytes) {
      s.resize(kMaxStringBytes);
      s += "...[truncated]";
    }
  } else if (j.is_structured()) {
    for (auto& v : j) clamp_strings(v);
  }
}

}  // namespace

struct AuditLog::Impl {
  AuditOptions opts;
  std::string host = hostname();

  // Chain state and pending lines; guarded by mu. Lock order: mu, then io_mu.
  std::mutex mu;
  std::condition_variable cv;
  std::string pending;
  uint64_t logical_size = 0;  // file size plus pending bytes
  uint64_t seq = 0;           // seq of the last record
  std::string last_hash = std::string(64, '0');
  bool stop = false;
  uint64_t appended = 0;  // records appended (handed to the writer)

  // The file; guarded by io_mu (writes happen outside mu so appenders don't wait on the disk).
  std::mutex io_mu;
  common::UniqueFd fd;
  uint64_t written = 0;  // records on disk (after fdatasync)
  std::condition_variable_any flushed_cv;
  uint64_t write_errors = 0;

  std::thread writer;

  explicit Impl(AuditOptions o) : opts(std::move(o)) {}

  void open_file() {
    fd.reset(::open(opts.path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
    if (!fd) common::throw_errno("open audit log " + opts.path);
    // One writer per file: a second process would fork the chain.
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        throw std::runtime_error(
            "audit log " + opts.path +
            " is held by another process (one writer per file; give each component its own)");
      }
      common::throw_errno("lock audit log " + opts.path);
    }
  }

  // Reads the tail: continues seq and hash from the last complete line, cuts off a torn line.
  std::optional<nlohmann::json> recover_tail() {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) common::throw_errno("stat audit log " + opts.path);
    auto size = static_cast<uint64_t>(st.st_size);
    logical_size = size;
    if (size == 0) return std::nullopt;
    uint64_t scan = std::min<uint64_t>(size, kTailScan);
    std::string tail = pread_all(fd.get(), static_cast<off_t>(size - scan), scan, opts.path);
    std::optional<nlohmann::json> note;
    if (tail.back() != '\n') {
      // A crash mid-write: drop the partial line and say so in the next record.
      auto nl = tail.rfind('\n');
      uint64_t keep = nl == std::string::npos ? size - scan : size - scan + nl + 1;
      std::string torn = tail.substr(nl == std::string::npos ? 0 : nl + 1);
      if (::ftruncate(fd.get(), static_cast<off_t>(keep)) != 0)
        common::throw_errno("truncate torn audit line " + opts.path);
      ::fsync(fd.get());
      note = nlohmann::json{{"type", "log_recover"},
                            {"torn_offset", keep},
                            {"torn_bytes", size - keep},
                            {"torn_text", torn.substr(0, 512)}};
      common::log_warn("audit log had a torn last line; continuing the chain from the last complete line",
                       {{"file", opts.path}, {"torn_bytes", std::to_string(size - keep)}});
      tail.resize(nl == std::string::npos ? 0 : nl + 1);
      size = keep;
      logical_size = keep;
    }
    if (tail.empty()) return note;
    tail.pop_back();  // the newline
    auto start = tail.rfind('\n');
    std::string last = tail.substr(start == std::string::npos ? 0 : start + 1);
    last_hash = sha256_hex(last);
    std::string err;
    if (auto rec = parse_record(last, &err)) {
      seq = rec->seq;
    } else {
      // Keep chaining from its hash (so verify still points at it); restart seq visibly.
      nlohmann::json n{{"type", "log_recover"}, {"last_line_error", err}};
      if (note) n.update(*note);
      note = n;
    }
    return note;
  }

  // Builds the line for `record`, advances the chain. Caller holds mu.
  std::string seal(nlohmann::json record) {
    clamp_strings(record);
    nlohmann::ordered_json line;
    line["ts"] = format_rfc3339_ms(std::chrono::system_clock::now());
    line["type"] = record.at("type");
    line["component"] = opts.component;
    line["host"] = host;
    line["seq"] = ++seq;
    line["prev"] = last_hash;
    for (auto& [k, v] : record.items()) {
      if (k == "type" || k == "ts" || k == "component" || k == "host" || k == "seq" || k == "prev") continue;
      line[k] = std::move(v);
    }
    // Invalid UTF-8 from a peer (a principal, a torn line) must not stop the log: replace it.
    std::string text = line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    last_hash = sha256_hex(text);
    // No openlog(): it is process-global and keeps our ident pointer; the line names its component.
    if (opts.syslog) ::syslog(LOG_AUTHPRIV | LOG_INFO, "%s", text.c_str());
    text.push_back('\n');
    return text;
  }

  // Writes `data` and fdatasyncs. Caller holds io_mu.
  void write_locked(const std::string& data, uint64_t upto) {
    if (!data.empty()) {
      try {
        write_all(fd.get(), data, opts.path);
        if (::fdatasync(fd.get()) != 0) common::throw_errno("fdatasync audit log " + opts.path);
      } catch (const std::exception& e) {
        ++write_errors;
        common::log_error("audit write failed", {{"file", opts.path}, {"error", e.what()}});
      }
    }
    written = std::max(written, upto);
    flushed_cv.notify_all();
  }

  // Moves the pending lines to disk. Called with `lk` (on mu) held; returns with it held.
  void drain(std::unique_lock<std::mutex>& lk) {
    std::string data;
    data.swap(pending);
    uint64_t upto = appended;
    std::unique_lock io(io_mu);
    lk.unlock();
    write_locked(data, upto);
    io.unlock();
    lk.lock();
  }

  // Caller holds mu. Writes what is pending, renames the file and starts the next one.
  void rotate_locked() {
    std::unique_lock io(io_mu);
    std::string data;
    data.swap(pending);
    write_locked(data, appended);
    std::string rotated = rotated_name(opts.path);
    if (::rename(opts.path.c_str(), rotated.c_str()) != 0) {
      ++write_errors;
      common::log_error("audit rotation failed; continuing in the same file",
                        {{"file", opts.path}, {"error", std::strerror(errno)}});
      return;
    }
    common::UniqueFd old = std::move(fd);
    try {
      open_file();
    } catch (const std::exception& e) {
      ++write_errors;
      common::log_error("audit rotation could not open a new file",
                        {{"file", opts.path}, {"error", e.what()}});
    }
    io.unlock();
    logical_size = 0;
    nlohmann::json rec{{"type", "log_rotate"}, {"previous_file", fs::path(rotated).filename().string()}};
    enqueue_locked(std::move(rec), /*may_rotate=*/false);
  }

  void enqueue_locked(nlohmann::json record, bool may_rotate) {
    std::string text = seal(std::move(record));
    pending += text;
    logical_size += text.size();
    ++appended;
    if (may_rotate && opts.rotate_bytes > 0 && logical_size >= opts.rotate_bytes) rotate_locked();
  }

  void writer_loop() {
    std::unique_lock lk(mu);
    while (true) {
      cv.wait_for(lk, opts.batch_interval, [&] { return stop || pending.size() >= (64u << 10); });
      if (!pending.empty()) drain(lk);
      if (stop && pending.empty()) return;
    }
  }
};

AuditLog::AuditLog(AuditOptions opts) : impl_(std::make_unique<Impl>(std::move(opts))) {
  auto& d = *impl_;
  if (d.opts.path.empty()) throw std::runtime_error("audit log path is empty (set --audit-log FILE)");
  if (d.opts.component.empty()) d.opts.component = "sshring";
  auto parent = fs::path(d.opts.path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    if (ec)
      throw std::runtime_error("audit log " + d.opts.path + ": cannot create " + parent.string() + ": " +
                               ec.message());
  }
  d.open_file();
  auto note = d.recover_tail();
  if (note) {
    std::lock_guard lk(d.mu);
    d.enqueue_locked(std::move(*note), true);
  }
  if (!d.opts.fsync_each) d.writer = std::thread([this] { impl_->writer_loop(); });
  if (note) flush();
}

AuditLog::~AuditLog() {
  auto& d = *impl_;
  {
    std::lock_guard lk(d.mu);
    d.stop = true;
  }
  d.cv.notify_all();
  if (d.writer.joinable()) d.writer.join();
  flush();
}

void AuditLog::append(nlohmann::json record) {
  if (!record.is_object() || !record.contains("type") || !record["type"].is_string()) {
    throw std::invalid_argument("audit record must be a JSON object with a string \"type\"");
  }
  auto& d = *impl_;
  std::unique_lock lk(d.mu);
  d.enqueue_locked(std::move(record), true);
  if (d.opts.fsync_each) {
    d.drain(lk);
  } else if (d.pending.size() >= (64u << 10)) {
    d.cv.notify_one();
  }
}

void AuditLog::flush() {
  auto& d = *impl_;
  std::unique_lock lk(d.mu);
  uint64_t target = d.appended;
  d.drain(lk);
  lk.unlock();
  // Another thread may have taken our lines; wait until they are on disk.
  std::unique_lock io(d.io_mu);
  d.flushed_cv.wait(io, [&] { return d.written >= target; });
}

uint64_t AuditLog::write_errors() const {
  std::lock_guard io(impl_->io_mu);
  return impl_->write_errors;
}

}  // namespace sshring::metrics
