// Whole numbers from untrusted JSON. nlohmann's get<unsigned>() of a value that parsed as a float
// (1e30, or an integer too large for 64 bits) is a float-to-integer cast out of range: undefined
// behaviour, not an exception. Parsers of input from other processes read numbers through this.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

namespace sshring::common {

// The value of `key` if it is an integer from 0 to `max`; nullopt if absent or anything else.
inline std::optional<uint64_t> json_uint(const nlohmann::json& j, std::string_view key,
                                         uint64_t max = UINT64_MAX) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  uint64_t v = 0;
  if (it->is_number_unsigned()) {
    v = it->get<uint64_t>();
  } else if (it->is_number_integer() && it->get<int64_t>() >= 0) {
    v = static_cast<uint64_t>(it->get<int64_t>());
  } else {
    return std::nullopt;
  }
  if (v > max) return std::nullopt;
  return v;
}

}  // namespace sshring::common
