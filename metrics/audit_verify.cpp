#include "metrics/audit_verify.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "common/unique_fd.h"

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
  for (auto& [live, rotated] : logs) {
    // FILE.YYYYMMDDTHHMMSSZ[.N]: lexical order is time order except for the .N suffix of a clash.
    std::sort(rotated.begin(), rotated.end(), [](const std::string& a, const std::string& b) {
      return a.size() != b.size() ? a.size() < b.size() : a < b;
    });
    if (fs::exists(live)) rotated.push_back(live);
    out.push_back(std::move(rotated));
  }
  return out;
}

VerifyResult verify_chain(const std::vector<std::string>& files) {
  VerifyResult res;
  bool started = false;
  std::string prev_hash;
  uint64_t prev_seq = 0;
  AuditFinding prev_loc;
  for (const auto& file : files) {
    if (res.error) break;
    for_each_line(file, [&](uint64_t line_no, std::string_view line, bool complete) {
      if (res.error) return;
      AuditFinding here{file, line_no, ""};
      if (!complete) {
        here.message = "torn last line (" + std::to_string(line.size()) +
                       " bytes without a newline): an interrupted write, not part of the chain";
        res.warnings.push_back(here);
        return;
      }
      std::string why;
      auto rec = parse_record(line, &why);
      if (!rec) {
        here.message = "not a valid audit record: " + why;
        res.error = here;
        return;
      }
      std::string hash = sha256_hex(line);
      if (!started) {
        started = true;
        if (rec->prev != kZeroHash) {
          if (rec->type == "log_rotate") {
            here.message =
                "chain continues from " + rec->body.value("previous_file", std::string("an earlier file")) +
                ", which was not given: records before seq " + std::to_string(rec->seq) + " are not checked";
            res.warnings.push_back(here);
          } else {
            here.message =
                "first record does not start a chain (prev is not zeros) and is not a log_rotate record: "
                "records "
                "before it were removed (or give the earlier rotated files first)";
            res.error = here;
            return;
          }
        } else if (rec->seq != 1) {
          here.message = "first record of the chain has seq " + std::to_string(rec->seq) + ", expected 1";
          res.error = here;
          return;
        }
      } else {
        bool seq_ok = rec->seq == prev_seq + 1;
        bool prev_ok = rec->prev == prev_hash;
        if (!seq_ok) {
          if (rec->seq > prev_seq + 1) {
            here.message = "seq " + std::to_string(rec->seq) + " follows seq " + std::to_string(prev_seq) +
                           " (" + prev_loc.file + ":" + std::to_string(prev_loc.line) + "): records " +
                           std::to_string(prev_seq + 1) +
                           (rec->seq - prev_seq > 2 ? ".." + std::to_string(rec->seq - 1) : std::string()) +
                           " were deleted or moved";
          } else {
            here.message = "seq " + std::to_string(rec->seq) + " follows seq " + std::to_string(prev_seq) +
                           " (" + prev_loc.file + ":" + std::to_string(prev_loc.line) +
                           "): records were reordered, duplicated or inserted";
          }
          if (!prev_ok) here.message += "; prev does not match the previous line either";
          res.error = here;
          return;
        }
        if (!prev_ok) {
          // seq is consecutive, so nothing was removed: the previous line's bytes (or this record's
          // prev) were changed.
          AuditFinding bad = prev_loc;
          bad.message = "record seq " + std::to_string(prev_seq) +
                        " was modified: its SHA-256 does not match prev of " + "the next record (" + file +
                        ":" + std::to_string(line_no) + ")";
          res.error = bad;
          --res.records;  // the previous record is not good after all
          return;
        }
      }
      ++res.records;
      prev_hash = std::move(hash);
      prev_seq = rec->seq;
      prev_loc = here;
      res.last_seq = prev_seq;
      res.last_hash = prev_hash;
    });
  }
  return res;
}

}  // namespace sshring::metrics
