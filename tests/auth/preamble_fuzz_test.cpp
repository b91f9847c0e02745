// libFuzzer target for the untrusted side of the preamble: the relay's HELLO decoder (and the
// client's reply decoder). Checks invariants, not just crashes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "relay/auth/preamble.h"

namespace auth = sshring::relay::auth;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  auto d = auth::decode_hello(in);
  if (d.status == auth::DecodeStatus::kOk) {
    if (d.consumed > size || d.consumed > auth::kHeaderSize + auth::kMaxHelloPayload) std::abort();
    // A decoded frame re-encodes to the same bytes (one canonical encoding).
    std::string again = auth::encode_hello(d.hello);
    if (again.size() != d.consumed || std::memcmp(again.data(), data, again.size()) != 0) std::abort();
    (void)auth::transcript(d.hello);
  }
  if (d.status == auth::DecodeStatus::kNeedMore && size > auth::kHeaderSize + auth::kMaxHelloPayload)
    std::abort();
  auto r = auth::decode_reply(in);
  if (r.status == auth::DecodeStatus::kOk && r.consumed > size) std::abort();
  return 0;
}
