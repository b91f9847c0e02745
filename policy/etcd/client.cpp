#include "policy/etcd/client.h"

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"

namespace sshring::policy::etcd {
namespace {

namespace pb = etcdserverpb;
using Clock = std::chrono::system_clock;

constexpr int kRounds = 3;  // passes over the members before a call gives up
constexpr auto kRoundPause = std::chrono::milliseconds(300);
constexpr int64_t kPageSize = 1000;         // keys per Range page (bounded messages)
constexpr int kMaxMessageBytes = 16 << 20;  // policy chunks are 1 MiB; pages stay far below

std::string read_pem(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw common::UsageError(std::string(what) + " " + path + ": cannot read it (check the path)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::shared_ptr<grpc::Channel> make_channel(const std::string& endpoint, const ClientOptions& o) {
  grpc::ChannelArguments args;
  // Members come back within seconds in a fleet (restarts): don't sit in gRPC's 2-minute backoff.
  // (Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: it is also the connect timeout, and a TLS handshake on a
  // loaded host takes longer than a short backoff.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Detect a silent member under a long watch (etcd accepts pings every 5 s or slower).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  // No transparent retries inside gRPC: its retry filter (1.51, Debian 12) aborts the process when a
  // member dies mid-call and the trailing metadata lacks grpc-status (grpc/grpc#34683, fixed only in
  // 2026). Seen here as a crashed reader during an etcd outage; the client fails over and retries
  // itself, so nothing is lost.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (o.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = read_pem(o.ca_file, "--etcd-cacert");
    if (!o.cert_file.empty()) {
      ssl.pem_cert_chain = read_pem(o.cert_file, "--etcd-cert");
      ssl.pem_private_key = read_pem(o.key_file, "--etcd-key");
    }
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(endpoint, creds, args);
}

bool retryable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

KeyValue from_pb(const mvccpb::KeyValue& kv) {
  return {kv.key(), kv.value(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease()};
}

void to_pb(const Compare& c, pb::Compare* out) {
  out->set_key(c.key);
  out->set_result(pb::Compare::EQUAL);
  switch (c.target) {
    case Compare::Target::kMod:
      out->set_target(pb::Compare::MOD);
      out->set_mod_revision(c.value);
      break;
    case Compare::Target::kCreate:
      out->set_target(pb::Compare::CREATE);
      out->set_create_revision(c.value);
      break;
    case Compare::Target::kVersion:
      out->set_target(pb::Compare::VERSION);
      out->set_version(c.value);
      break;
  }
}

void to_pb(const Op& op, pb::RequestOp* out) {
  if (op.kind == Op::Kind::kPut) {
    auto* p = out->mutable_request_put();
    p->set_key(op.key);
    p->set_value(op.value);
    p->set_lease(op.lease);
    p->set_ignore_lease(op.ignore_lease);
  } else {
    auto* d = out->mutable_request_delete_range();
    d->set_key(op.key);
    if (op.kind == Op::Kind::kDeletePrefix) d->set_range_end(prefix_end(op.key));
  }
}

}  // namespace

bool EtcdError::unavailable() const noexcept {
  return code_ == grpc::StatusCode::UNAVAILABLE || code_ == grpc::StatusCode::DEADLINE_EXCEEDED;
}

bool EtcdError::permission_denied() const noexcept {
  return code_ == grpc::StatusCode::PERMISSION_DENIED;
}

std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

void parse_endpoints(std::string_view list, ClientOptions* out) {
  out->endpoints.clear();
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    std::string_view item = list.substr(start, comma == std::string_view::npos ? list.npos : comma - start);
    start = comma == std::string_view::npos ? list.size() + 1 : comma + 1;
    if (item.empty()) continue;
    if (item.starts_with("https://")) {
      out->tls = true;
      item.remove_prefix(8);
    } else if (item.starts_with("http://")) {
      item.remove_prefix(7);
    }
    while (!item.empty() && item.back() == '/') item.remove_suffix(1);
    auto colon = item.rfind(':');
    if (item.empty() || colon == std::string_view::npos || colon + 1 == item.size() ||
        item.find('/') != std::string_view::npos) {
      throw common::UsageError("--etcd '" + std::string(list) + "': endpoint '" + std::string(item) +
                               "' is not HOST:PORT (e.g. https://10.0.0.1:2379,10.0.0.2:2379)");
    }
    out->endpoints.emplace_back(item);
  }
  if (out->endpoints.empty())
    throw common::UsageError("--etcd: no endpoint given (e.g. https://10.0.0.1:2379)");
}

struct Client::Impl {
  struct Member {
    std::string endpoint;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<pb::KV::Stub> kv;
    std::unique_ptr<pb::Watch::Stub> watch;
    std::unique_ptr<pb::Lease::Stub> lease;
    std::unique_ptr<pb::Auth::Stub> auth;
  };
  const ClientOptions& opts;
  std::vector<Member> members;
  std::atomic<size_t> current{0};
  std::mutex token_mu;
  std::string token;

  explicit Impl(const ClientOptions& o) : opts(o) {
    for (const auto& e : o.endpoints) {
      Member m;
      m.endpoint = e;
      m.channel = make_channel(e, o);
      m.kv = pb::KV::NewStub(m.channel);
      m.watch = pb::Watch::NewStub(m.channel);
      m.lease = pb::Lease::NewStub(m.channel);
      m.auth = pb::Auth::NewStub(m.channel);
      members.push_back(std::move(m));
    }
  }

  void prepare(grpc::ClientContext& ctx, bool deadline) {
    if (deadline) ctx.set_deadline(Clock::now() + opts.timeout);
    std::lock_guard lock(token_mu);
    if (!token.empty()) ctx.AddMetadata("token", token);
  }

  grpc::Status authenticate(Member& m) {
    pb::AuthenticateRequest req;
    req.set_name(opts.user);
    req.set_password(opts.password);
    pb::AuthenticateResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + opts.timeout);
    grpc::Status s = m.auth->Authenticate(&ctx, req, &resp);
    if (s.ok()) {
      std::lock_guard lock(token_mu);
      token = resp.token();
    }
    return s;
  }

  bool need_token() {
    if (opts.user.empty()) return false;
    std::lock_guard lock(token_mu);
    return token.empty();
  }

  // Runs fn(member, ctx) on the current member, then the others, for kRounds passes. Throws EtcdError.
  template <class Fn>
  void call(std::string_view what, Fn&& fn) {
    grpc::Status last;
    std::string last_endpoint;
    // At least kRounds passes, and retry for up to two call timeouts (an election takes seconds).
    const auto give_up = std::chrono::steady_clock::now() + 2 * opts.timeout;
    const int rounds = opts.single_pass ? 1 : kRounds;
    for (int round = 0; round < rounds || (!opts.single_pass && std::chrono::steady_clock::now() < give_up);
         ++round) {
      if (round > 0) std::this_thread::sleep_for(kRoundPause);
      size_t start = current.load();
      for (size_t i = 0; i < members.size(); ++i) {
        size_t idx = (start + i) % members.size();
        Member& m = members[idx];
        last_endpoint = m.endpoint;
        for (int attempt = 0; attempt < 2; ++attempt) {
          if (need_token() || attempt == 1) {
            last = authenticate(m);
            if (!last.ok()) break;
          }
          grpc::ClientContext ctx;
          prepare(ctx, true);
          last = fn(m, ctx);
          if (last.error_code() == grpc::StatusCode::UNAUTHENTICATED && !opts.user.empty()) continue;
          break;
        }
        if (last.ok()) {
          current.store(idx);
          return;
        }
        if (!retryable(last)) fail(what, m.endpoint, last);
      }
    }
    fail(what, last_endpoint + " (and every other member)", last);
  }

  [[noreturn]] static void fail(std::string_view what, const std::string& endpoint, const grpc::Status& s) {
    std::string hint;
    if (s.error_code() == grpc::StatusCode::PERMISSION_DENIED)
      hint = " (the etcd user lacks a role for this key; see deploy/etcd/roles.sh)";
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) hint = " (is etcd running and --etcd right?)";
    throw EtcdError(s.error_code(),
                    "etcd " + endpoint + ": " + std::string(what) + ": " + s.error_message() + hint);
  }
};

Client::Client(ClientOptions opts) : opts_(std::move(opts)) {
  if (opts_.endpoints.empty()) throw common::UsageError("etcd client: no endpoints");
  if (opts_.tls && opts_.ca_file.empty())
    throw common::UsageError(
        "etcd over https needs --etcd-cacert FILE (the CA that signed etcd's certificate)");
  if (opts_.cert_file.empty() != opts_.key_file.empty())
    throw common::UsageError("--etcd-cert and --etcd-key go together (a client certificate and its key)");
  impl_ = std::make_unique<Impl>(opts_);
}

Client::~Client() = default;

std::string Client::describe() const {
  std::string s = "etcd ";
  for (size_t i = 0; i < opts_.endpoints.size(); ++i) s += (i ? "," : "") + opts_.endpoints[i];
  return s;
}

std::string Client::current_endpoint() const {
  return opts_.endpoints[impl_->current.load() % opts_.endpoints.size()];
}

RangeResult Client::get(std::string_view key, int64_t revision) {
  pb::RangeRequest req;
  req.set_key(std::string(key));
  req.set_revision(revision);
  pb::RangeResponse resp;
  impl_->call("get " + std::string(key),
              [&](Impl::Member& m, grpc::ClientContext& ctx) { return m.kv->Range(&ctx, req, &resp); });
  RangeResult r;
  r.revision = resp.header().revision();
  for (const auto& kv : resp.kvs()) r.kvs.push_back(from_pb(kv));
  return r;
}

RangeResult Client::list(std::string_view prefix, int64_t revision, int64_t limit) {
  RangeResult r;
  std::string from(prefix);
  const std::string end = prefix_end(prefix);
  while (true) {
    pb::RangeRequest req;
    req.set_key(from);
    req.set_range_end(end);
    req.set_revision(revision);  // later pages read at the first page's revision: one consistent view
    int64_t want = limit > 0 ? std::min(kPageSize, limit - static_cast<int64_t>(r.kvs.size())) : kPageSize;
    req.set_limit(want);
    pb::RangeResponse resp;
    impl_->call("list " + std::string(prefix),
                [&](Impl::Member& m, grpc::ClientContext& ctx) { return m.kv->Range(&ctx, req, &resp); });
    if (revision == 0) revision = resp.header().revision();
    r.revision = revision;
    for (const auto& kv : resp.kvs()) r.kvs.push_back(from_pb(kv));
    if (!resp.more() || resp.kvs().empty()) break;
    if (limit > 0 && static_cast<int64_t>(r.kvs.size()) >= limit) {
      r.more = true;
      break;
    }
    from = r.kvs.back().key + std::string(1, '\0');
  }
  return r;
}

int64_t Client::put(std::string_view key, std::string_view value, int64_t lease) {
  pb::PutRequest req;
  req.set_key(std::string(key));
  req.set_value(std::string(value));
  req.set_lease(lease);
  pb::PutResponse resp;
  impl_->call("put " + std::string(key),
              [&](Impl::Member& m, grpc::ClientContext& ctx) { return m.kv->Put(&ctx, req, &resp); });
  return resp.header().revision();
}

TxnResult Client::txn(const std::vector<Compare>& cmps, const std::vector<Op>& success,
                      const std::vector<Op>& failure) {
  pb::TxnRequest req;
  for (const auto& c : cmps) to_pb(c, req.add_compare());
  for (const auto& op : success) to_pb(op, req.add_success());
  for (const auto& op : failure) to_pb(op, req.add_failure());
  pb::TxnResponse resp;
  std::string what = "txn";
  if (!success.empty()) what += " " + success.front().key;
  impl_->call(what, [&](Impl::Member& m, grpc::ClientContext& ctx) { return m.kv->Txn(&ctx, req, &resp); });
  return {resp.succeeded(), resp.header().revision()};
}

int64_t Client::del(std::string_view key) {
  pb::DeleteRangeRequest req;
  req.set_key(std::string(key));
  pb::DeleteRangeResponse resp;
  impl_->call("delete " + std::string(key),
              [&](Impl::Member& m, grpc::ClientContext& ctx) { return m.kv->DeleteRange(&ctx, req, &resp); });
  return resp.deleted();
}

int64_t Client::lease_grant(int64_t ttl_seconds) {
  pb::LeaseGrantRequest req;
  req.set_ttl(ttl_seconds);
  pb::LeaseGrantResponse resp;
  impl_->call("lease grant", [&](Impl::Member& m, grpc::ClientContext& ctx) {
    return m.lease->LeaseGrant(&ctx, req, &resp);
  });
  if (!resp.error().empty()) throw EtcdError(grpc::StatusCode::INTERNAL, "etcd lease grant: " + resp.error());
  return resp.id();
}

int64_t Client::lease_ttl(int64_t id) {
  pb::LeaseTimeToLiveRequest req;
  req.set_id(id);
  pb::LeaseTimeToLiveResponse resp;
  impl_->call("lease ttl", [&](Impl::Member& m, grpc::ClientContext& ctx) {
    return m.lease->LeaseTimeToLive(&ctx, req, &resp);
  });
  return resp.ttl();
}

int64_t Client::lease_keepalive(int64_t id) {
  int64_t ttl = 0;
  impl_->call("lease keepalive", [&](Impl::Member& m, grpc::ClientContext& ctx) {
    auto rw = m.lease->LeaseKeepAlive(&ctx);
    pb::LeaseKeepAliveRequest req;
    req.set_id(id);
    pb::LeaseKeepAliveResponse resp;
    if (rw->Write(req) && rw->Read(&resp)) ttl = resp.ttl();
    rw->WritesDone();
    return rw->Finish();
  });
  return ttl;
}

void Client::lease_revoke(int64_t id) {
  pb::LeaseRevokeRequest req;
  req.set_id(id);
  pb::LeaseRevokeResponse resp;
  impl_->call("lease revoke", [&](Impl::Member& m, grpc::ClientContext& ctx) {
    return m.lease->LeaseRevoke(&ctx, req, &resp);
  });
}

void Client::compact(int64_t revision) {
  pb::CompactionRequest req;
  req.set_revision(revision);
  req.set_physical(true);
  pb::CompactionResponse resp;
  impl_->call("compact",
              [&](Impl::Member& m, grpc::ClientContext& ctx) { return m.kv->Compact(&ctx, req, &resp); });
}

namespace {

class GrpcWatch final : public WatchStream {
 public:
  GrpcWatch(Client::Impl& impl, size_t member, std::string prefix, std::string range_end, int64_t start)
      : impl_(impl), member_(member) {
    impl_.prepare(ctx_, false);  // a watch lives as long as the consumer: no deadline
    // Fail (instead of silently stalling) when this member loses the cluster's leader.
    ctx_.AddMetadata("hasleader", "true");
    rw_ = impl_.members[member].watch->Watch(&ctx_);
    pb::WatchRequest req;
    auto* c = req.mutable_create_request();
    c->set_range_end(range_end.empty() ? prefix_end(prefix) : std::move(range_end));
    c->set_key(std::move(prefix));
    c->set_start_revision(start);
    c->set_progress_notify(true);
    ok_ = rw_->Write(req);
  }
  ~GrpcWatch() override {
    cancel();
    if (rw_) rw_->Finish();
  }

  bool next(WatchBatch* out) override {
    if (!ok_) return finish();
    pb::WatchResponse r;
    if (!rw_->Read(&r)) return finish();
    *out = WatchBatch{};
    out->revision = r.header().revision();
    out->compact_revision = r.compact_revision();
    out->canceled = r.canceled();
    out->created = r.created();
    for (const auto& e : r.events()) {
      Event ev;
      ev.type = e.type() == mvccpb::Event::DELETE ? EventType::kDelete : EventType::kPut;
      ev.kv = from_pb(e.kv());
      out->events.push_back(std::move(ev));
    }
    if (out->canceled && out->compact_revision == 0) cancel_reason_ = r.cancel_reason();
    return true;
  }

  void cancel() override {
    if (!canceled_.exchange(true)) ctx_.TryCancel();
  }

  void request_progress() override {
    pb::WatchRequest req;
    req.mutable_progress_request();
    if (ok_ && !canceled_.load()) rw_->Write(req);
  }

 private:
  bool finish() {
    // The member went away: the next watch (and call) starts on another one.
    if (!canceled_.load()) {
      size_t expect = member_;
      impl_.current.compare_exchange_strong(expect, (member_ + 1) % impl_.members.size());
    }
    return false;
  }

  Client::Impl& impl_;
  size_t member_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>> rw_;
  bool ok_ = false;
  std::atomic<bool> canceled_{false};
  std::string cancel_reason_;
};

}  // namespace

std::unique_ptr<WatchStream> Client::watch(std::string_view prefix, int64_t start_revision,
                                           std::string_view range_end) {
  // Authenticate first (a watch cannot renew its token mid-stream); the Range also proves the
  // member is there before the stream is opened on it.
  get(prefix);
  return std::make_unique<GrpcWatch>(*impl_, impl_->current.load(), std::string(prefix),
                                     std::string(range_end), start_revision);
}

}  // namespace sshring::policy::etcd
