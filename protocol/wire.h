// Bounds-checked big-endian readers and writers: the preamble, the SSH agent protocol, SSH key blobs
// and SSHSIG signatures. Readers never throw: a short or malformed input sets a sticky error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace sshring::protocol {

class Reader {
 public:
  explicit Reader(std::span<const uint8_t> data) : data_(data) {}
  explicit Reader(std::string_view s) : data_(reinterpret_cast<const uint8_t*>(s.data()), s.size()) {}

  uint8_t u8();
  uint16_t u16();
  uint32_t u32();
  uint64_t u64();
  // Exactly n bytes (empty view and error if fewer remain).
  std::string_view bytes(size_t n);
  // u8 length prefix, then that many bytes; error if the length exceeds `max`.
  std::string_view str8(size_t max);
  // u32 length prefix (SSH "string").
  std::string_view str32(size_t max);

  [[nodiscard]] bool ok() const { return ok_; }
  [[nodiscard]] size_t offset() const { return pos_; }
  [[nodiscard]] size_t remaining() const { return data_.size() - pos_; }
  [[nodiscard]] bool done() const { return ok_ && pos_ == data_.size(); }
  void fail() { ok_ = false; }

 private:
  bool need(size_t n);
  std::span<const uint8_t> data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

class Writer {
 public:
  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(uint16_t v);
  void u32(uint32_t v);
  void u64(uint64_t v);
  void bytes(std::string_view b) { out_.append(b); }
  void str8(std::string_view s);  // caller guarantees s.size() <= 255
  void str32(std::string_view s);
  [[nodiscard]] const std::string& data() const { return out_; }
  std::string take() { return std::move(out_); }
  [[nodiscard]] size_t size() const { return out_.size(); }

 private:
  std::string out_;
};

}  // namespace sshring::protocol
