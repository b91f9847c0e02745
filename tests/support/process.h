// Test helpers that start real processes and always clean them up (by PID, never by name).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace sshring::testing {

// A child process; killed (SIGTERM, then SIGKILL) and reaped on destruction unless already waited.
class Process {
 public:
  struct Options {
    std::string stdout_path;       // empty: inherit
    std::string stderr_path;       // empty: inherit
    std::string stdin_path;        // empty: /dev/null
    std::string netns;             // non-empty: run inside `ip netns exec NAME`
    std::vector<std::string> env;  // extra KEY=VALUE entries
  };
  Process() = default;
  Process(const std::vector<std::string>& argv, const Options& opts);
  Process(const std::vector<std::string>& argv) : Process(argv, Options{}) {}
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  Process(Process&& o) noexcept;
  Process& operator=(Process&& o) noexcept;
  ~Process();

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool running();
  void signal(int sig) const;
  // Waits for exit; returns the exit code (128+signal if killed) or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // SIGTERM, wait a little, then SIGKILL.
  void stop();

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// Runs a command to completion; returns exit code. Output captured into *out if given.
int run(const std::vector<std::string>& argv, std::string* out = nullptr, const std::string& netns = "");
// Runs `sh -c cmd`; returns exit code; output captured into *out if given.
int sh(const std::string& cmd, std::string* out = nullptr);

// A fresh directory under /tmp, removed recursively on destruction.
// Makes `path` a private full device (the /dev/full node, 1:7: every write fails with ENOSPC). Tests
// that share /dev/full itself collide on the audit log's one-writer lock when run in parallel. False if
// the node cannot be made.
bool make_full_device(const std::string& path);

class TempDir {
 public:
  TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes a whole file (throws on error).
void write_file(const std::string& path, const std::string& content, int mode = 0644);
std::string read_file(const std::string& path);

// A TCP port on 127.0.0.1, free a moment ago, below the kernel's ephemeral range and reserved for this
// process against other test processes (a lock file under /tmp/sshring-test-ports, held until exit).
uint16_t free_port();
// Polls until a TCP connect to host:port succeeds or the timeout passes.
// True once a connect to the Unix socket at `path` succeeds (the file exists as soon as the server
// binds, before it listens: waiting for the file alone races the first client).
bool wait_for_unix_socket(const std::string& path,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10));
bool wait_for_port(const std::string& host, uint16_t port,
                   std::chrono::milliseconds timeout = std::chrono::seconds(10),
                   const std::string& netns = "");

// Path of the built sshring binary (from the SSHRING_BIN compile definition).
std::string sshring_bin();

}  // namespace sshring::testing
