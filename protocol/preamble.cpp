#include "protocol/preamble.h"

#include <algorithm>
#include <stdexcept>

#include "protocol/wire.h"

namespace sshring::protocol {
namespace {

constexpr std::string_view kTranscriptContext{"sshring-preamble-v1\0", 20};

bool printable(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

bool target_chars(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_' || c == ':';
  });
}

// Field checks shared by encoder and decoder; returns nullptr when fine.
const char* check_fields(const Hello& h) {
  if (h.relay_id.empty() || h.relay_id.size() > kMaxRelayId || !printable(h.relay_id)) return "bad relay id";
  if (h.principal.empty() || h.principal.size() > kMaxPrincipal || !printable(h.principal))
    return "bad principal";
  if (h.target.empty() || h.target.size() > kMaxTarget || !target_chars(h.target)) return "bad target";
  if (h.port == 0) return "port 0";
  if (h.algorithm != KeyAlgorithm::kEd25519) return "unknown key algorithm";
  if (h.public_key.size() != kEd25519KeySize) return "bad public key length";
  return nullptr;
}

void write_header(Writer& w, FrameType type, size_t payload) {
  w.bytes(std::string_view(reinterpret_cast<const char*>(kMagic.data()), kMagic.size()));
  w.u8(kVersion);
  w.u8(static_cast<uint8_t>(type));
  w.u16(static_cast<uint16_t>(payload));
}

void write_signed_part(Writer& w, const Hello& h) {
  w.str8(h.relay_id);
  w.str8(h.principal);
  w.str8(h.target);
  w.u16(h.port);
  w.u64(h.timestamp_ms);
  w.bytes(std::string_view(reinterpret_cast<const char*>(h.nonce.data()), h.nonce.size()));
  w.u8(static_cast<uint8_t>(h.algorithm));
  w.str8(h.public_key);
}

struct Header {
  DecodeStatus status;
  FrameType type;
  size_t payload;
  std::string_view error;
};

// Validates as many header bytes as are present, so garbage is rejected on its first bytes.
Header read_header(std::span<const uint8_t> in, size_t max_payload_for_type(FrameType)) {
  size_t n = std::min(in.size(), kMagic.size());
  if (!std::equal(in.begin(), in.begin() + static_cast<ptrdiff_t>(n), kMagic.begin()))
    return {DecodeStatus::kMalformed, {}, 0, "bad magic (not an sshring preamble)"};
  if (in.size() < 5) return {DecodeStatus::kNeedMore, {}, 0, {}};
  if (in[4] != kVersion) return {DecodeStatus::kUnsupportedVersion, {}, 0, "unsupported version"};
  if (in.size() < 6) return {DecodeStatus::kNeedMore, {}, 0, {}};
  auto type = static_cast<FrameType>(in[5]);
  size_t max = max_payload_for_type(type);
  if (max == 0) return {DecodeStatus::kMalformed, {}, 0, "unexpected frame type"};
  if (in.size() < kHeaderSize) return {DecodeStatus::kNeedMore, type, 0, {}};
  size_t len = static_cast<size_t>(in[6]) << 8 | in[7];
  if (len > max) return {DecodeStatus::kMalformed, type, 0, "frame too long"};
  return {DecodeStatus::kOk, type, len, {}};
}

size_t hello_max(FrameType t) {
  return t == FrameType::kHello ? kMaxHelloPayload : 0;
}
size_t reply_max(FrameType t) {
  if (t == FrameType::kOk) return kOkPayload;
  if (t == FrameType::kDeny) return kMaxDenyPayload;
  return 0;
}

}  // namespace

const char* reason_name(Reason r) {
  switch (r) {
    case Reason::kMalformed:
      return "malformed";
    case Reason::kUnsupportedVersion:
      return "unsupported_version";
    case Reason::kWrongRelay:
      return "wrong_relay";
    case Reason::kStale:
      return "stale";
    case Reason::kReplayed:
      return "replayed";
    case Reason::kUnknownPrincipal:
      return "unknown_principal";
    case Reason::kKeyNotListed:
      return "key_not_listed";
    case Reason::kBadSignature:
      return "bad_signature";
    case Reason::kTargetNotAllowed:
      return "target_not_allowed";
    case Reason::kAddressNotAllowed:
      return "address_not_allowed";
    case Reason::kOutsideTimeWindow:
      return "outside_time_window";
    case Reason::kTooManySessions:
      return "too_many_sessions";
    case Reason::kTooManyHandshakes:
      return "too_many_handshakes";
    case Reason::kResolveFailed:
      return "resolve_failed";
    case Reason::kTargetUnreachable:
      return "target_unreachable";
    case Reason::kOverloaded:
      return "overloaded";
    case Reason::kTimeout:
      return "handshake_timeout";
    case Reason::kNotAuthenticated:
      return "not_authenticated";
    case Reason::kPortNotAllowed:
      return "port_not_allowed";
  }
  return "unknown";
}

const char* reason_description(Reason r) {
  switch (r) {
    case Reason::kMalformed:
      return "the relay could not parse the preamble";
    case Reason::kUnsupportedVersion:
      return "the relay speaks another preamble version";
    case Reason::kWrongRelay:
      return "the preamble was signed for another relay (check --relay-id)";
    case Reason::kStale:
      return "the preamble timestamp is outside the allowed clock skew (check the clock)";
    case Reason::kReplayed:
      return "the preamble was already used (replay)";
    case Reason::kUnknownPrincipal:
      return "the principal is not in the relay's policy";
    case Reason::kKeyNotListed:
      return "the key is not listed for this principal";
    case Reason::kBadSignature:
      return "the signature does not verify";
    case Reason::kTargetNotAllowed:
      return "the target is not allowed for this principal";
    case Reason::kAddressNotAllowed:
      return "the target resolved to an address the policy does not allow";
    case Reason::kOutsideTimeWindow:
      return "access is outside the allowed time window";
    case Reason::kTooManySessions:
      return "the principal has too many sessions";
    case Reason::kTooManyHandshakes:
      return "too many pending connections from this address";
    case Reason::kResolveFailed:
      return "the target name did not resolve";
    case Reason::kTargetUnreachable:
      return "the relay could not connect to the target";
    case Reason::kOverloaded:
      return "the relay is overloaded";
    case Reason::kTimeout:
      return "the handshake timed out";
    case Reason::kNotAuthenticated:
      return "unknown principal, key not listed for it, or bad signature (the relay does not say which)";
    case Reason::kPortNotAllowed:
      return "the target is allowed for this principal, but not on this port";
  }
  return "unknown reason";
}

std::string transcript(const Hello& h) {
  Writer w;
  w.bytes(kTranscriptContext);
  write_signed_part(w, h);
  return w.take();
}

std::string encode_hello(const Hello& h) {
  if (const char* err = check_fields(h)) throw std::invalid_argument(std::string("preamble: ") + err);
  if (h.signature.size() != kEd25519SigSize) throw std::invalid_argument("preamble: bad signature length");
  Writer payload;
  write_signed_part(payload, h);
  payload.str8(h.signature);
  Writer w;
  write_header(w, FrameType::kHello, payload.size());
  w.bytes(payload.data());
  return w.take();
}

std::string encode_ok(uint64_t session_id) {
  Writer w;
  write_header(w, FrameType::kOk, kOkPayload);
  w.u64(session_id);
  return w.take();
}

std::string encode_deny(Reason reason, std::string_view message) {
  if (message.size() > kMaxDenyMessage) message = message.substr(0, kMaxDenyMessage);
  Writer w;
  write_header(w, FrameType::kDeny, 3 + message.size());
  w.u16(static_cast<uint16_t>(reason));
  w.str8(message);
  return w.take();
}

HelloDecode decode_hello(std::span<const uint8_t> in) {
  HelloDecode out;
  Header hdr = read_header(in, hello_max);
  if (hdr.status != DecodeStatus::kOk) {
    out.status = hdr.status;
    out.error = hdr.error;
    return out;
  }
  if (hdr.payload == 0) {
    out.status = DecodeStatus::kMalformed;
    out.error = "empty frame";
    return out;
  }
  if (hdr.payload < kMinHelloPayload || hdr.payload > kMaxValidHelloPayload) {
    out.status = DecodeStatus::kMalformed;
    out.error = "impossible frame length";
    return out;
  }
  if (in.size() < kHeaderSize + hdr.payload) return out;  // kNeedMore
  Reader r(in.subspan(kHeaderSize, hdr.payload));
  Hello& h = out.hello;
  h.relay_id = r.str8(kMaxRelayId);
  h.principal = r.str8(kMaxPrincipal);
  h.target = r.str8(kMaxTarget);
  h.port = r.u16();
  h.timestamp_ms = r.u64();
  auto nonce = r.bytes(kNonceSize);
  if (r.ok()) std::copy(nonce.begin(), nonce.end(), h.nonce.begin());
  h.algorithm = static_cast<KeyAlgorithm>(r.u8());
  h.public_key = r.str8(kMaxKeySize);
  h.signature = r.str8(kMaxSignatureSize);
  if (!r.done()) {
    out.status = DecodeStatus::kMalformed;
    out.error = r.ok() ? "trailing bytes in frame" : "truncated field";
    return out;
  }
  if (const char* err = check_fields(h)) {
    out.status = DecodeStatus::kMalformed;
    out.error = err;
    return out;
  }
  if (h.signature.size() != kEd25519SigSize) {
    out.status = DecodeStatus::kMalformed;
    out.error = "bad signature length";
    return out;
  }
  out.status = DecodeStatus::kOk;
  out.consumed = kHeaderSize + hdr.payload;
  return out;
}

ReplyDecode decode_reply(std::span<const uint8_t> in) {
  ReplyDecode out;
  Header hdr = read_header(in, reply_max);
  if (hdr.status != DecodeStatus::kOk) {
    out.status = hdr.status;
    out.error = hdr.error;
    return out;
  }
  if (in.size() < kHeaderSize + hdr.payload) return out;
  Reader r(in.subspan(kHeaderSize, hdr.payload));
  out.reply.type = hdr.type;
  if (hdr.type == FrameType::kOk) {
    out.reply.session_id = r.u64();
  } else {
    out.reply.reason = r.u16();
    out.reply.message = r.str8(kMaxDenyMessage);
  }
  if (!r.done()) {
    out.status = DecodeStatus::kMalformed;
    out.error = "bad reply frame";
    return out;
  }
  out.status = DecodeStatus::kOk;
  out.consumed = kHeaderSize + hdr.payload;
  return out;
}

int reply_payload_length(std::span<const uint8_t, kHeaderSize> header) {
  Header hdr = read_header(header, reply_max);
  return hdr.status == DecodeStatus::kOk ? static_cast<int>(hdr.payload) : -1;
}

}  // namespace sshring::protocol
