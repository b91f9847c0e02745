// Signed checkpoints and failure semantics of the audit log, tested by attacking them: a tail cut while
// the writer is stopped, the oldest file deleted, an edited record with every later hash fixed up, the
// chain recomputed and re-signed with another key, checkpoints stripped; and by breaking the disk: a
// full file system (tmpfs) that later frees up, the live file deleted or replaced under the writer.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>
#include <thread>

#include "common/base64.h"
#include "metrics/audit.h"
#include "metrics/audit_key.h"
#include "metrics/audit_record.h"
#include "metrics/audit_syslog.h"
#include "metrics/audit_types.h"
#include "metrics/audit_verify.h"
#include "tests/support/process.h"

namespace sshring::metrics {
namespace {

namespace fs = std::filesystem;
using sshring::testing::read_file;
using sshring::testing::TempDir;
using sshring::testing::write_file;

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> out;
  std::istringstream in(read_file(path));
  std::string l;
  while (std::getline(in, l)) out.push_back(l);
  return out;
}

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  write_file(path, s);
}

SessionEnd end_record(int i) {
  SessionEnd e;
  e.session_id = "s" + std::to_string(i);
  e.client = "10.0.0.9:4000";
  e.principal = "alice";
  e.bytes_up = 100 + i;
  e.reason = "closed";
  return e;
}

AuditOptions keyed(const TempDir& dir, uint64_t every = 10) {
  AuditOptions o;
  o.path = dir.file("relay.audit.jsonl");
  o.component = "relay";
  o.fsync_each = true;
  o.key_path = dir.file("relay-audit.key");
  o.checkpoint_every = every;
  return o;
}

TrustedKeys trust(const std::string& key_path, const std::string& writer) {
  auto k = AuditKey::load(key_path);
  auto line = k.public_line();
  auto sp = line.find(' ');
  TrustedKeys t;
  t.add(writer, *parse_public_key(line.substr(0, sp), line.substr(sp + 1), nullptr));
  return t;
}

std::string writer_of(const AuditOptions& o) {
  char h[256] = {};
  ::gethostname(h, sizeof(h) - 1);
  return o.component + "@" + h;
}

VerifyResult verify_keyed(const std::vector<std::string>& files, const TrustedKeys& t,
                          uint64_t from_seq = 0) {
  VerifyOptions v;
  v.trusted = &t;
  v.require_head = true;
  v.from_seq = from_seq;
  return verify_chain(files, v);
}

// Rewrites the chain from line `from` on: every prev recomputed; checkpoints re-signed with `key`
// (or left with their old signature when null), as an attacker with write access would.
void recompute(std::vector<std::string>& lines, size_t from, const AuditKey* key,
               bool drop_checkpoints = false) {
  std::string prev = from == 0 ? kZeroHash : sha256_hex(lines[from - 1]);
  uint64_t seq = from == 0 ? 0 : nlohmann::json::parse(lines[from - 1])["seq"].get<uint64_t>();
  std::vector<std::string> out(lines.begin(), lines.begin() + static_cast<long>(from));
  for (size_t i = from; i < lines.size(); ++i) {
    auto j = nlohmann::ordered_json::parse(lines[i]);
    if (drop_checkpoints && j["type"] == "checkpoint") continue;
    j["seq"] = ++seq;
    j["prev"] = prev;
    if (key && j["type"] == "checkpoint") {
      j["sig"] = common::base64_encode(key->sign(checkpoint_message(
          j["writer"], seq, prev, j["ts"], j["every"], j["interval_s"], j["final"].get<bool>())));
      j["key_fp"] = key->fingerprint();
    }
    out.push_back(j.dump());
    prev = sha256_hex(out.back());
  }
  lines = out;
}

TEST(AuditKeyTest, CreatedPrivateOnFirstStartAndReused) {
  TempDir dir;
  std::string path = dir.file("keys/audit.key");
  auto a = AuditKey::load_or_create(path);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto b = AuditKey::load_or_create(path);
  EXPECT_EQ(a.public_line(), b.public_line());
  EXPECT_EQ(a.public_line().rfind("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", 0), 0u) << a.public_line();
  // A key others can read is refused, with the fix.
  ::chmod(path.c_str(), 0644);
  try {
    AuditKey::load(path);
    FAIL() << "group/other-readable key accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("chmod 600"), std::string::npos) << e.what();
  }
}

TEST(AuditKeyTest, TrustedKeysFileNamesTheBadLine) {
  TempDir dir;
  auto k = AuditKey::load_or_create(dir.file("k"));
  write_file(dir.file("trusted"), "# fleet\nrelay@a " + k.public_line() + " comment\n* " + k.public_line() +
                                      "\nagent@b ssh-rsa AAAA\n");
  try {
    TrustedKeys::load(dir.file("trusted"));
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("trusted:4:"), std::string::npos) << e.what();
  }
  write_file(dir.file("trusted"), "relay@a " + k.public_line() + "\n* " + k.public_line() + "\n");
  auto t = TrustedKeys::load(dir.file("trusted"));
  EXPECT_EQ(t.for_writer("relay@a").size(), 2u);
  EXPECT_EQ(t.for_writer("agent@z").size(), 1u);  // the fleet-wide key
}

TEST(AuditCheckpointTest, EveryNRecordsAndAtCleanShutdown) {
  TempDir dir;
  auto o = keyed(dir, 10);
  {
    AuditLog log(o);
    for (int i = 0; i < 35; ++i) log.append(end_record(i));
    EXPECT_EQ(log.stats().checkpoints, 3u);
  }
  auto lines = lines_of(o.path);
  ASSERT_EQ(lines.size(), 35u + 4u);
  auto last = parse_record(lines.back(), nullptr);
  ASSERT_TRUE(last);
  auto cp = record_as<Checkpoint>(*last);
  ASSERT_TRUE(cp);
  EXPECT_TRUE(cp->final);
  EXPECT_EQ(cp->writer, writer_of(o));
  auto t = trust(o.key_path, writer_of(o));
  auto res = verify_keyed({o.path}, t);
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  EXPECT_EQ(res.checkpoints, 4u);
  EXPECT_EQ(res.unsigned_tail, 0u);
  EXPECT_TRUE(res.warnings.empty());
  // A key trusted for another writer does not vouch for this one.
  auto other = trust(o.key_path, "relay@elsewhere");
  auto wrong = verify_keyed({o.path}, other);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error->message.find("no trusted audit key"), std::string::npos) << wrong.error->message;
}

TEST(AuditCheckpointTest, IdleWriterCheckpointsOnItsInterval) {
  TempDir dir;
  auto o = keyed(dir, 1000);
  o.fsync_each = false;
  o.batch_interval = std::chrono::milliseconds(20);
  o.checkpoint_interval = std::chrono::seconds(1);
  AuditLog log(o);
  log.append(end_record(1));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (log.stats().checkpoints < 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_GE(log.stats().checkpoints, 2u);  // a heartbeat even without new records
  log.flush();
  // While the writer runs, an unsigned tail is a warning, not an error.
  log.append(end_record(2));
  log.flush();
  auto t = trust(o.key_path, writer_of(o));
  auto res = verify_keyed({o.path}, t);
  EXPECT_TRUE(res.ok()) << res.error->to_string();
}

TEST(AuditCheckpointTest, TailCutWhileTheWriterIsStoppedFails) {
  TempDir dir;
  auto o = keyed(dir, 10);
  {
    AuditLog log(o);
    for (int i = 0; i < 25; ++i) log.append(end_record(i));
  }
  auto lines = lines_of(o.path);
  lines.resize(lines.size() - 3);  // two records and the final checkpoint
  write_lines(o.path, lines);
  auto t = trust(o.key_path, writer_of(o));
  auto res = verify_keyed({o.path}, t);
  ASSERT_FALSE(res.ok());
  EXPECT_NE(res.error->message.find("without a final checkpoint"), std::string::npos) << res.error->message;
  EXPECT_NE(res.error->message.find("up to 10 records may be missing"), std::string::npos)
      << res.error->message;
  // Without keys only the chain is checked: the cut is invisible (that is what the keys are for).
  EXPECT_TRUE(verify_chain({o.path}).ok());

  // A restart after it (as after a crash) says so in the chain: then it is a warning.
  { AuditLog log(o); }
  auto after = verify_keyed({o.path}, t);
  EXPECT_TRUE(after.ok()) << after.error->to_string();
  bool warned = false;
  for (const auto& w : after.warnings)
    warned = warned || w.message.find("never covered") != std::string::npos;
  EXPECT_TRUE(warned);
}

TEST(AuditCheckpointTest, EditedRecordWithLaterHashesFixedUpFailsAtTheNextCheckpoint) {
  TempDir dir;
  auto o = keyed(dir, 10);
  {
    AuditLog log(o);
    for (int i = 0; i < 25; ++i) log.append(end_record(i));
  }
  auto t = trust(o.key_path, writer_of(o));
  auto lines = lines_of(o.path);
  auto pos = lines[3].find("alice");
  lines[3].replace(pos, 5, "mallory");
  recompute(lines, 4, nullptr);
  write_lines(o.path, lines);
  EXPECT_TRUE(verify_chain({o.path}).ok());  // the plain chain is fooled
  auto res = verify_keyed({o.path}, t);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.error->line, 11u);  // the first checkpoint after the edit
  EXPECT_NE(res.error->message.find("signature does not verify"), std::string::npos) << res.error->message;
}

TEST(AuditCheckpointTest, ChainRecomputedWithAnotherKeyFailsAtTheFirstCheckpoint) {
  TempDir dir;
  auto o = keyed(dir, 10);
  {
    AuditLog log(o);
    for (int i = 0; i < 25; ++i) log.append(end_record(i));
  }
  auto t = trust(o.key_path, writer_of(o));
  auto mallory = AuditKey::load_or_create(dir.file("mallory.key"));
  auto lines = lines_of(o.path);
  lines[20].replace(lines[20].find("alice"), 5, "mallory");
  recompute(lines, 0, &mallory);
  write_lines(o.path, lines);
  auto res = verify_keyed({o.path}, t);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.error->line, 11u);
  EXPECT_NE(res.error->message.find("signature does not verify"), std::string::npos) << res.error->message;

  // Dropping the checkpoints instead does not help: too many records without one.
  lines = lines_of(o.path);
  recompute(lines, 0, nullptr, /*drop_checkpoints=*/true);
  write_lines(o.path, lines);
  auto stripped = verify_keyed({o.path}, t);
  ASSERT_FALSE(stripped.ok());
}

TEST(AuditCheckpointTest, DeletedOldestFileIsAMissingHeadUnlessFromSeq) {
  TempDir dir;
  auto o = keyed(dir, 10);
  o.rotate_bytes = 2000;
  {
    AuditLog log(o);
    for (int i = 0; i < 40; ++i) log.append(end_record(i));
  }
  auto logs = find_audit_logs(dir.path());
  ASSERT_EQ(logs.size(), 1u);
  auto files = logs[0];
  ASSERT_GE(files.size(), 3u);
  auto t = trust(o.key_path, writer_of(o));
  auto all = verify_keyed(files, t);
  EXPECT_TRUE(all.ok()) << all.error->to_string();
  fs::remove(files[0]);
  files.erase(files.begin());
  auto res = verify_keyed(files, t);
  ASSERT_FALSE(res.ok());
  EXPECT_NE(res.error->message.find("head of the chain is missing"), std::string::npos) << res.error->message;
  auto first = parse_record(lines_of(files[0])[0], nullptr);
  auto retained = verify_keyed(files, t, first->seq);
  EXPECT_TRUE(retained.ok()) << retained.error->to_string();
  // --from-seq earlier than what is there still names the missing records.
  auto early = verify_keyed(files, t, 1);
  ASSERT_FALSE(early.ok());
  EXPECT_NE(early.error->message.find("are missing"), std::string::npos) << early.error->message;
}

// commit(): durable or not in the chain at all.
TEST(AuditFailureTest, CommitOnAFullDeviceFailsAndLeavesNoRecord) {
  TempDir dir;
  if (!sshring::testing::make_full_device(dir.file("grant.audit.jsonl")))
    GTEST_SKIP() << "cannot make a full device";
  AuditLog log({.path = dir.file("grant.audit.jsonl"), .component = "grant", .fsync_each = true});
  std::string err;
  EXPECT_FALSE(log.commit(GrantAdd{{.grant_id = "g"}, "r", "", "a"}, &err));
  EXPECT_NE(err.find("cannot be written"), std::string::npos) << err;
  EXPECT_FALSE(log.writable());
  EXPECT_EQ(log.stats().records, 0u);
}

// A real full file system that frees up again: nothing sealed is lost, the chain stays whole, the
// health check follows, and records beyond the buffer become one log_gap record.
TEST(AuditFailureTest, FullFileSystemRecoversWithoutLosingTheChain) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
  TempDir dir;
  std::string mnt = dir.file("mnt");
  fs::create_directories(mnt);
  ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=256k"), 0) << std::strerror(errno);
  struct Unmount {
    std::string p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt};
  AuditOptions o{.path = mnt + "/agent.audit.jsonl", .component = "agent", .fsync_each = true};
  o.max_pending_bytes = 4096;
  AuditLog log(o);
  log.append(end_record(0));
  ASSERT_TRUE(log.writable());
  // Fill the file system.
  std::string filler = mnt + "/filler";
  {
    std::string chunk(4096, 'x');
    FILE* f = std::fopen(filler.c_str(), "w");
    ASSERT_NE(f, nullptr);
    while (std::fwrite(chunk.data(), 1, chunk.size(), f) == chunk.size() && std::fflush(f) == 0) {
    }
    std::fclose(f);
  }
  for (int i = 1; i <= 60; ++i) log.append(end_record(i));
  EXPECT_FALSE(log.writable());
  EXPECT_GT(log.write_errors(), 0u);
  EXPECT_GT(log.stats().dropped, 0u);
  fs::remove(filler);
  log.append(end_record(61));
  EXPECT_TRUE(log.flush());
  EXPECT_TRUE(log.writable());
  auto res = verify_chain({o.path});
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  uint64_t kept = 0, gap_dropped = 0;
  for (const auto& l : lines_of(o.path)) {
    auto r = parse_record(l, nullptr);
    ASSERT_TRUE(r);
    if (r->type == "session_end") ++kept;
    if (auto g = record_as<LogGap>(*r)) gap_dropped += g->dropped;
  }
  EXPECT_EQ(gap_dropped, log.stats().dropped);
  EXPECT_EQ(kept + gap_dropped, 62u);  // every record is either in the chain or counted in a gap
}

TEST(AuditFailureTest, DeletedLiveFileIsRestoredAndTheChainContinues) {
  TempDir dir;
  AuditOptions o{.path = dir.file("relay.audit.jsonl"), .component = "relay", .fsync_each = true};
  AuditLog log(o);
  for (int i = 0; i < 5; ++i) log.append(end_record(i));
  struct stat before {};
  ASSERT_EQ(::stat(o.path.c_str(), &before), 0);
  fs::remove(o.path);
  log.append(end_record(5));
  struct stat after {};
  ASSERT_EQ(::stat(o.path.c_str(), &after), 0);
  EXPECT_NE(before.st_ino, after.st_ino);  // a new file
  log.append(end_record(6));
  auto res = verify_chain({o.path});
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  EXPECT_EQ(res.records, 8u);  // 7 records + log_reopen, nothing lost
  bool noted = false;
  for (const auto& l : lines_of(o.path))
    noted = noted || l.find("\"type\":\"log_reopen\"") != std::string::npos;
  EXPECT_TRUE(noted);
  EXPECT_EQ(log.stats().reopened, 1u);

  // Replaced by another file: it is moved aside, our chain goes on at the path.
  write_file(o.path + ".new", "not ours\n");
  fs::rename(o.path + ".new", o.path);
  log.append(end_record(7));
  auto again = verify_chain({o.path});
  EXPECT_TRUE(again.ok()) << again.error->to_string();
  bool aside = false;
  for (const auto& e : fs::directory_iterator(dir.path()))
    aside = aside || e.path().filename().string().find(".replaced.") != std::string::npos;
  EXPECT_TRUE(aside);
}

// RFC 5424 output: structured data names the writer and the chain; MSG is the exact file line.
TEST(AuditSyslogTest, EachRecordGoesOutAsRfc5424WithTheChainInStructuredData) {
  TempDir dir;
  std::string sock = dir.file("log.sock");
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, sock.c_str(), sizeof(sa.sun_path) - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  AuditOptions o{.path = dir.file("agent.audit.jsonl"), .component = "agent", .fsync_each = true};
  o.syslog = true;
  o.syslog_socket = sock;
  {
    AuditLog log(o);
    log.append(FlowOpen{.flow = {.src = "10.0.0.9", .dst = "10.0.0.5", .sport = 1, .dport = 22},
                        .tag = "bypass_unapproved"});
    log.append(PolicyReload{.version = "say \"]\\"});
  }
  auto lines = lines_of(o.path);
  ASSERT_EQ(lines.size(), 2u);
  std::string prev = kZeroHash;
  for (size_t i = 0; i < lines.size(); ++i) {
    char buf[70000];
    ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    ASSERT_GT(n, 0);
    std::string m(buf, static_cast<size_t>(n));
    EXPECT_EQ(m.rfind("<86>1 ", 0), 0u) << m;
    EXPECT_NE(m.find(" sshring "), std::string::npos) << m;
    std::string sd = std::string("[sshring@32473 writer=\"") + "agent@";
    EXPECT_NE(m.find(sd), std::string::npos) << m;
    EXPECT_NE(m.find("seq=\"" + std::to_string(i + 1) + "\""), std::string::npos) << m;
    EXPECT_NE(m.find("prev=\"" + prev + "\""), std::string::npos) << m;
    prev = sha256_hex(lines[i]);
    EXPECT_NE(m.find("hash=\"" + prev + "\"] "), std::string::npos) << m;
    EXPECT_EQ(m.substr(m.size() - lines[i].size()), lines[i]);
  }
  ::close(fd);
}

}  // namespace
}  // namespace sshring::metrics
