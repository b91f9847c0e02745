#include "metrics/audit_body.h"

#include <charconv>
#include <cstring>
#include <stdexcept>

namespace sshring::metrics {

void append_json_string(std::string& out, std::string_view s) {
  bool plain = s.size() <= kMaxStringBytes;
  for (size_t i = 0; plain && i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
  }
  if (plain) {  // printable ASCII: nothing to escape or validate
    out.push_back('"');
    out.append(s);
    out.push_back('"');
    return;
  }
  std::string cut(s.substr(0, kMaxStringBytes));
  if (s.size() > kMaxStringBytes) cut.append(kTruncatedMark);
  const nlohmann::json escaped = std::move(cut);
  out += escaped.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void BodyFields::add(Field f) {
  if (n_ == kMaxFields) throw std::logic_error("audit record has more than 16 fields");
  // Insertion in key order: what std::map (nlohmann::json's object) iterates in.
  size_t i = n_++;
  while (i > 0 && std::strcmp(f_[i - 1].key, f.key) > 0) {
    f_[i] = f_[i - 1];
    --i;
  }
  f_[i] = f;
}

void BodyFields::write(std::string& out) const {
  for (size_t i = 0; i < n_; ++i) {
    if (i > 0) out.push_back(',');
    out.push_back('"');
    out.append(f_[i].key);  // keys are our own literals: plain ASCII
    out.append("\":");
    if (f_[i].is_num) {
      char buf[24];
      auto r = std::to_chars(buf, buf + sizeof(buf), f_[i].n);
      out.append(buf, r.ptr);
    } else {
      append_json_string(out, f_[i].s);
    }
  }
}

nlohmann::json BodyFields::to_json(const char* type) const {
  nlohmann::json j = {{"type", type}};
  for (size_t i = 0; i < n_; ++i) {
    if (f_[i].is_num)
      j[f_[i].key] = f_[i].n;
    else
      j[f_[i].key] = std::string(f_[i].s);
  }
  return j;
}

}  // namespace sshring::metrics
