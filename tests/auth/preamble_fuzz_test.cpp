// libFuzzer target for the untrusted side of the preamble: the relay's HELLO decoder (and the
// client's reply decoder). Checks invariants, not just crashes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "protocol/preamble.h"

namespace protocol = sshring::protocol;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  auto d = protocol::decode_hello(in);
  if (d.status == protocol::DecodeStatus::kOk) {
    if (d.consumed > size || d.consumed > protocol::kHeaderSize + protocol::kMaxHelloPayload) std::abort();
    // A decoded frame re-encodes to the same bytes (one canonical encoding).
    std::string again = protocol::encode_hello(d.hello);
    if (again.size() != d.consumed || std::memcmp(again.data(), data, again.size()) != 0) std::abort();
    (void)protocol::transcript(d.hello);
  }
  if (d.status == protocol::DecodeStatus::kNeedMore &&
      size > protocol::kHeaderSize + protocol::kMaxHelloPayload)
    std::abort();
  auto r = protocol::decode_reply(in);
  if (r.status == protocol::DecodeStatus::kOk && r.consumed > size) std::abort();
  return 0;
}
