// A record's fields as (key, value) views, written straight into the record's JSON line. The writer's
// hot records (a relay's session_start/session_end/session_deny) take this path instead of building a
// nlohmann::json object and dumping it: the line is the same byte for byte (keys in the order the
// json object keeps them, strings cut and escaped as AuditLog does for every record), at a fraction of
// the writer thread's time. tests/metrics checks the equality on hostile strings.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sshring::metrics {

// Readers reject lines over kMaxRecordBytes, so one oversized field (a long parser error, a hostile
// principal) must not make a record unverifiable: strings longer than this are cut, and marked as cut.
inline constexpr size_t kMaxStringBytes = 4096;
inline constexpr std::string_view kTruncatedMark = "...[truncated]";

// Appends `s` as a JSON string: cut past kMaxStringBytes, invalid UTF-8 replaced (U+FFFD).
void append_json_string(std::string& out, std::string_view s);

class BodyFields {
 public:
  static constexpr size_t kMaxFields = 16;
  // Views: the values must outlive write()/to_json(). Empty strings mean absent (not written).
  void str(const char* key, std::string_view v) {
    if (!v.empty()) add({key, v, 0, false});
  }
  void str_always(const char* key, std::string_view v) { add({key, v, 0, false}); }
  void num(const char* key, uint64_t v) { add({key, {}, v, true}); }

  // `"k":v` pairs, comma-separated and sorted by key, without braces; appends nothing if empty.
  void write(std::string& out) const;
  // The same fields as a json object with "type" set (the reader's and commit()'s form).
  [[nodiscard]] nlohmann::json to_json(const char* type) const;

 private:
  struct Field {
    const char* key;
    std::string_view s;
    uint64_t n;
    bool is_num;
  };
  void add(Field f);
  std::array<Field, kMaxFields> f_{};
  size_t n_ = 0;
};

}  // namespace sshring::metrics
