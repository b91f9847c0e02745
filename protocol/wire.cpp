#include "protocol/wire.h"

#include <array>

namespace sshring::protocol {

bool Reader::need(size_t n) {
  if (!ok_ || data_.size() - pos_ < n) {
    ok_ = false;
    return false;
  }
  return true;
}

uint8_t Reader::u8() {
  if (!need(1)) return 0;
  return data_[pos_++];
}

uint16_t Reader::u16() {
  if (!need(2)) return 0;
  uint16_t v = static_cast<uint16_t>(data_[pos_] << 8 | data_[pos_ + 1]);
  pos_ += 2;
  return v;
}

uint32_t Reader::u32() {
  if (!need(4)) return 0;
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = v << 8 | data_[pos_ + i];
  pos_ += 4;
  return v;
}

uint64_t Reader::u64() {
  if (!need(8)) return 0;
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | data_[pos_ + i];
  pos_ += 8;
  return v;
}

std::string_view Reader::bytes(size_t n) {
  if (!need(n)) return {};
  std::string_view v(reinterpret_cast<const char*>(data_.data()) + pos_, n);
  pos_ += n;
  return v;
}

std::string_view Reader::str8(size_t max) {
  size_t n = u8();
  if (n > max) ok_ = false;
  return ok_ ? bytes(n) : std::string_view{};
}

std::string_view Reader::str32(size_t max) {
  size_t n = u32();
  if (n > max) ok_ = false;
  return ok_ ? bytes(n) : std::string_view{};
}

void Writer::u16(uint16_t v) {
  u8(static_cast<uint8_t>(v >> 8));
  u8(static_cast<uint8_t>(v));
}

void Writer::u32(uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) u8(static_cast<uint8_t>(v >> s));
}

void Writer::u64(uint64_t v) {
  for (int s = 56; s >= 0; s -= 8) u8(static_cast<uint8_t>(v >> s));
}

void Writer::str8(std::string_view s) {
  u8(static_cast<uint8_t>(s.size()));
  bytes(s);
}

void Writer::str32(std::string_view s) {
  u32(static_cast<uint32_t>(s.size()));
  bytes(s);
}

}  // namespace sshring::protocol
