// The audit log writer and the chain verifier: tampering, deletion, reordering, rotation, torn lines
// and concurrent writers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "common/session_id.h"
#include "metrics/audit.h"
#include "metrics/audit_record.h"
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

nlohmann::json session_end(int i) {
  return {{"type", "session_end"}, {"session_id", "s" + std::to_string(i)},
          {"principal", "alice"},  {"client", "10.0.0.9:4000"},
          {"bytes_up", 100 + i},   {"bytes_down", 200},
          {"duration_ms", 5},      {"reason", "closed"}};
}

// Writes n records (fsync each) into a fresh log.
std::string make_log(const TempDir& dir, int n, const std::string& name = "relay.audit.jsonl") {
  AuditOptions o;
  o.path = dir.file(name);
  o.component = "relay";
  o.fsync_each = true;
  AuditLog log(o);
  for (int i = 1; i <= n; ++i) log.append(session_end(i));
  return o.path;
}

TEST(AuditLogTest, RecordsCarryEnvelopeAndChain) {
  TempDir dir;
  auto path = make_log(dir, 3);
  auto lines = lines_of(path);
  ASSERT_EQ(lines.size(), 3u);
  std::string prev = kZeroHash;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string err;
    auto rec = parse_record(lines[i], &err);
    ASSERT_TRUE(rec) << err << ": " << lines[i];
    EXPECT_EQ(rec->seq, i + 1);
    EXPECT_EQ(rec->prev, prev);
    EXPECT_EQ(rec->component, "relay");
    EXPECT_EQ(rec->type, "session_end");
    EXPECT_FALSE(rec->host.empty());
    EXPECT_EQ(rec->ts.size(), 24u) << rec->ts;  // 2026-11-30T14:53:24.123Z
    EXPECT_EQ(rec->body["bytes_up"], 101 + static_cast<int>(i));
    prev = sha256_hex(lines[i]);
  }
  // The envelope comes first, in a fixed order (readable with grep/jq).
  EXPECT_EQ(lines[0].rfind("{\"ts\":", 0), 0u) << lines[0];
  auto res = verify_chain({path});
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  EXPECT_EQ(res.records, 3u);
  EXPECT_TRUE(res.warnings.empty());
}

TEST(AuditLogTest, RejectsRecordsWithoutType) {
  TempDir dir;
  AuditLog log({.path = dir.file("a.jsonl"), .component = "relay"});
  EXPECT_THROW(log.append({{"session_id", "x"}}), std::invalid_argument);
  EXPECT_THROW(log.append(nlohmann::json::array()), std::invalid_argument);
}

TEST(AuditLogTest, ReopenContinuesTheChain) {
  TempDir dir;
  auto path = make_log(dir, 2);
  make_log(dir, 2);  // same file: continues seq and prev
  auto lines = lines_of(path);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(parse_record(lines[2], nullptr)->seq, 3u);
  auto res = verify_chain({path});
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  EXPECT_EQ(res.records, 4u);
}

TEST(AuditLogTest, SecondWriterOnTheSameFileIsRefused) {
  TempDir dir;
  AuditLog first({.path = dir.file("a.jsonl"), .component = "relay"});
  try {
    AuditLog second({.path = dir.file("a.jsonl"), .component = "relay"});
    FAIL() << "expected the second writer to be refused";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("a.jsonl"), std::string::npos) << e.what();
  }
}

TEST(AuditVerifyTest, TamperedByteNamesTheModifiedRecord) {
  TempDir dir;
  auto path = make_log(dir, 6);
  auto lines = lines_of(path);
  auto pos = lines[3].find("alice");
  ASSERT_NE(pos, std::string::npos);
  lines[3][pos] = 'A';  // record 4, still valid JSON
  write_lines(path, lines);
  auto res = verify_chain({path});
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.error->line, 4u) << res.error->to_string();
  EXPECT_NE(res.error->message.find("modified"), std::string::npos) << res.error->to_string();
  EXPECT_EQ(res.records, 3u);
}

TEST(AuditVerifyTest, TamperedByteBreakingJsonIsNamed) {
  TempDir dir;
  auto path = make_log(dir, 4);
  auto lines = lines_of(path);
  lines[1][0] = '[';
  write_lines(path, lines);
  auto res = verify_chain({path});
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.error->line, 2u);
  EXPECT_NE(res.error->message.find("not a valid audit record"), std::string::npos) << res.error->to_string();
}

TEST(AuditVerifyTest, DeletedRecordIsNamed) {
  TempDir dir;
  auto path = make_log(dir, 6);
  auto lines = lines_of(path);
  lines.erase(lines.begin() + 2);  // seq 3
  write_lines(path, lines);
  auto res = verify_chain({path});
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.error->line, 3u) << res.error->to_string();
  EXPECT_NE(res.error->message.find("records 3 were deleted"), std::string::npos) << res.error->to_string();
}

TEST(AuditVerifyTest, DeletedFirstRecordIsNamed) {
  TempDir dir;
  auto path = make_log(dir, 3);
  auto lines = lines_of(path);
  lines.erase(lines.begin());
  write_lines(path, lines);
  auto res = verify_chain({path});
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.error->line, 1u);
  EXPECT_NE(res.error->message.find("does not start a chain"), std::string::npos) << res.error->to_string();
}

TEST(AuditVerifyTest, ReorderedRecordsAreNamed) {
  TempDir dir;
  auto path = make_log(dir, 6);
  auto lines = lines_of(path);
  std::swap(lines[3], lines[4]);
  write_lines(path, lines);
  auto res = verify_chain({path});
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.error->line, 4u) << res.error->to_string();
  EXPECT_NE(res.error->message.find("seq 5 follows seq 3"), std::string::npos) << res.error->to_string();
}

TEST(AuditVerifyTest, RotationKeepsTheChain) {
  TempDir dir;
  AuditOptions o;
  o.path = dir.file("agent.audit.jsonl");
  o.component = "agent";
  o.rotate_bytes = 2000;
  o.batch_interval = std::chrono::milliseconds(5);
  {
    AuditLog log(o);
    for (int i = 0; i < 40; ++i) log.append(session_end(i));
  }
  std::vector<std::string> rotated;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    auto name = e.path().filename().string();
    if (name.rfind("agent.audit.jsonl.", 0) == 0) rotated.push_back(e.path().string());
  }
  std::sort(rotated.begin(), rotated.end());
  ASSERT_GE(rotated.size(), 3u);
  for (const auto& r : rotated) EXPECT_LE(fs::file_size(r), 2000u + 400u) << r;

  // Each new file starts with log_rotate naming its predecessor.
  auto live = lines_of(o.path);
  ASSERT_FALSE(live.empty());
  auto first = parse_record(live[0], nullptr);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->type, "log_rotate");
  EXPECT_EQ(first->body["previous_file"], fs::path(rotated.back()).filename().string());

  std::vector<std::string> all = rotated;
  all.push_back(o.path);
  auto res = verify_chain(all);
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  EXPECT_EQ(res.records, 40u + rotated.size());
  EXPECT_TRUE(res.warnings.empty());

  // find_audit_logs orders the rotated files before the live one and ignores other files beside it.
  sshring::testing::write_file(o.path + ".lock", "");
  auto logs = find_audit_logs(dir.path());
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_EQ(logs[0], all);

  // The live file alone: chain continues from a file not given (a warning, not an error).
  auto alone = verify_chain({o.path});
  EXPECT_TRUE(alone.ok()) << alone.error->to_string();
  ASSERT_EQ(alone.warnings.size(), 1u);
  EXPECT_NE(alone.warnings[0].message.find("not given"), std::string::npos);

  // Files out of order break the chain.
  std::vector<std::string> swapped = all;
  std::swap(swapped[0], swapped[1]);
  EXPECT_FALSE(verify_chain(swapped).ok());
}

TEST(AuditVerifyTest, TornLastLineIsAWarningAndReopenRecovers) {
  TempDir dir;
  auto path = make_log(dir, 5);
  // A crash mid-write: the last line loses its second half and newline.
  auto content = read_file(path);
  auto last_start = content.rfind('\n', content.size() - 2) + 1;
  size_t cut = last_start + (content.size() - last_start) / 2;
  fs::resize_file(path, cut);
  auto res = verify_chain({path});
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  EXPECT_EQ(res.records, 4u);
  ASSERT_EQ(res.warnings.size(), 1u);
  EXPECT_EQ(res.warnings[0].line, 5u);
  EXPECT_NE(res.warnings[0].message.find("torn"), std::string::npos);

  // The next writer cuts the torn tail, records it and continues from record 4.
  make_log(dir, 2);
  auto lines = lines_of(path);
  ASSERT_EQ(lines.size(), 7u);
  auto rec = parse_record(lines[4], nullptr);
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->type, "log_recover");
  EXPECT_EQ(rec->seq, 5u);
  EXPECT_EQ(rec->body["torn_bytes"], cut - last_start);
  auto after = verify_chain({path});
  EXPECT_TRUE(after.ok()) << after.error->to_string();
  EXPECT_EQ(after.records, 7u);
  EXPECT_TRUE(after.warnings.empty());
}

TEST(AuditLogTest, ConcurrentAppendsKeepAValidChain) {
  TempDir dir;
  AuditOptions o;
  o.path = dir.file("relay.audit.jsonl");
  o.component = "relay";
  o.batch_interval = std::chrono::milliseconds(2);
  o.rotate_bytes = 64 * 1024;
  constexpr int kThreads = 4, kEach = 500;
  {
    AuditLog log(o);
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
      ts.emplace_back([&log, t] {
        for (int i = 0; i < kEach; ++i) log.append(session_end(t * kEach + i));
      });
    }
    for (auto& t : ts) t.join();
    log.flush();
    EXPECT_EQ(log.write_errors(), 0u);
  }
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir.path())) files.push_back(e.path().string());
  std::sort(files.begin(), files.end(), [&](const std::string& a, const std::string& b) {
    // The live file (no suffix) is newest.
    if (a == o.path) return false;
    if (b == o.path) return true;
    return a < b;
  });
  auto res = verify_chain(files);
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  EXPECT_EQ(res.records, kThreads * kEach + files.size() - 1);
  // Every appended record is present exactly once.
  std::set<std::string> ids;
  for (const auto& f : files) {
    for (const auto& l : lines_of(f)) {
      auto r = parse_record(l, nullptr);
      if (r && r->type == "session_end") ids.insert(r->body["session_id"].get<std::string>());
    }
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kThreads * kEach));
}

// Batched appends are sealed later, on the writer thread; typed ones are even built there. The chain
// still holds every record once, in an order whose timestamps never go back, with commits (sealed on
// the caller's thread) interleaved from another thread, and a typed record reads back as it was given.
TEST(AuditLogTest, QueuedAppendsKeepTheirOrderAndTimesAcrossThreadsAndCommits) {
  TempDir dir;
  AuditOptions o;
  o.path = dir.file("relay.audit.jsonl");
  o.component = "relay";
  o.batch_interval = std::chrono::milliseconds(1);
  constexpr int kEach = 400, kCommits = 20;
  {
    AuditLog log(o);
    std::thread json_writer([&] {
      for (int i = 0; i < kEach; ++i) log.append(session_end(i));
    });
    std::thread typed_writer([&] {
      for (int i = 0; i < kEach; ++i) {
        SessionEnd e;
        e.session_id = "t" + std::to_string(i);
        e.reason = "closed";
        e.bytes_up = static_cast<uint64_t>(i);
        log.append(e);
      }
    });
    std::thread committer([&] {
      for (int i = 0; i < kCommits; ++i) EXPECT_TRUE(log.commit(session_end(100000 + i)));
    });
    json_writer.join();
    typed_writer.join();
    committer.join();
    EXPECT_EQ(log.stats().records, static_cast<uint64_t>(2 * kEach + kCommits));
    EXPECT_TRUE(log.flush());
  }
  auto res = verify_chain({o.path});
  ASSERT_TRUE(res.ok()) << res.error->to_string();
  int64_t last_ms = 0;
  std::set<std::string> ids;
  for (const auto& l : lines_of(o.path)) {
    auto r = parse_record(l, nullptr);
    ASSERT_TRUE(r) << l;
    EXPECT_GE(r->ts_ms, last_ms) << l;
    last_ms = r->ts_ms;
    if (auto e = record_as<SessionEnd>(*r)) {
      ids.insert(e->session_id);
      if (e->session_id[0] == 't') {
        EXPECT_EQ("t" + std::to_string(e->bytes_up), e->session_id);
      }
    }
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(2 * kEach + kCommits));
}

TEST(AuditLogTest, BatchedModeReachesDiskWithinTheBound) {
  TempDir dir;
  AuditOptions o;
  o.path = dir.file("a.jsonl");
  o.component = "agent";
  o.batch_interval = std::chrono::milliseconds(50);
  AuditLog log(o);
  log.append({{"type", "policy_reload"}, {"result", "success"}, {"version", "v1"}});
  // Without flush(): the writer thread must put it on disk within the interval.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (fs::file_size(o.path) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(fs::file_size(o.path), 0u);
  EXPECT_EQ(parse_record(lines_of(o.path)[0], nullptr)->body["version"], "v1");
}

// A full disk must not throw into the caller (the relay's close path): the failure is counted and logged.
TEST(AuditLogTest, WriteErrorsAreCountedNotThrown) {
  TempDir dir;
  if (!sshring::testing::make_full_device(dir.file("full"))) GTEST_SKIP() << "cannot make a full device";
  AuditLog log({.path = dir.file("full"), .component = "relay", .fsync_each = true});
  EXPECT_NO_THROW(log.append(session_end(1)));
  EXPECT_NO_THROW(log.append(session_end(2)));
  EXPECT_EQ(log.write_errors(), 2u);
}

// Batched: flush() counts what append() queued; a record that did not reach the disk makes it false.
TEST(AuditLogTest, BatchedFlushIsFalseWhileQueuedRecordsCannotBeWritten) {
  TempDir dir;
  if (!sshring::testing::make_full_device(dir.file("full"))) GTEST_SKIP() << "cannot make a full device";
  AuditLog log({.path = dir.file("full"), .component = "relay"});
  log.append(session_end(1));
  EXPECT_FALSE(log.flush());
  EXPECT_FALSE(log.writable());
  EXPECT_GE(log.write_errors(), 1u);
}

// With syslog on, records still go to the file unchanged (syslog(3) itself cannot fail visibly).
TEST(AuditLogTest, SyslogCopyKeepsTheFileChain) {
  TempDir dir;
  {
    AuditLog log({.path = dir.file("a.jsonl"), .component = "agent", .syslog = true});
    log.append(session_end(1));
    log.append(session_end(2));
  }
  auto res = verify_chain({dir.file("a.jsonl")});
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  EXPECT_EQ(res.records, 2u);
}

TEST(AuditLogTest, OversizedFieldsAreCutSoTheRecordStaysVerifiable) {
  TempDir dir;
  {
    AuditLog log({.path = dir.file("a.jsonl"), .component = "relay", .fsync_each = true});
    auto rec = session_end(1);
    rec["principal"] = std::string(200000, 'p');
    log.append(rec);
  }
  auto res = verify_chain({dir.file("a.jsonl")});
  EXPECT_TRUE(res.ok()) << res.error->to_string();
  auto line = lines_of(dir.file("a.jsonl"))[0];
  EXPECT_LT(line.size(), kMaxRecordBytes);
  EXPECT_NE(line.find("...[truncated]"), std::string::npos);
}

// The session records are written straight into the line from their fields (batched mode, the
// relay's). Each line must be the one the json path writes, byte for byte (but for the times and hence
// the chain), for every string a peer could put in a field: quotes, control bytes, invalid UTF-8, and
// lengths around the cut.
TEST(AuditLogTest, SessionRecordsWrittenFromTheirFieldsEqualTheJsonPath) {
  const std::vector<std::string> hostile = {"",
                                            "alice",
                                            "a\"b",
                                            "back\\slash",
                                            std::string("nul\0byte", 8),
                                            "tab\tnl\ncr\r",
                                            "\x01\x1f\x7f",
                                            "caf\xc3\xa9 \xe2\x82\xac",
                                            "bad\xff\xfeutf8",
                                            "cut\xe2\x82",
                                            "</script><b>",
                                            std::string(4096, 'x'),
                                            std::string(4097, 'x'),
                                            std::string(4095, 'x') + "\xc3\xa9",
                                            std::string(9000, '"')};
  const size_t n = hostile.size();
  auto pick = [&](size_t i) -> const std::string& { return hostile[i % n]; };
  TempDir dir;
  {
    AuditLog fields({.path = dir.file("fields.jsonl"), .component = "relay"});
    AuditLog json({.path = dir.file("json.jsonl"), .component = "relay"});
    for (size_t i = 0; i < n; ++i) {
      SessionFields f{"s" + pick(i), "c" + pick(i + 1), pick(i + 2), pick(i + 3),
                      pick(i + 4),   pick(i + 5),       pick(i + 6)};
      SessionStart st{f};
      SessionEnd en{f};
      en.bytes_up = i;
      en.bytes_down = UINT64_MAX;
      en.reason = pick(i + 7);
      SessionDeny de{f};
      de.reason = pick(i + 8);
      de.detail = pick(i + 9);
      fields.append(st);
      fields.append(en);
      fields.append(de);
      json.append(st.to_json());
      json.append(en.to_json());
      json.append(de.to_json());
    }
  }
  auto a = lines_of(dir.file("fields.jsonl"));
  auto b = lines_of(dir.file("json.jsonl"));
  ASSERT_EQ(a.size(), 3 * n);
  ASSERT_EQ(b.size(), 3 * n);
  const std::regex times(R"re("ts":"[^"]*"|"prev":"[0-9a-f]{64}")re");
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(std::regex_replace(a[i], times, ""), std::regex_replace(b[i], times, "")) << "line " << i + 1;
  for (const char* f : {"fields.jsonl", "json.jsonl"}) {
    auto res = verify_chain({dir.file(f)});
    EXPECT_TRUE(res.ok()) << f << ": " << res.error->to_string();
  }
  // And they read back as the struct that went in (here: a cut, replaced principal stays a string).
  std::string error;
  auto rec = parse_record(a[1], &error);
  ASSERT_TRUE(rec) << error;
  auto end = record_as<SessionEnd>(*rec);
  ASSERT_TRUE(end);
  EXPECT_EQ(end->bytes_down, UINT64_MAX);
  EXPECT_EQ(end->session_id, "s" + pick(0));
}

// A relay worker hands session records over as raw values (append_session: start, end and deny); the
// sealing thread formats them. The line must be the one the typed record with the same values writes:
// IPv4 and IPv6 addresses, unset ones absent, hostile names, in batched and fsync-each mode.
TEST(AuditLogTest, SessionEventsFromRawValuesEqualTheTypedRecords) {
  const std::vector<std::string> names = {"",
                                          "alice",
                                          "a\"b",
                                          std::string("nul\0byte", 8),
                                          "bad\xff\xfeutf8",
                                          std::string(4097, 'x'),
                                          "</script><b>"};
  const std::vector<std::string> addrs = {"10.0.0.9:41022", "[2001:db8::7]:22", "[::1]:5", ""};
  TempDir dir;
  for (bool fsync_each : {false, true}) {
    std::string raw_file = dir.file(fsync_each ? "raw-sync.jsonl" : "raw.jsonl");
    std::string typed_file = dir.file(fsync_each ? "typed-sync.jsonl" : "typed.jsonl");
    {
      AuditLog raw({.path = raw_file, .component = "relay", .fsync_each = fsync_each});
      AuditLog typed({.path = typed_file, .component = "relay", .fsync_each = fsync_each});
      auto addr = [](const std::string& a) {
        return a.empty() ? sshring::common::SockAddr{} : *sshring::common::SockAddr::parse(a);
      };
      for (size_t i = 0; i < 2 * names.size(); ++i) {
        SessionEvent e;
        e.session_id = 0xa1 + (i << 40);
        e.client = addr(addrs[i % addrs.size()].empty() ? addrs[0] : addrs[i % addrs.size()]);
        e.target_addr = addr(addrs[(i + 1) % addrs.size()]);
        e.upstream_local = addr(addrs[(i + 2) % addrs.size()]);
        if (i % names.size() != 0)  // and once without names (unauthenticated relay)
          e.names =
              std::make_shared<const SessionNames>(SessionNames{.principal = names[i % names.size()],
                                                                .key_fp = names[(i + 1) % names.size()],
                                                                .target_host = names[(i + 2) % names.size()],
                                                                .target_port = static_cast<uint16_t>(i)});
        SessionFields f{.session_id = sshring::common::session_id_string(e.session_id),
                        .client = e.client.to_string(),
                        .principal = e.names ? e.names->principal : "",
                        .key_fp = e.names ? e.names->key_fp : "",
                        .target_name = e.names && !e.names->target_host.empty()
                                           ? e.names->target_host + ":" + std::to_string(i)
                                           : "",
                        .target_addr = e.target_addr.len() ? e.target_addr.to_string() : "",
                        .upstream_local = e.upstream_local.len() ? e.upstream_local.to_string() : ""};
        e.type = SessionStart::kType;
        raw.append_session(e);
        typed.append(SessionStart{f});
        e.type = SessionEnd::kType;
        e.bytes_up = i;
        e.bytes_down = UINT64_MAX - i;
        e.duration_ms = 1000 * i;
        e.reason = i % 2 ? "client_closed" : "upstream_closed";
        raw.append_session(e);
        SessionEnd en{f};
        en.bytes_up = e.bytes_up;
        en.bytes_down = e.bytes_down;
        en.duration_ms = e.duration_ms;
        en.reason = e.reason;
        typed.append(en);
        e.type = SessionDeny::kType;
        e.reason = "bad_signature";
        e.detail = names[(i + 3) % names.size()];
        raw.append_session(e);
        SessionDeny de{f};
        de.reason = e.reason;
        de.detail = e.detail;
        typed.append(de);
      }
    }
    {
      // Only the three session types; anything else is a caller's bug, refused before it is queued.
      AuditLog log({.path = dir.file("refused.jsonl"), .component = "relay", .fsync_each = fsync_each});
      SessionEvent bad;
      EXPECT_THROW(log.append_session(bad), std::invalid_argument);
      bad.type = "grant_add";
      EXPECT_THROW(log.append_session(bad), std::invalid_argument);
      EXPECT_TRUE(log.flush());
      EXPECT_EQ(log.stats().records, 0u);
    }
    auto a = lines_of(raw_file);
    auto b = lines_of(typed_file);
    ASSERT_EQ(a.size(), 6 * names.size());
    ASSERT_EQ(a.size(), b.size());
    const std::regex times(R"re("ts":"[^"]*"|"prev":"[0-9a-f]{64}")re");
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_EQ(std::regex_replace(a[i], times, ""), std::regex_replace(b[i], times, "")) << "line " << i + 1;
    auto res = verify_chain({raw_file});
    EXPECT_TRUE(res.ok()) << res.error->to_string();
    // Addresses are written as text, principal and session id as the typed reader gets them back.
    std::string error;
    auto rec = parse_record(a[4], &error);  // the second session's session_end
    ASSERT_TRUE(rec) << error;
    auto end = record_as<SessionEnd>(*rec);
    ASSERT_TRUE(end);
    EXPECT_EQ(end->session_id, "00000100000000a1");
    EXPECT_EQ(end->client, "[2001:db8::7]:22");
    EXPECT_EQ(end->principal, "alice");
    EXPECT_EQ(end->bytes_down, UINT64_MAX - 1);
    EXPECT_EQ(end->reason, "client_closed");
  }
}

struct ParseCase {
  const char* name;
  std::string line;
  bool ok;
  const char* error_contains;
};

TEST(AuditRecordTest, ParserTable) {
  const std::string env =
      R"("ts":"2026-11-30T14:53:24.123Z","component":"agent","host":"h","seq":1,"prev":")" + kZeroHash + "\"";
  const std::string flow =
      R"("flow":{"src":"10.0.0.9","dst":"10.0.0.5","sport":4000,"dport":22,"proto":"tcp"})";
  const ParseCase cases[] = {
      {"flow_open", "{" + env + R"(,"type":"flow_open",)" + flow + R"(,"tag":"bypass_unapproved"})", true,
       ""},
      {"bad tag", "{" + env + R"(,"type":"flow_open",)" + flow + R"(,"tag":"other"})", false, "tag must be"},
      {"port range",
       "{" + env +
           R"(,"type":"flow_open","flow":{"src":"a","dst":"b","sport":70000,"dport":22,"proto":"tcp"},"tag":"proxied"})",
       false, "flow.sport"},
      {"close needs end",
       "{" + env + R"(,"type":"flow_close",)" + flow +
           R"(,"tag":"proxied","packets_in":1,"packets_out":1,"bytes_in":1,"bytes_out":1})",
       false, "'end' missing"},
      {"unknown type", "{" + env + R"(,"type":"coffee"})", false, "unknown record type"},
      {"negative bytes",
       "{" + env +
           R"(,"type":"session_end","session_id":"a","bytes_up":-1,"bytes_down":0,"duration_ms":0,"reason":"closed"})",
       false, "'bytes_up' must be"},
      {"seq zero",
       R"({"ts":"2026-11-30T14:53:24Z","type":"policy_reload","component":"a","host":"h","seq":0,"prev":")" +
           kZeroHash + R"(","result":"success"})",
       false, "seq"},
      {"bad ts",
       R"({"ts":"yesterday","type":"policy_reload","component":"a","host":"h","seq":1,"prev":")" + kZeroHash +
           R"(","result":"success"})",
       false, "RFC 3339"},
      {"short prev",
       R"({"ts":"2026-11-30T14:53:24Z","type":"policy_reload","component":"a","host":"h","seq":1,"prev":"abc","result":"success"})",
       false, "prev"},
      {"not json", "{\"ts\":", false, "not valid JSON"},
      {"array", "[1,2]", false, "not a JSON object"},
      {"too long", std::string(kMaxRecordBytes + 1, ' '), false, "byte limit"},
  };
  for (const auto& c : cases) {
    std::string err;
    auto rec = parse_record(c.line, &err);
    EXPECT_EQ(rec.has_value(), c.ok) << c.name << ": " << err;
    if (!c.ok) {
      EXPECT_NE(err.find(c.error_contains), std::string::npos) << c.name << ": " << err;
    }
  }
}

}  // namespace
}  // namespace sshring::metrics
