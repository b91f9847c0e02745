// The sshring preamble (docs/protocol.md): one HELLO frame from the client, one OK or DENY frame from
// the relay, then raw SSH bytes. Every frame starts with an 8-byte header:
//   magic "SRNG" | version u8 | type u8 | payload length u16 (big-endian)
// Decoding is pure and bounded: it never reads past the input, never allocates more than the limits
// below, and tells "need more bytes" apart from "malformed".
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace sshring::protocol {

inline constexpr std::array<uint8_t, 4> kMagic = {'S', 'R', 'N', 'G'};
inline constexpr uint8_t kVersion = 1;
inline constexpr size_t kHeaderSize = 8;

enum class FrameType : uint8_t { kHello = 1, kOk = 2, kDeny = 3 };
enum class KeyAlgorithm : uint8_t { kEd25519 = 1 };
inline constexpr size_t kEd25519KeySize = 32;
inline constexpr size_t kEd25519SigSize = 64;

// Hard limits (bytes). The HELLO frame is at most kHeaderSize + kMaxHelloPayload = 1032 bytes, well
// under relay::kMaxHandshakeBytes.
inline constexpr size_t kMaxRelayId = 128;
inline constexpr size_t kMaxPrincipal = 64;
inline constexpr size_t kMaxTarget = 253;  // a DNS name or an IP literal
inline constexpr size_t kNonceSize = 16;
inline constexpr size_t kMaxKeySize = 64;
inline constexpr size_t kMaxSignatureSize = 128;
inline constexpr size_t kMaxDenyMessage = 200;
inline constexpr size_t kMaxHelloPayload = 1024;
// What a HELLO payload can really measure given the field limits (docs/protocol.md: "largest valid:
// 669"): a header declaring a length outside [min, max] is refused at once, not after waiting for
// bytes that could never make a valid frame.
inline constexpr size_t kMinHelloPayload =
    3 * (1 + 1) + 2 + 8 + kNonceSize + 1 + (1 + kEd25519KeySize) + (1 + kEd25519SigSize);
inline constexpr size_t kMaxValidHelloPayload = (1 + kMaxRelayId) + (1 + kMaxPrincipal) + (1 + kMaxTarget) +
                                                2 + 8 + kNonceSize + 1 + (1 + kMaxKeySize) +
                                                (1 + kMaxSignatureSize);
static_assert(kMaxValidHelloPayload == 669 && kMaxValidHelloPayload <= kMaxHelloPayload);
inline constexpr size_t kOkPayload = 8;
inline constexpr size_t kMaxDenyPayload = 3 + kMaxDenyMessage;

// Stable DENY reason codes: values are protocol, names appear in logs, metrics and audit records.
// `sshring connect` exits with 20 + code (docs/protocol.md has the table). Before the signature is
// verified the wire carries one code for every identity failure (kNotAuthenticated), so strangers
// cannot list principals or match keys; kUnknownPrincipal, kKeyNotListed and kBadSignature are the
// exact reasons kept in the audit record and metrics and are never sent by this relay.
enum class Reason : uint16_t {
  kMalformed = 1,  // not a valid HELLO (garbage, truncated, oversized, bad field)
  kUnsupportedVersion = 2,
  kWrongRelay = 3,  // signed for another relay
  kStale = 4,       // timestamp outside the allowed clock skew
  kReplayed = 5,    // nonce already seen
  kUnknownPrincipal = 6,
  kKeyNotListed = 7,  // the key is not one of the principal's keys
  kBadSignature = 8,
  kTargetNotAllowed = 9,    // the target name/port is not allowed for the principal
  kAddressNotAllowed = 10,  // the target resolved to an address the policy does not allow
  kOutsideTimeWindow = 11,
  kTooManySessions = 12,    // the principal's max_sessions reached
  kTooManyHandshakes = 13,  // too many connections in handshake from this source address
  kResolveFailed = 14,
  kTargetUnreachable = 15,
  kOverloaded = 16,        // relay-side resource limit (replay cache full, no policy loaded)
  kTimeout = 17,           // handshake took too long
  kNotAuthenticated = 18,  // on the wire for unknown principal, key not listed or bad signature
  kPortNotAllowed = 19,    // the target is allowed for the principal, but not on this port
};
inline constexpr uint16_t kMaxReason = 19;
// The one DENY message sent for every kNotAuthenticated refusal (docs/protocol.md).
inline constexpr std::string_view kNotAuthenticatedMessage =
    "not authenticated (unknown principal, key not listed for it, or bad signature)";

const char* reason_name(Reason r);         // "unknown_principal"
const char* reason_description(Reason r);  // "the principal is not in the relay's policy"
inline constexpr int kExitCodeBase = 20;
inline int exit_code_for(Reason r) {
  return kExitCodeBase + static_cast<int>(r);
}

struct Hello {
  std::string relay_id;
  std::string principal;
  std::string target;
  uint16_t port = 0;
  uint64_t timestamp_ms = 0;  // client's wall clock, Unix epoch
  std::array<uint8_t, kNonceSize> nonce{};
  KeyAlgorithm algorithm = KeyAlgorithm::kEd25519;
  std::string public_key;  // raw key (32 bytes for Ed25519)
  std::string signature;   // over transcript(hello)
};

// Bytes the client signs: a context string, then the HELLO payload up to (not including) the
// signature. Binds relay id, principal, target, port, timestamp, nonce and key.
std::string transcript(const Hello& h);

// The HELLO frame: header + payload (signature included). Throws std::invalid_argument if a field
// is over its limit (the client checks its inputs with this).
std::string encode_hello(const Hello& h);
std::string encode_ok(uint64_t session_id);
std::string encode_deny(Reason reason, std::string_view message);

enum class DecodeStatus : uint8_t { kOk, kNeedMore, kMalformed, kUnsupportedVersion };

struct HelloDecode {
  DecodeStatus status = DecodeStatus::kNeedMore;
  Hello hello;
  size_t consumed = 0;     // frame length when kOk
  std::string_view error;  // what was wrong (static string) when not kOk/kNeedMore
};
// Decodes a HELLO frame at the start of `in`. kNeedMore only while `in` is a proper prefix of a
// frame that could still be valid; bytes after the frame are left alone (glued SSH bytes).
HelloDecode decode_hello(std::span<const uint8_t> in);

struct Reply {
  FrameType type = FrameType::kDeny;
  uint64_t session_id = 0;  // kOk
  uint16_t reason = 0;      // kDeny (may be a code newer than this client knows)
  std::string message;      // kDeny
};
struct ReplyDecode {
  DecodeStatus status = DecodeStatus::kNeedMore;
  Reply reply;
  size_t consumed = 0;
  std::string_view error;
};
ReplyDecode decode_reply(std::span<const uint8_t> in);

// Parses just a header; returns payload length or -1 when the header is invalid for `type`.
// Used by the client to read exactly one frame from the socket and nothing more.
int reply_payload_length(std::span<const uint8_t, kHeaderSize> header);

}  // namespace sshring::protocol
