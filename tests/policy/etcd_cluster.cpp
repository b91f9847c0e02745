#include "tests/policy/etcd_cluster.h"

#include <signal.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <thread>

namespace sshring::testing {
namespace {

const char* const kUsers[] = {"root", "sshring-agent", "sshring-relay", "sshring-grant", "sshring-policy"};

void must(const std::string& cmd) {
  std::string out;
  if (sh("(" + cmd + ") 2>&1", &out) != 0) throw std::runtime_error("test setup failed: " + cmd + "\n" + out);
}

}  // namespace

void EtcdCluster::make_certs() {
  const std::string d = dir_.path();
  ca_ = d + "/ca.pem";
  must("cd " + d +
       " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
       "-subj /CN=sshring-test-ca -keyout ca-key.pem -out ca.pem");
  auto issue = [&](const std::string& name, const std::string& ext) {
    must("cd " + d + " && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=" +
         name + " -keyout " + name + "-key.pem -out " + name + ".csr && printf '" + ext + "' > " + name +
         ".ext && openssl x509 -req -in " + name +
         ".csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 "
         "-extfile " +
         name + ".ext -out " + name + ".pem");
  };
  issue("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,clientAuth\\n");
  for (const char* u : kUsers) issue(u, "extendedKeyUsage=clientAuth\\n");
}

EtcdCluster::EtcdCluster(int members, bool auth, std::string netns) : netns_(std::move(netns)) {
  make_certs();
  // Ports come from free_port(), so another process can take one before etcd binds it: a cluster
  // that does not form is started once more on new ports (with new data dirs), its logs printed.
  for (int attempt = 1;; ++attempt) {
    token_ = "sshring-test-" + std::to_string(::getpid()) + "-" + std::to_string(attempt);
    members_.clear();
    for (int i = 0; i < members; ++i) {
      Member m;
      m.name = "m" + std::to_string(i) + "-" + std::to_string(attempt);
      m.client_port = free_port();
      m.peer_port = free_port();
      members_.push_back(std::move(m));
    }
    for (int i = 0; i < members; ++i) start(i);
    if (wait_healthy()) break;
    std::string logs;
    for (const auto& m : members_) {
      std::string tail;
      sh("tail -n 15 " + dir_.file(m.name + ".log") + " 2>&1", &tail);
      logs += "--- " + m.name + " (client " + std::to_string(m.client_port) + ", peer " +
              std::to_string(m.peer_port) + "):\n" + tail;
    }
    stop_all();
    if (attempt == 2) throw std::runtime_error("etcd cluster did not become healthy (twice):\n" + logs);
    std::fprintf(stderr, "etcd cluster did not become healthy; once more on new ports:\n%s", logs.c_str());
  }
  if (auth) {
    std::string out;
    int rc = sh(in_ns() + "env ETCDCTL_API=3 ETCDCTL_ENDPOINTS=" + endpoints() + " ETCDCTL_CACERT=" + ca_ +
                    " ETCDCTL_CERT=" + cert("root") + " ETCDCTL_KEY=" + key("root") + " sh " +
                    SSHRING_SOURCE_DIR + "/deploy/etcd/roles.sh --prefix /sshring --enable-auth 2>&1",
                &out);
    if (rc != 0) throw std::runtime_error("deploy/etcd/roles.sh failed:\n" + out);
  }
}

EtcdCluster::~EtcdCluster() {
  stop_all();
}

std::string EtcdCluster::endpoint(int i) const {
  return "https://127.0.0.1:" + std::to_string(members_[i].client_port);
}

std::string EtcdCluster::endpoints() const {
  std::string s;
  for (int i = 0; i < size(); ++i) s += (i ? "," : "") + endpoint(i);
  return s;
}

std::vector<std::string> EtcdCluster::flags(const std::string& user) const {
  return {"--etcd", endpoints(), "--etcd-cacert", ca_, "--etcd-cert", cert(user), "--etcd-key", key(user)};
}

int EtcdCluster::etcdctl(const std::string& args, std::string* out) const {
  return sh(in_ns() + "env ETCDCTL_API=3 etcdctl --endpoints=" + endpoints() + " --cacert=" + ca_ +
                " --cert=" + cert("root") + " --key=" + key("root") + " " + args + " 2>&1",
            out);
}

void EtcdCluster::start(int i) {
  Member& m = members_[i];
  std::string cluster;
  for (int j = 0; j < size(); ++j) {
    cluster +=
        (j ? "," : "") + members_[j].name + "=http://127.0.0.1:" + std::to_string(members_[j].peer_port);
  }
  const std::string peer = "http://127.0.0.1:" + std::to_string(m.peer_port);
  const std::string client = endpoint(i);
  Process::Options o;
  o.netns = netns_;
  o.stdout_path = dir_.file(m.name + ".log");
  o.stderr_path = dir_.file(m.name + ".log");
  // Generous Raft timing: the test machines are shared and loaded.
  m.proc = std::make_unique<Process>(std::vector<std::string>{"etcd",
                                                              "--name",
                                                              m.name,
                                                              "--data-dir",
                                                              dir_.file(m.name + ".data"),
                                                              "--listen-client-urls",
                                                              client,
                                                              "--advertise-client-urls",
                                                              client,
                                                              "--listen-peer-urls",
                                                              peer,
                                                              "--initial-advertise-peer-urls",
                                                              peer,
                                                              "--initial-cluster",
                                                              cluster,
                                                              "--initial-cluster-state",
                                                              "new",
                                                              "--initial-cluster-token",
                                                              token_,
                                                              "--client-cert-auth",
                                                              "--trusted-ca-file",
                                                              ca_,
                                                              "--cert-file",
                                                              dir_.file("server.pem"),
                                                              "--key-file",
                                                              dir_.file("server-key.pem"),
                                                              "--heartbeat-interval",
                                                              "200",
                                                              "--election-timeout",
                                                              "2000",
                                                              "--logger",
                                                              "zap",
                                                              "--log-level",
                                                              "warn"},
                                     o);
}

void EtcdCluster::kill(int i) {
  if (!members_[i].proc) return;
  members_[i].proc->signal(SIGKILL);
  members_[i].proc->wait(std::chrono::seconds(10));
  members_[i].proc.reset();
}

void EtcdCluster::stop_all() {
  for (auto& m : members_) {
    if (m.proc) m.proc->stop();
    m.proc.reset();
  }
}

void EtcdCluster::start_all() {
  for (int i = 0; i < size(); ++i)
    if (!members_[i].proc) start(i);
}

int EtcdCluster::leader() const {
  std::string out;
  if (etcdctl("endpoint status -w json", &out) != 0) return -1;
  try {
    auto j = nlohmann::json::parse(out.substr(out.find('[')));
    for (const auto& e : j) {
      const auto& st = e.at("Status");
      if (st.at("header").at("member_id") == st.at("leader")) {
        std::string ep = e.at("Endpoint").get<std::string>();
        for (int i = 0; i < size(); ++i)
          if (endpoint(i) == ep) return i;
      }
    }
  } catch (const std::exception&) {
  }
  return -1;
}

bool EtcdCluster::wait_healthy(int timeout_s) const {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    bool all = true;
    for (int i = 0; i < size(); ++i) {
      if (!members_[i].proc) continue;
      std::string out;
      if (sh(in_ns() + "env ETCDCTL_API=3 etcdctl --endpoints=" + endpoint(i) + " --cacert=" + ca_ +
                 " --cert=" + dir_.file("root.pem") + " --key=" + dir_.file("root-key.pem") +
                 " endpoint health --command-timeout=3s 2>&1",
             &out) != 0) {
        all = false;
        break;
      }
    }
    if (all) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  return false;
}

}  // namespace sshring::testing
