#include "common/duration.h"

#include <cctype>

#include "common/error.h"

namespace sshring::common {

std::optional<std::chrono::seconds> parse_duration(std::string_view text) {
  if (text.empty() || text.size() > 32) return std::nullopt;
  long long total = 0;
  size_t i = 0;
  while (i < text.size()) {
    long long n = 0;
    size_t digits = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      n = n * 10 + (text[i] - '0');
      ++i;
      if (++digits > 9) return std::nullopt;
    }
    if (digits == 0 || i >= text.size()) return std::nullopt;
    long long mult = 0;
    switch (text[i]) {
      case 's':
        mult = 1;
        break;
      case 'm':
        mult = 60;
        break;
      case 'h':
        mult = 3600;
        break;
      case 'd':
        mult = 86400;
        break;
      default:
        return std::nullopt;
    }
    ++i;
    total += n * mult;
    if (total > 10LL * 365 * 86400) return std::nullopt;  // ten years is past any sane bound
  }
  return std::chrono::seconds(total);
}

std::chrono::seconds parse_duration_or_throw(std::string_view text, std::string_view what) {
  auto d = parse_duration(text);
  if (!d) {
    throw UsageError(std::string(what) + ": '" + std::string(text) +
                     "' is not a duration; expected e.g. 90s, 15m, 2h, 1h30m, 7d");
  }
  return *d;
}

std::string format_duration(std::chrono::seconds d) {
  long long s = d.count();
  if (s <= 0) return "0s";
  std::string out;
  if (s >= 86400) out += std::to_string(s / 86400) + "d", s %= 86400;
  if (s >= 3600) out += std::to_string(s / 3600) + "h", s %= 3600;
  if (s >= 60) out += std::to_string(s / 60) + "m", s %= 60;
  if (s > 0) out += std::to_string(s) + "s";
  return out;
}

}  // namespace sshring::common
