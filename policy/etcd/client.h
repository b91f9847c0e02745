// A small etcd v3 client over gRPC: what sshring's stores need and nothing more (Range, Put, Txn with
// mod/create-revision compares, Delete, leases, Watch, Compact for tests, Authenticate).
//
// Endpoints: one channel per member. A call goes to the member that answered last; when it is
// unreachable (UNAVAILABLE, DEADLINE_EXCEEDED) the call moves on to the next member, so a cluster
// that lost its leader or one member keeps answering (any member forwards writes to the leader).
// Writes may therefore be applied twice only in the sense etcd allows: a retried Txn sees its own
// first attempt through its compares, which callers use to recognise their own write.
//
// Security: TLS with a CA file and optionally a client certificate (etcd's --client-cert-auth; with
// auth enabled and no password etcd takes the user from the certificate's CN), or a user and password
// (Authenticate gives a token sent as `token` metadata; an expired token is renewed once per call).
// The gRPC stubs stay inside client.cpp: callers see plain structs.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sshring::policy::etcd {

struct ClientOptions {
  std::vector<std::string> endpoints;  // "HOST:PORT" (scheme already stripped)
  bool tls = false;
  std::string ca_file;    // PEM; required with tls
  std::string cert_file;  // PEM client certificate (optional)
  std::string key_file;   // PEM private key of cert_file
  std::string user;       // etcd user for password auth (empty: none, or the certificate's CN)
  std::string password;
  std::chrono::milliseconds timeout{5000};  // per call, per member
  // One pass over the members and no retry rounds: for callers with a deadline of their own (a
  // nonce claim inside a handshake) that would rather answer "unavailable" than wait out an election.
  bool single_pass = false;
};

// "https://10.0.0.1:2379,10.0.0.2:2379" -> endpoints and tls (https on any endpoint turns TLS on).
// Throws common::UsageError naming the bad item.
void parse_endpoints(std::string_view list, ClientOptions* out);

// A failed etcd call: the member, the operation and gRPC's message. `code` is the grpc::StatusCode.
class EtcdError : public std::runtime_error {
 public:
  EtcdError(int code, const std::string& what) : std::runtime_error(what), code_(code) {}
  [[nodiscard]] int code() const noexcept { return code_; }
  // The cluster could not be reached (every member refused or timed out).
  [[nodiscard]] bool unavailable() const noexcept;
  // etcd refused for lack of permission (auth on, role without the key).
  [[nodiscard]] bool permission_denied() const noexcept;

 private:
  int code_;
};

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;
};

struct RangeResult {
  std::vector<KeyValue> kvs;
  int64_t revision = 0;  // the store's revision when it answered
  bool more = false;     // truncated by `limit`
};

// One compare of a Txn. kCreate with value 0 means "the key does not exist".
struct Compare {
  enum class Target { kMod, kCreate, kVersion };
  std::string key;
  Target target = Target::kMod;
  int64_t value = 0;
};

// One operation of a Txn (put or delete of one key).
struct Op {
  enum class Kind { kPut, kDelete, kDeletePrefix };
  Kind kind = Kind::kPut;
  std::string key;
  std::string value;
  int64_t lease = 0;
  bool ignore_lease = false;  // put keeps the key's current lease
};

struct TxnResult {
  bool succeeded = false;
  int64_t revision = 0;
};

enum class EventType { kPut, kDelete };
struct Event {
  EventType type = EventType::kPut;
  KeyValue kv;  // for a delete, only key and mod_revision are set
};

// One message of a watch stream.
struct WatchBatch {
  std::vector<Event> events;
  int64_t revision = 0;          // header revision
  int64_t compact_revision = 0;  // non-zero: the start revision was compacted; re-list
  bool canceled = false;
  bool created = false;
};

class Client;

// A watch on a key prefix from a revision. next() blocks; cancel() (any thread) makes it return false.
class WatchStream {
 public:
  virtual ~WatchStream() = default;
  // False when the stream ended (member gone, cancel(), or the watch was canceled by etcd).
  virtual bool next(WatchBatch* out) = 0;
  virtual void cancel() = 0;
  // Asks etcd for a progress report (an empty batch whose revision all later events exceed). One
  // writer at a time; safe beside a thread blocked in next().
  virtual void request_progress() = 0;
};

class Client {
 public:
  explicit Client(ClientOptions opts);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  RangeResult get(std::string_view key, int64_t revision = 0);
  // Keys starting with `prefix`, sorted by key; `limit` 0 = all.
  RangeResult list(std::string_view prefix, int64_t revision = 0, int64_t limit = 0);
  // Returns the revision of the put.
  int64_t put(std::string_view key, std::string_view value, int64_t lease = 0);
  TxnResult txn(const std::vector<Compare>& cmps, const std::vector<Op>& success,
                const std::vector<Op>& failure = {});
  // Returns the number of keys deleted.
  int64_t del(std::string_view key);
  int64_t lease_grant(int64_t ttl_seconds);
  // Remaining TTL of a lease in seconds (<= 0: expired or unknown).
  int64_t lease_ttl(int64_t id);
  // One keep-alive round trip; returns the new TTL (<= 0: the lease is gone).
  int64_t lease_keepalive(int64_t id);
  void lease_revoke(int64_t id);
  void compact(int64_t revision);
  // A watch of `prefix` from `start_revision` (0 = now). Opens on the current member. With
  // `range_end`, the watch covers [prefix, range_end) instead of the keys starting with `prefix`.
  std::unique_ptr<WatchStream> watch(std::string_view prefix, int64_t start_revision,
                                     std::string_view range_end = {});

  [[nodiscard]] const ClientOptions& options() const noexcept { return opts_; }
  // "etcd 127.0.0.1:2379,127.0.0.1:2381" for messages.
  [[nodiscard]] std::string describe() const;
  // The member calls (and new watches) go to now: the one that answered last ("127.0.0.1:2379").
  [[nodiscard]] std::string current_endpoint() const;

  struct Impl;

 private:
  ClientOptions opts_;
  std::unique_ptr<Impl> impl_;
};

// The end of a prefix range: "abc" -> "abd" (etcd's range_end for a prefix).
std::string prefix_end(std::string_view prefix);

}  // namespace sshring::policy::etcd
