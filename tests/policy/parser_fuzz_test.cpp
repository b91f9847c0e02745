// libFuzzer target for the policy parser: any input either parses or throws PolicyError, never
// crashes, hangs or leaks; a parsed policy survives a YAML round trip and compiles into a Snapshot.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "policy/parser.h"
#include "policy/snapshot.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sshring::policy;
  if (size > 256 * 1024) return 0;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    auto p = std::make_shared<Policy>(parse_policy(text, "fuzz.yaml"));
    Policy again = parse_policy(to_yaml(*p), "roundtrip.yaml");
    if (!(again == *p)) __builtin_trap();
    (void)lint_policy(*p, 1800000000);
    auto snap = Snapshot::build(p, {});
    (void)snap->classify_flow(*IpAddr::parse("10.1.5.7"), *IpAddr::parse("10.2.3.4"), 22, 1800000000);
  } catch (const PolicyError&) {
  }
  return 0;
}
