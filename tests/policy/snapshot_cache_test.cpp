// The consumers' disk cache of the last good snapshot, and the etcd store URI: round trip, and
// every way a cache file can be wrong is refused (torn, edited, other source, other format).
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "policy/snapshot_cache.h"
#include "policy/store_uri.h"
#include "tests/support/process.h"

namespace sshring::policy {
namespace {

SourceData sample() {
  SourceData d;
  d.policy_text = "version: 1\n";
  d.policy_origin = "etcd:/sshring/policy/current@7";
  for (const char* g : {R"({"id":"g-000000000001"})", R"({"id":"g-000000000002"})"})
    d.grants.push_back(std::make_shared<const std::string>(g));
  d.revision = 42;
  return d;
}

TEST(SnapshotCache, RoundTripsWhatTheSourceDelivered) {
  sshring::testing::TempDir dir;
  save_cached_snapshot(dir.file("cache"), "etcd://a:1/sshring", sample(), 1000);
  std::string why;
  auto c = load_cached_snapshot(dir.file("cache"), "etcd://a:1/sshring", &why);
  ASSERT_TRUE(c) << why;
  EXPECT_EQ(c->data.policy_text, sample().policy_text);
  ASSERT_EQ(c->data.grants.size(), 2u);
  EXPECT_EQ(*c->data.grants[0], *sample().grants[0]);
  EXPECT_EQ(*c->data.grants[1], *sample().grants[1]);
  EXPECT_EQ(c->data.revision, 42);
  EXPECT_EQ(c->saved_at, 1000);
  // Rewriting replaces it whole (rename over the old file: no temp file stays behind).
  auto d = sample();
  d.revision = 43;
  save_cached_snapshot(dir.file("cache"), "etcd://a:1/sshring", d, 1001);
  c = load_cached_snapshot(dir.file("cache"), "etcd://a:1/sshring", &why);
  ASSERT_TRUE(c) << why;
  EXPECT_EQ(c->data.revision, 43);
  std::string out;
  sshring::testing::sh("ls -a " + dir.file("cache"), &out);
  EXPECT_EQ(out.find(".tmp"), std::string::npos) << out;
}

TEST(SnapshotCache, RefusesMissingEditedTornAndForeignFiles) {
  sshring::testing::TempDir dir;
  const std::string cache = dir.file("cache");
  const std::string src = "etcd://a:1/sshring";
  std::string why;
  EXPECT_FALSE(load_cached_snapshot(cache, src, &why));
  EXPECT_NE(why.find("No such file"), std::string::npos) << why;

  save_cached_snapshot(cache, src, sample(), 1000);
  const std::string path = cached_snapshot_path(cache, src);
  const std::string good = sshring::testing::read_file(path);

  // An attacker (or a bad disk) adds a grant: the checksum no longer matches.
  auto j = nlohmann::json::parse(good);
  j["grants"].push_back(R"({"id":"g-ffffffffffff"})");
  sshring::testing::write_file(path, j.dump());
  EXPECT_FALSE(load_cached_snapshot(cache, src, &why));
  EXPECT_NE(why.find("checksum mismatch"), std::string::npos) << why;

  sshring::testing::write_file(path, good.substr(0, good.size() / 2));  // torn
  EXPECT_FALSE(load_cached_snapshot(cache, src, &why));
  EXPECT_NE(why.find("unreadable cache"), std::string::npos) << why;

  // A valid file for another source copied over this one.
  save_cached_snapshot(cache, "etcd://b:1/other", sample(), 1000);
  sshring::testing::write_file(path,
                               sshring::testing::read_file(cached_snapshot_path(cache, "etcd://b:1/other")));
  EXPECT_FALSE(load_cached_snapshot(cache, src, &why));
  EXPECT_NE(why.find("caches etcd://b:1/other"), std::string::npos) << why;

  j = nlohmann::json::parse(good);
  // Another format, one that wraps onto ours as a 32-bit int, and one of another JSON type.
  for (const nlohmann::json& f : {nlohmann::json(99), nlohmann::json(4294967297ull), nlohmann::json("1")}) {
    j["format"] = f;
    sshring::testing::write_file(path, j.dump());
    EXPECT_FALSE(load_cached_snapshot(cache, src, &why)) << f.dump();
    EXPECT_NE(why.find("cache format"), std::string::npos) << why;
  }
  sshring::testing::write_file(path, good);
  EXPECT_TRUE(load_cached_snapshot(cache, src, &why)) << why;
}

// Whoever can write the cache can rewrite it with a fresh checksum (the policy a consumer starts
// from while etcd is away), so a cache others could write is refused on load and on save, and a
// planted symlink is never followed.
TEST(SnapshotCache, RefusesACacheOthersCouldWriteAndFollowsNoSymlink) {
  sshring::testing::TempDir dir;
  const std::string cache = dir.file("cache");
  const std::string src = "etcd://a:1/sshring";
  std::string why;
  save_cached_snapshot(cache, src, sample(), 1000);
  const std::string path = cached_snapshot_path(cache, src);
  ASSERT_TRUE(load_cached_snapshot(cache, src, &why)) << why;

  // A world-writable (or group-writable) directory: refused both ways, with the fix in the message.
  for (mode_t mode : {01777, 0770}) {
    ASSERT_EQ(::chmod(cache.c_str(), mode), 0);
    EXPECT_FALSE(load_cached_snapshot(cache, src, &why));
    EXPECT_NE(why.find("is writable by group or others; run chmod go-w"), std::string::npos) << why;
    try {
      save_cached_snapshot(cache, src, sample(), 1001);
      ADD_FAILURE() << "saved into a directory others can write";
    } catch (const common::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("writable by group or others"), std::string::npos) << e.what();
    }
  }
  ASSERT_EQ(::chmod(cache.c_str(), 0750), 0);
  // The file itself group-writable, or a symlink to a good cache elsewhere.
  ASSERT_EQ(::chmod(path.c_str(), 0660), 0);
  EXPECT_FALSE(load_cached_snapshot(cache, src, &why));
  EXPECT_NE(why.find("writable by group or others"), std::string::npos) << why;
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  save_cached_snapshot(dir.file("elsewhere"), src, sample(), 1000);
  ASSERT_EQ(::rename(path.c_str(), (path + ".moved").c_str()), 0);
  ASSERT_EQ(::symlink(cached_snapshot_path(dir.file("elsewhere"), src).c_str(), path.c_str()), 0);
  EXPECT_FALSE(load_cached_snapshot(cache, src, &why));
  EXPECT_NE(why.find("a symlink (refused)"), std::string::npos) << why;
  ASSERT_EQ(::rename((path + ".moved").c_str(), path.c_str()), 0);
  // The directory a symlink to a trusted one.
  ASSERT_EQ(::symlink(cache.c_str(), dir.file("link").c_str()), 0);
  EXPECT_FALSE(load_cached_snapshot(dir.file("link"), src, &why));
  EXPECT_NE(why.find("symlinks are refused"), std::string::npos) << why;
  // Owned by another user (needs root to set up).
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(path.c_str(), 4242, 4242), 0);
    EXPECT_FALSE(load_cached_snapshot(cache, src, &why));
    EXPECT_NE(why.find("is owned by uid 4242"), std::string::npos) << why;
    ASSERT_EQ(::chown(path.c_str(), 0, 0), 0);
  }

  // A symlink planted at the temp name: the save does not write through it (the victim keeps its
  // contents), replaces it, and the cache is good.
  const std::string victim = dir.file("victim");
  sshring::testing::write_file(victim, "precious\n");
  ASSERT_EQ(::symlink(victim.c_str(), (path + ".tmp").c_str()), 0);
  save_cached_snapshot(cache, src, sample(), 1002);
  EXPECT_EQ(sshring::testing::read_file(victim), "precious\n");
  struct stat st {};
  EXPECT_NE(::lstat((path + ".tmp").c_str(), &st), 0);  // renamed into place, not left behind
  auto c = load_cached_snapshot(cache, src, &why);
  ASSERT_TRUE(c) << why;
  EXPECT_EQ(c->saved_at, 1002);
  // A stale regular temp file (a write that died) is replaced too.
  sshring::testing::write_file(path + ".tmp", "half a write");
  save_cached_snapshot(cache, src, sample(), 1003);
  ASSERT_TRUE((c = load_cached_snapshot(cache, src, &why))) << why;
  EXPECT_EQ(c->saved_at, 1003);
}

// The writer behind the reloader: the newest data wins, flush() waits for it, and data still pending
// when the writer goes away is written, not dropped. A directory it cannot create is counted.
TEST(SnapshotCache, WriterWritesTheNewestAndLosesNothingAtShutdown) {
  sshring::testing::TempDir dir;
  const std::string src = "etcd://a:1/sshring";
  std::string why;
  {
    SnapshotCacheWriter w(dir.file("cache"), src);
    for (int64_t rev = 1; rev <= 50; ++rev) {
      auto d = sample();
      d.revision = rev;
      w.submit(std::move(d), 1000 + rev);
    }
    w.flush();
    auto c = load_cached_snapshot(dir.file("cache"), src, &why);
    ASSERT_TRUE(c) << why;
    EXPECT_EQ(c->data.revision, 50);
    EXPECT_EQ(c->saved_at, 1050);
    auto d = sample();
    d.revision = 51;
    w.submit(std::move(d), 2000);  // still pending when `w` is destroyed
  }
  auto c = load_cached_snapshot(dir.file("cache"), src, &why);
  ASSERT_TRUE(c) << why;
  EXPECT_EQ(c->data.revision, 51);

  // Writes are an interval apart: a change right after a write waits (here: a minute) unless
  // someone flushes.
  {
    SnapshotCacheWriter w(dir.file("slow"), src, {}, std::chrono::minutes(1));
    auto d = sample();
    d.revision = 1;
    w.submit(std::move(d), 1);
    w.flush();
    d = sample();
    d.revision = 2;
    w.submit(std::move(d), 2);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    c = load_cached_snapshot(dir.file("slow"), src, &why);
    ASSERT_TRUE(c) << why;
    EXPECT_EQ(c->data.revision, 1);  // held back
    w.flush();
    c = load_cached_snapshot(dir.file("slow"), src, &why);
    ASSERT_TRUE(c) << why;
    EXPECT_EQ(c->data.revision, 2);
  }

  sshring::testing::write_file(dir.file("file"), "x");
  SnapshotCacheWriter bad(dir.file("file") + "/cache", src);
  bad.submit(sample(), 1);
  bad.flush();
  EXPECT_EQ(bad.failed(), 1u);
}

TEST(StoreUri, ParsesEndpointsAndPrefix) {
  std::string why;
  auto u = parse_etcd_uri("etcd://10.0.0.1:2379,10.0.0.2:2379/fleet/a", &why);
  ASSERT_TRUE(u) << why;
  EXPECT_EQ(u->endpoints, (std::vector<std::string>{"10.0.0.1:2379", "10.0.0.2:2379"}));
  EXPECT_EQ(u->prefix, "/fleet/a");
  u = parse_etcd_uri("etcd://etcd.internal:2379", &why);
  ASSERT_TRUE(u) << why;
  EXPECT_EQ(u->prefix, "/sshring");
  struct Bad {
    const char* uri;
    const char* why;
  } bad[] = {{"etcd://10.0.0.1/x", "is not HOST:PORT"},  {"etcd://:2379/x", "is not HOST:PORT"},
             {"etcd://a:23x9/x", "is not HOST:PORT"},    {"etcd://a:1,/x", "is not HOST:PORT"},
             {"etcd://a:1/x/", "must not end with '/'"}, {"etcd://a:1/x//y", "no '//'"},
             {"http://a:1/x", "expected etcd://"}};
  for (const auto& b : bad) {
    why.clear();
    EXPECT_FALSE(parse_etcd_uri(b.uri, &why)) << b.uri;
    EXPECT_NE(why.find(b.why), std::string::npos) << b.uri << ": " << why;
  }
}

}  // namespace
}  // namespace sshring::policy
