#include "bpf/pin_check.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <fstream>
#include <sstream>

namespace sshring::bpf {

// mountinfo lines: "ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS".
// Each bpffs mount is its own superblock with its own anonymous device number, so a bpffs with our
// device in PID 1's table is the same filesystem.
PinScope pin_scope(const std::string& dir, const std::string& init_mountinfo) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return PinScope::kUnknown;
  const std::string dev = std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  std::ifstream in(init_mountinfo);
  if (!in) return PinScope::kUnknown;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, majmin;
    f >> id >> parent >> majmin;
    if (majmin != dev) continue;
    auto sep = line.find(" - ");
    if (sep != std::string::npos && line.compare(sep + 3, 4, "bpf ") == 0) return PinScope::kShared;
  }
  return PinScope::kPrivate;
}

}  // namespace sshring::bpf
