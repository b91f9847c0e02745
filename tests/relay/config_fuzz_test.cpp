// libFuzzer target for the relay config parser (relay/config.cpp: `sshring relay --config FILE`,
// reloaded on SIGHUP): YAML of any shape must end in a parsed config or a common::UsageError naming
// the file, never in another exception, a crash or a config the relay would reject differently.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/error.h"
#include "relay/config.h"

namespace relay = sshring::relay;

namespace {

void parse_once(std::string_view text, bool upstream_optional) {
  relay::ConfigFile f;
  try {
    f = relay::parse_config(text, "fuzz.yaml", upstream_optional);
  } catch (const sshring::common::UsageError& e) {
    if (std::string_view(e.what()).find("fuzz.yaml") == std::string_view::npos) std::abort();
    return;
  } catch (...) {
    std::abort();  // YAML or conversion errors must surface as UsageError with the file named
  }
  for (const auto& r : f.cfg.routes) {
    if (r.listen.len() == 0) std::abort();
    if (!upstream_optional && !r.upstream) std::abort();
  }
  if (f.cfg.max_sessions == 0 || f.cfg.pipe_size == 0) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return 0;  // the loader reads files of bounded size
  std::string_view text(reinterpret_cast<const char*>(data), size);
  parse_once(text, false);
  parse_once(text, true);
  auto d = relay::parse_millis(text.substr(0, 32));
  if (d && d->count() < 0) std::abort();
  return 0;
}
